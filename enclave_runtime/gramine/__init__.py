"""The Gramine backend: the kernel image as an SGX enclave under Gramine (``gramine-sgx``).

Host side (:mod:`.backend`): render the manifest template (:mod:`.template`), run ``gramine-manifest`` and
``gramine-sgx-sign`` (:mod:`.tools`), read MRENCLAVE from the signature structure (:mod:`.sigstruct`), launch
with ``gramine-sgx``. In-TEE side (:mod:`.runtime`): evidence and sealing keys through ``/dev/attestation``.
"""
