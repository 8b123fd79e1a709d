"""``teelab host serve``: run the host agent on a TEE server (docs/remote-hosts.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from teelab.cli_support import Subparsers, add_command, command_group

DESCRIPTION = """\
The host agent runs on a TEE server that gateways elsewhere rent: it launches attested kernels for them and
relays their handshakes. It is untrusted: the gateway verifies every kernel and seals its secrets to the
kernel alone."""

EPILOG = """\
example:
  teelab host serve --listen 0.0.0.0:7700 --tokens /etc/teelab/gateways --backend gramine \\
      --tls-cert host.pem --tls-key host.key"""


def register(subparsers: Subparsers) -> None:
    _, commands = command_group(
        subparsers, "host", help_text="serve kernels to remote gateways", description=DESCRIPTION
    )
    serve = add_command(commands, "serve", _serve, help_text="run the host agent (gRPC)", epilog=EPILOG)
    serve.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:7700", help="default %(default)s")
    serve.add_argument(
        "--tokens",
        metavar="FILE",
        type=Path,
        required=True,
        help="gateway tokens: 'NAME TOKEN' per line, 0600",
    )
    serve.add_argument(
        "--backend", action="append", metavar="NAME", help="a backend to offer (repeatable; default: sim)"
    )
    serve.add_argument("--capacity", type=int, default=16, help="kernels on this host (default %(default)s)")
    serve.add_argument("--per-gateway", type=int, default=4, help="kernels per gateway (default %(default)s)")
    serve.add_argument("--tls-cert", metavar="PEM", type=Path)
    serve.add_argument("--tls-key", metavar="PEM", type=Path)


def _serve(args: argparse.Namespace) -> int:
    from teelab.enclave_runtime.agent.auth import GatewayTokens
    from teelab.enclave_runtime.agent.server import AgentConfig, run
    from teelab.enclave_runtime.backends import get_backend

    names = args.backend or ["sim"]
    config = AgentConfig(
        listen=args.listen,
        tokens=GatewayTokens.load(args.tokens),
        backends={name: get_backend(name) for name in names},
        capacity=args.capacity,
        per_gateway=args.per_gateway,
        tls_certificate=args.tls_cert,
        tls_key=args.tls_key,
    )
    run(config)
    return 0
