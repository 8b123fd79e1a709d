"""Binding the host agent: TLS with the operator's certificate, or plaintext on a loopback address only
(the gateway tokens are bearer credentials). With ``client_ca`` the TLS layer requires every caller to present
a certificate that CA signed (mutual TLS) and the gateway is named by it; otherwise by its token. Messages are limited to ``max_message_bytes``; gRPC answers a
bigger one with RESOURCE_EXHAUSTED before any handler runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from teelab.enclave_runtime.agent.auth import GatewayAuth, TokenSource, is_loopback
from teelab.enclave_runtime.agent.certificates import load_client_ca
from teelab.enclave_runtime.agent.kernels import KernelTable
from teelab.enclave_runtime.agent.malformed import MalformedRequests
from teelab.enclave_runtime.agent.revocation import RevokedCertificates
from teelab.enclave_runtime.agent.service import HostAgentService
from teelab.enclave_runtime.agent.v1 import host_pb2_grpc
from teelab.enclave_runtime.backend import EnclaveBackend
from teelab.errors import ConfigError

log = logging.getLogger("teelab.host")
MAX_MESSAGE_BYTES = 1 << 20  # the biggest handshake frame (evidence with its certificates) is ~20 KiB


@dataclass
class AgentConfig:
    listen: str
    tokens: TokenSource | None
    backends: Mapping[str, EnclaveBackend]
    capacity: int = 16
    per_gateway: int = 4
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None  # gateways authenticate with certificates this CA signed, not tokens
    revoked: Path | None = None  # SHA-256 fingerprints of gateway certificates no longer admitted
    max_message_bytes: int = MAX_MESSAGE_BYTES
    service: Callable[[KernelTable, GatewayAuth], HostAgentService] = field(default=HostAgentService)

    def auth(self) -> GatewayAuth:
        revoked = None
        if self.revoked is not None:
            try:
                ca = self.client_ca.read_bytes() if self.client_ca is not None else b""
            except OSError as error:
                raise ConfigError(f"cannot read --client-ca {self.client_ca}: {error}") from None
            revoked = RevokedCertificates(self.revoked, ca)
        return GatewayAuth(tokens=self.tokens, certificates=self.client_ca is not None, revoked=revoked)

    @property
    def host(self) -> str:
        host, colon, port = self.listen.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ConfigError(f"--listen {self.listen!r} is not HOST:PORT")
        return host.strip("[]")


async def start(config: AgentConfig) -> tuple[grpc.aio.Server, KernelTable, str]:
    """Start serving; the server, its kernel table and the address gateways dial (grpc[s]://host:port)."""
    if (config.tls_certificate is None) != (config.tls_key is None):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    tls = config.tls_certificate is not None
    auth = config.auth()
    if config.client_ca is not None and not tls:
        raise ConfigError("client certificates (--client-ca) need TLS: give --tls-cert and --tls-key")
    if not tls and not is_loopback(config.host):
        raise ConfigError(
            f"refusing plaintext gRPC on {config.host}: gateway tokens would cross the network in the clear",
            hint="give --tls-cert and --tls-key, or listen on a loopback address",
        )
    if config.capacity < 1 or config.per_gateway < 1:
        raise ConfigError("--capacity and --per-gateway must be at least 1")
    table = KernelTable(
        config.backends, host=config.host, capacity=config.capacity, per_gateway=config.per_gateway
    )
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options, interceptors=[MalformedRequests()])
    host_pb2_grpc.add_HostAgentServicer_to_server(  # type: ignore[no-untyped-call]
        config.service(table, auth), server
    )
    try:
        if config.tls_certificate is not None and config.tls_key is not None:
            port = server.add_secure_port(config.listen, _tls_credentials(config))
        else:
            port = server.add_insecure_port(config.listen)
    except (RuntimeError, OSError) as error:
        raise ConfigError(f"cannot listen on {config.listen}: {error}") from None
    if port == 0:
        raise ConfigError(f"cannot listen on {config.listen}")
    await server.start()
    host = f"[{config.host}]" if ":" in config.host else config.host
    return server, table, f"{'grpcs' if tls else 'grpc'}://{host}:{port}"


def _tls_credentials(config: AgentConfig) -> grpc.ServerCredentials:
    assert config.tls_certificate is not None and config.tls_key is not None
    try:
        key, chain = config.tls_key.read_bytes(), config.tls_certificate.read_bytes()
        ca = config.client_ca.read_bytes() if config.client_ca is not None else None
    except OSError as error:
        raise ConfigError(f"cannot read a TLS file: {error}") from None
    if ca is None:
        return grpc.ssl_server_credentials([(key, chain)])
    # The handshake itself refuses a caller without a certificate from this CA: no handler runs for it.
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=load_client_ca(ca, f"--client-ca {config.client_ca}"),
        require_client_auth=True,
    )


async def serve(config: AgentConfig, *, announce: Callable[[str], None] = print) -> None:
    server, table, target = await start(config)
    announce(f"teelab host agent listening on {target}")
    reaper = asyncio.create_task(table.reap_forever())
    try:
        await server.wait_for_termination()
    finally:
        reaper.cancel()
        await table.close()  # kernels end with their agent
        await server.stop(1)


def run(config: AgentConfig) -> None:
    asyncio.run(serve(config, announce=lambda line: print(line, flush=True)))
