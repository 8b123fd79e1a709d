"""The host agent (``teelab host serve``): kernels on an untrusted TEE server for remote gateways.

:mod:`.auth` reads the operator's gateway tokens and decides who is calling; :mod:`.kernels` holds the kernels
this host runs (launch with the controller binding, the boot's answer socket, limits, kill); :mod:`.service` is
the gRPC surface (protos/teelab/host/v1/host.proto); :mod:`.server` binds it (TLS, or plaintext on loopback
only). The agent sees only what the host sees: nonce, ``G.pub``, public keys, evidence and ciphertext.
"""
