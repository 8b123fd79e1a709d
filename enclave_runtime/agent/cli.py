"""``teelab host serve``: run the host agent on a TEE server (docs/remote-hosts.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from teelab.cli_support import Subparsers, add_command, command_group

DESCRIPTION = """\
The host agent runs on a TEE server that gateways elsewhere rent: it launches attested kernels for them and
relays their handshakes. It is untrusted: the gateway verifies every kernel and seals its secrets to the
kernel alone."""

SERVE_DESCRIPTION = """\
Serve kernels to the gateways the operator admits, over gRPC (TLS, or plaintext on a loopback address only).

How gateways authenticate, one of:
  --client-ca FILE  mutual TLS: every caller must present a certificate signed by this CA (checked in the TLS
                    handshake, before any request is read); its DNS/URI/e-mail SAN, else its CN, names the
                    gateway for --per-gateway. Choose it where an operator CA exists: no bearer secret
                    travels, the key can stay in an HSM, certificates expire. --revoked FILE lists
                    certificates no longer admitted: SHA-256 fingerprints and/or PEM CRLs signed by the CA
                    (re-read when it changes; a broken file refuses everyone).
  --tokens FILE     bearer tokens, 'NAME TOKEN' per line (0600): simplest; revoke one by removing its line
                    (the file is re-read when it changes). A token is a password: anyone holding it is
                    that gateway.

Settings may also come from a TOML file (--config), with the long option names as keys (listen, tokens,
client_ca, revoked, tls_cert, tls_key, backend = [..], capacity, per_gateway); options on the command line win."""

EPILOG = """\
examples:
  teelab host serve --listen 0.0.0.0:7700 --tokens /etc/teelab/gateways --backend gramine \\
      --tls-cert host.pem --tls-key host.key
  teelab host serve --listen 0.0.0.0:7700 --client-ca gateways-ca.pem --backend gramine \\
      --tls-cert host.pem --tls-key host.key
  teelab host serve --config /etc/teelab/host-agent.toml"""

_DEFAULTS: dict[str, object] = {"listen": "127.0.0.1:7700", "capacity": 16, "per_gateway": 4}
_PATHS = ("tokens", "client_ca", "revoked", "tls_cert", "tls_key")


def register(subparsers: Subparsers) -> None:
    _, commands = command_group(
        subparsers, "host", help_text="serve kernels to remote gateways", description=DESCRIPTION
    )
    serve = add_command(
        commands,
        "serve",
        _serve,
        help_text="run the host agent (gRPC)",
        description=SERVE_DESCRIPTION,
        epilog=EPILOG,
    )
    serve.add_argument("--config", metavar="FILE", type=Path, help="a TOML file of these settings")
    serve.add_argument("--listen", metavar="HOST:PORT", help=f"default {_DEFAULTS['listen']}")
    serve.add_argument(
        "--tokens", metavar="FILE", type=Path, help="gateway tokens: 'NAME TOKEN' per line, 0600"
    )
    serve.add_argument(
        "--client-ca",
        metavar="PEM",
        type=Path,
        help="require gateway certificates signed by this CA (mutual TLS; instead of --tokens)",
    )
    serve.add_argument(
        "--revoked",
        metavar="FILE",
        type=Path,
        help="gateway certificates to refuse: SHA-256 fingerprints, one per line, and/or PEM CRLs (with --client-ca)",
    )
    serve.add_argument(
        "--backend", action="append", metavar="NAME", help="a backend to offer (repeatable; default: sim)"
    )
    serve.add_argument("--capacity", type=int, help=f"kernels on this host (default {_DEFAULTS['capacity']})")
    serve.add_argument(
        "--per-gateway", type=int, help=f"kernels per gateway (default {_DEFAULTS['per_gateway']})"
    )
    serve.add_argument("--tls-cert", metavar="PEM", type=Path)
    serve.add_argument("--tls-key", metavar="PEM", type=Path)


def settings(args: argparse.Namespace) -> dict[str, object]:
    """The agent's settings: the command line over the --config file over the defaults."""
    import tomllib

    from teelab.errors import ConfigError

    merged = dict(_DEFAULTS)
    if args.config is not None:
        try:
            loaded = tomllib.loads(args.config.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read the host agent config {args.config}: {error}") from None
        known = {"listen", "backend", "capacity", "per_gateway", *_PATHS}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ConfigError(f"{args.config}: unknown settings {', '.join(unknown)}")
        for key in _PATHS:
            if key in loaded:
                loaded[key] = (args.config.parent / str(loaded[key])).resolve()
        merged.update(loaded)
    merged.update({key: value for key, value in vars(args).items() if value is not None})
    return merged


def _serve(args: argparse.Namespace) -> int:
    from teelab.enclave_runtime.agent.auth import TokenFile
    from teelab.enclave_runtime.agent.server import AgentConfig, run
    from teelab.enclave_runtime.backends import get_backend

    given = settings(args)
    names = list(given.get("backend") or ["sim"])  # type: ignore[call-overload]
    tokens = given.get("tokens")
    config = AgentConfig(
        listen=str(given["listen"]),
        tokens=TokenFile(Path(str(tokens))) if tokens is not None else None,
        backends={str(name): get_backend(str(name)) for name in names},
        capacity=int(given["capacity"]),  # type: ignore[call-overload]
        per_gateway=int(given["per_gateway"]),  # type: ignore[call-overload]
        tls_certificate=_path(given.get("tls_cert")),
        tls_key=_path(given.get("tls_key")),
        client_ca=_path(given.get("client_ca")),
        revoked=_path(given.get("revoked")),
    )
    config.auth()  # exactly one of tokens and client certificates, before any backend work
    run(config)
    return 0


def _path(value: object) -> Path | None:
    return None if value is None else Path(str(value))
