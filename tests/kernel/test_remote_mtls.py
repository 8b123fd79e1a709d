"""Host agents that authenticate gateways by TLS client certificate from the operator's CA (issue 15).

The agents are real processes on 127.0.0.2 / 127.0.0.3 (``teelab host serve --client-ca``); the CA, the
agents' server certificates and the gateways' client certificates are made here (tests/kernel/operator_ca.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from teelab.enclave_runtime.agent.auth import GatewayAuth, GatewayTokens
from teelab.enclave_runtime.agent.certificates import certificate_identity
from teelab.enclave_runtime.agent.revocation import RevokedCertificates
from teelab.enclave_runtime.agent.server import AgentConfig, start
from teelab.enclave_runtime.agent.v1 import host_pb2, host_pb2_grpc
from teelab.errors import AttestationFailed, ConfigError
from teelab.kernel.errors import KernelMisconfigured
from teelab.kernel.host_pool import load_credentials

from . import test_remote_hosts as remote
from .operator_ca import OperatorCA

agents, remote_env = remote.agents, remote.remote_env  # the fixtures, for this module's tests
Agent = remote.Agent


def mtls_agent(agents: Callable[..., Agent], folder: Path, ca: OperatorCA, host: str, *extra: str) -> str:
    """A genuine agent on ``host`` that requires client certificates from ``ca``, configured by a TOML file."""
    cert, key = ca.issue(f"host-{host}", ip=host, usage="server")
    revoked = folder / f"revoked-{host}"
    revoked.write_text("# SHA-256 fingerprints of gateway certificates no longer admitted\n")
    config = folder / f"agent-{host}.toml"
    config.write_text(
        f'client_ca = "{ca.path}"\nrevoked = "{revoked}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
        'backend = ["sim"]\n'
    )
    _, target = agents(host, None, "--config", str(config), *extra)
    assert target.startswith("grpcs://")
    return target


def test_a_kernel_starts_only_for_a_gateway_with_a_certificate_from_the_operator_ca(
    agents: Callable[..., Agent], remote_env: Path
) -> None:
    ca = OperatorCA(remote_env / "ca")
    target = mtls_agent(agents, remote_env, ca, "127.0.0.2")
    cert, key = ca.issue("gw-a", dns="gw-a.example")
    settings = {"host_ca_file": str(ca.path), "host_token_file": None}
    km = remote.manager(remote_env, target, client_cert_file=str(cert), client_key_file=str(key), **settings)
    km.start_kernel()
    try:
        assert remote.run_cell(km, "print(3 * 14)").strip() == "42"
    finally:
        km.shutdown_kernel(now=True)

    # A token is no credential at an agent that requires certificates: the TLS handshake fails.
    tokened = remote.manager(remote_env, target, host_ca_file=str(ca.path))
    with pytest.raises(AttestationFailed) as refused:
        tokened.start_kernel()
    assert refused.value.check == "host_agent" and "UNAVAILABLE" in refused.value.detail

    # A certificate from another CA (with the same name) is refused the same way.
    stranger_cert, stranger_key = OperatorCA(remote_env / "other-ca", "operator CA").issue(
        "gw-a", dns="gw-a.example"
    )
    stranger = remote.manager(
        remote_env, target, client_cert_file=str(stranger_cert), client_key_file=str(stranger_key), **settings
    )
    with pytest.raises(AttestationFailed) as refused:
        stranger.start_kernel()
    assert refused.value.check == "host_agent" and "UNAVAILABLE" in refused.value.detail


def _call(
    target: str, ca: bytes, cert: Path | None, key: Path | None, method: str, request: object
) -> object:
    async def go() -> object:
        client = (key.read_bytes(), cert.read_bytes()) if cert and key else (None, None)
        credentials = grpc.ssl_channel_credentials(ca, private_key=client[0], certificate_chain=client[1])
        async with grpc.aio.secure_channel(target.removeprefix("grpcs://"), credentials) as channel:
            return await getattr(host_pb2_grpc.HostAgentStub(channel), method)(request, timeout=10)

    return asyncio.run(go())


def _launch() -> host_pb2.LaunchRequest:
    return host_pb2.LaunchRequest(
        backend="sim", image="python-kernel", nonce=os.urandom(32), controller_key=os.urandom(32)
    )


def test_limits_and_kernels_belong_to_the_certificate_identity(
    agents: Callable[..., Agent], remote_env: Path
) -> None:
    ca = OperatorCA(remote_env / "ca")
    target = mtls_agent(agents, remote_env, ca, "127.0.0.3", "--per-gateway", "1")
    root = ca.path.read_bytes()
    a, b = ca.issue("gw-a", dns="gw-a.example"), ca.issue("gw-b", dns="gw-b.example")
    first = _call(target, root, *a, "Launch", _launch())
    assert isinstance(first, host_pb2.LaunchReply)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        _call(target, root, *a, "Launch", _launch())
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "this gateway runs its 1" in str(refused.value.details())
    second = _call(target, root, *b, "Launch", _launch())  # another certificate, another gateway
    assert isinstance(second, host_pb2.LaunchReply)
    theirs = _call(target, root, *b, "List", host_pb2.ListRequest())
    assert isinstance(theirs, host_pb2.ListReply) and theirs.running == 2
    assert [k.kernel_id for k in theirs.kernels] == [second.kernel_id]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        _call(target, root, *b, "Kill", host_pb2.KernelRef(kernel_id=first.kernel_id))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND

    # A certificate of the same CA issued for serving, not for clients (a host's): the TLS handshake refuses
    # its purpose (and certificate_identity would name nobody, below).
    server_only = ca.issue("host-elsewhere", ip="127.0.0.9", usage="server")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        _call(target, root, *server_only, "List", host_pb2.ListRequest())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # No certificate at all: refused in the TLS handshake.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        _call(target, root, None, None, "List", host_pb2.ListRequest())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    # The operator revokes gw-a's certificate (openssl's fingerprint line, as it prints it): refused from the
    # next call on, without a restart; gw-b is unaffected.
    digest = x509.load_pem_x509_certificate(a[0].read_bytes()).fingerprint(hashes.SHA256()).hex().upper()
    fingerprint_line = "sha256 Fingerprint=" + ":".join(digest[i : i + 2] for i in range(0, 64, 2))
    with (remote_env / "revoked-127.0.0.3").open("a") as revoked:
        revoked.write(fingerprint_line + "\n")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        _call(target, root, *a, "Kill", host_pb2.KernelRef(kernel_id=first.kernel_id))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    _call(target, root, *b, "Kill", host_pb2.KernelRef(kernel_id=second.kernel_id))


def test_certificate_identity_prefers_the_subject_alternative_name(tmp_path: Path) -> None:
    ca = OperatorCA(tmp_path)
    named, _ = ca.issue("gw-cn", dns="gw.example")
    assert certificate_identity(named.read_bytes()) == "gw.example"
    unnamed, _ = ca.issue("gw-cn")
    assert certificate_identity(unnamed.read_bytes()) == "gw-cn"
    server, _ = ca.issue("host", ip="127.0.0.2", usage="server")
    assert certificate_identity(server.read_bytes()) is None
    assert certificate_identity(b"not a certificate") is None


def test_the_agent_and_the_gateway_refuse_half_configured_certificates(
    tmp_path: Path, remote_env: Path
) -> None:
    ca = OperatorCA(tmp_path / "ca")
    tokens = GatewayTokens.load(remote_env / "gateways")
    with pytest.raises(ConfigError, match="exactly one of --tokens and --client-ca"):
        GatewayAuth(tokens=tokens, certificates=True)
    with pytest.raises(ConfigError, match="exactly one"):
        GatewayAuth()
    plain = AgentConfig(listen="127.0.0.1:0", tokens=None, backends={}, client_ca=ca.path)
    with pytest.raises(ConfigError, match="need TLS"):
        asyncio.run(start(plain))
    cert, key = ca.issue("host", ip="127.0.0.1", usage="server")
    not_a_ca = AgentConfig(
        listen="127.0.0.1:0", tokens=None, backends={}, tls_certificate=cert, tls_key=key, client_ca=cert
    )
    with pytest.raises(ConfigError, match="no CA certificate"):
        asyncio.run(start(not_a_ca))

    client_cert, client_key = ca.issue("gw-a", dns="gw-a.example")
    revocations = tmp_path / "revoked"
    revocations.write_text("not-a-fingerprint\n")
    with pytest.raises(ConfigError, match="line 1 of the revocation file is not a SHA-256 fingerprint"):
        RevokedCertificates(revocations)
    revocations.write_text("")
    listed = RevokedCertificates(revocations)
    assert not listed.revoked(client_cert.read_bytes())
    revocations.unlink()  # a revocation file that vanished or broke refuses everyone until it is fixed
    assert listed.revoked(client_cert.read_bytes())
    # A CRL of the client CA revokes by serial; one another CA signed is refused, at start and after.
    other_cert, _ = ca.issue("gw-b", dns="gw-b.example")
    revocations.write_bytes(ca.crl(client_cert))
    by_crl = RevokedCertificates(revocations, ca.path.read_bytes())
    assert by_crl.revoked(client_cert.read_bytes()) and not by_crl.revoked(other_cert.read_bytes())
    stranger = OperatorCA(tmp_path / "stranger", "operator CA")
    revocations.write_bytes(stranger.crl())
    with pytest.raises(ConfigError, match="not signed by the client CA"):
        RevokedCertificates(revocations, ca.path.read_bytes())
    assert by_crl.revoked(other_cert.read_bytes())  # the running agent now refuses everyone until it is fixed
    with pytest.raises(ConfigError, match="needs --client-ca"):
        GatewayAuth(tokens=tokens, revoked=listed)

    client_key.chmod(0o640)
    with pytest.raises(ConfigError, match="open to other users"):
        load_credentials(None, None, str(client_cert), str(client_key))
    with pytest.raises(ConfigError, match="both client_cert_file and client_key_file"):
        load_credentials(None, None, str(client_cert), None)
    with pytest.raises(ConfigError, match="no credential"):
        load_credentials(None, None, None, None)
    km = remote.manager(
        remote_env,
        "grpcs://127.0.0.2:1",
        host_token_file=None,
        client_cert_file=str(client_cert),
        client_key_file=str(client_key),
    )
    with pytest.raises(KernelMisconfigured, match="open to other users"):
        km.start_kernel()  # refused before any agent is called


def test_a_pool_mixes_token_and_certificate_agents_with_per_host_settings(
    agents: Callable[..., Agent], remote_env: Path
) -> None:
    ca = OperatorCA(remote_env / "ca")
    _, by_token = agents("127.0.0.2")
    by_certificate = mtls_agent(agents, remote_env, ca, "127.0.0.3")
    cert, key = ca.issue("gw-a", dns="gw-a.example")
    per_host = {
        by_certificate: {
            "host_token_file": None,
            "host_ca_file": str(ca.path),
            "client_cert_file": str(cert),
            "client_key_file": str(key),
        }
    }
    managers = [
        remote.manager(remote_env, by_token, by_certificate, host_settings=per_host) for _ in range(2)
    ]
    try:
        for km in managers:
            km.start_kernel()
        assert sorted(km.get_connection_info()["ip"] for km in managers) == ["127.0.0.2", "127.0.0.3"]
        for km in managers:
            assert remote.run_cell(km, "print('mixed')").strip() == "mixed"
    finally:
        for km in managers:
            km.shutdown_kernel(now=True)
