"""Commands of the key broker: ``teelab kbs serve`` and ``teelab audit show|verify``.

``register(subparsers)`` adds both groups to the ``teelab`` command line; ``python -m
teelab.sealed_store.kbs`` runs them on their own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from teelab.cli_support import Subparsers
from teelab.errors import UsageError
from teelab.sealed_store.kbs.audit import AuditRecord, SignedHead

if TYPE_CHECKING:
    from teelab.sealed_store.kbs.auth_config import AuthConfig

KBS_DESCRIPTION = """\
The key broker (KBS) releases a sealed dataset's data key only to an attested kernel, for a user the
dataset's owner granted, and records every decision in a signed, hash-chained audit log.
`teelab kbs serve --help` has examples.
"""

SERVE_DESCRIPTION = """\
Run the key broker on a gRPC address until interrupted (Ctrl-C or SIGTERM finish the calls in flight).

On first start it creates its state folder (0700) with its keys (master.key, hpke.key, signing.key; 0600),
the operator's admin-token (the KBS admin role: groups, the whole audit log; never give it to a Jupyter
server) and a token for the user running it, users/<you>.token: your tools (the gateway's session grants,
`teelab dataset`, the JupyterLab extension) find it there and act as you. `teelab kbs user add NAME` issues
one for another user. Tokens are printed as file paths, never as values.

Who may authenticate is configured in <state>/kbs.toml (or --config FILE), [auth] section: local per-user
tokens (the default), an OIDC issuer, or a JupyterHub — docs/protocols/kbs.md §2 has an example of each.
"""

SERVE_EPILOG = """\
examples:
  # one machine, simulated TEE: state in ~/.local/share/teelab/kbs, SQLite, sim collateral
  teelab kbs serve

  # on all interfaces of a host, with TLS (the tokens travel in the request metadata);
  # clients then use --kbs grpcs://kbs.example.org:7443, and TEELAB_KBS_CA=ca.pem for a private CA
  teelab kbs serve --listen 0.0.0.0:7443 --state /srv/teelab/kbs \
      --tls-cert /etc/teelab/kbs.crt --tls-key /etc/teelab/kbs.key

  # shared deployment: PostgreSQL, collateral fetched from Intel PCS into a folder by a cron job
  teelab kbs serve --db postgresql+psycopg://kbs@db.internal/kbs --collateral /srv/pcs-cache

database durability:
  --durability process (default) keeps every acknowledged change across a crash of the KBS process;
  --durability fsync also across an operating system crash or power loss (SQLite synchronous=FULL).
"""

AUDIT_DESCRIPTION = """\
Read and check the key broker's audit log: every registration, grant, revocation, group change, session
grant, release and refusal, each entry chained to the previous one by SHA-256 and signed by the KBS.
"""

SHOW_EPILOG = """\
examples:
  teelab audit show                          # the last 50 entries of the local KBS
  teelab audit show --since 1200 --limit 0   # everything after entry 1200
  teelab audit show --json | jq .            # the signed entries, as JSON lines
  teelab audit show --kbs kbs.internal:7443 --token-file admin-token
"""

VERIFY_EPILOG = """\
examples:
  teelab audit verify                                  # the local KBS's database
  teelab audit verify --db postgresql+psycopg://kbs@db.internal/kbs --public-key signing.pub
  teelab audit verify --head 5210:9f2c...              # also detect entries cut off the end
  teelab audit verify --witness ~/kbs-witness.json     # check against, then record, the last head seen

  Pin the KBS signing key (--public-key; the state folder's signing.pub or `GetInfo`) when the database's
  host is not trusted: the check then holds against anyone who can write the database but lacks the key.

exit status:
  0 the log is intact, 1 it was tampered with (the first bad entry is named), 2 usage error
"""


def register(subparsers: Subparsers) -> None:
    _register_serve(subparsers)
    _register_audit(subparsers)


def _register_serve(subparsers: Subparsers) -> None:
    from teelab.cli_support import add_command, command_group

    _, kbs_commands = command_group(
        subparsers, "kbs", help_text="run the key broker", description=KBS_DESCRIPTION
    )
    serve = add_command(
        kbs_commands,
        "serve",
        _serve,
        help_text="serve the key broker over gRPC",
        description=SERVE_DESCRIPTION,
        epilog=SERVE_EPILOG,
    )
    serve.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:7443", help="default %(default)s")
    serve.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="the KBS config file (default: <state>/kbs.toml if present)",
    )
    serve.add_argument("--state", metavar="DIR", type=Path, help="state folder (default: <data dir>/kbs)")
    serve.add_argument("--db", metavar="URL", help="SQLAlchemy URL (default: SQLite in the state folder)")
    serve.add_argument(
        "--collateral",
        metavar="sim|none|PATH",
        default="sim",
        help="Intel collateral for evidence without its own: the simulated platform (default), none, "
        "or a JSON bundle / folder of PCS files",
    )
    serve.add_argument("--durability", choices=("process", "fsync"), default="process")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="threads for requests that wait on the database (default: 16 on PostgreSQL, 4 on SQLite with "
        "--durability fsync; 0 on SQLite otherwise: requests run on the event loop, which is fastest there)",
    )
    serve.add_argument(
        "--tls-cert", metavar="PEM", type=Path, help="serve TLS with this certificate chain (with --tls-key)"
    )
    serve.add_argument(
        "--tls-key", metavar="PEM", type=Path, help="the certificate's private key (mode 0600)"
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext on an address beyond loopback (the tokens would cross the network readable; "
        "only behind a TLS-terminating proxy)",
    )
    user = add_command(
        kbs_commands,
        "user",
        _user,
        help_text="issue a local per-user token (users/NAME.token in the state folder)",
        epilog="examples:\n  teelab kbs user add bob          # prints the path of bob's new token file\n"
        "  teelab kbs user add bob --renew  # a new token; the old one stops working",
    )
    user.add_argument("action", choices=("add",))
    user.add_argument("name", help="the user's name, as the KBS will know it")
    user.add_argument("--state", metavar="DIR", type=Path, help="state folder (default: <data dir>/kbs)")
    user.add_argument("--renew", action="store_true", help="replace an existing token")


def _register_audit(subparsers: Subparsers) -> None:
    from teelab.cli_support import add_command, command_group

    _, audit_commands = command_group(
        subparsers,
        "audit",
        help_text="show or verify the key broker's audit log",
        description=AUDIT_DESCRIPTION,
    )
    show = add_command(
        audit_commands,
        "show",
        _show,
        help_text="print audit entries as a table",
        description=AUDIT_DESCRIPTION,
        epilog=SHOW_EPILOG,
    )
    _source_arguments(show)
    show.add_argument("--since", type=int, default=None, metavar="SEQ", help="entries after SEQ")
    show.add_argument("--limit", type=int, default=50, metavar="N", help="at most N entries (0: all; 50)")
    show.add_argument("--json", action="store_true", help="JSON lines: seq, body, hash, signature")
    show.add_argument("--dataset", metavar="NAME", help="only this dataset's entries (all an owner may read)")
    verify = add_command(
        audit_commands,
        "verify",
        _verify,
        help_text="check the hash chain and every signature",
        description=AUDIT_DESCRIPTION,
        epilog=VERIFY_EPILOG,
    )
    _source_arguments(verify)
    verify.add_argument("--public-key", type=Path, metavar="FILE", help="the pinned KBS signing key (hex)")
    verify.add_argument("--head", metavar="SEQ:HASH", help="a trusted head recorded earlier")
    verify.add_argument(
        "--forget",
        action="store_true",
        help="neither compare with nor remember the head this machine verified before",
    )
    verify.add_argument("--min-count", type=int, metavar="N", help="the log must have at least N entries")
    verify.add_argument(
        "--witness",
        type=Path,
        metavar="FILE",
        help="a head kept outside the KBS's database: checked if the file exists, then updated to this head",
    )


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state", metavar="DIR", type=Path, help="the KBS state folder (default: <data dir>/kbs)"
    )
    parser.add_argument("--db", metavar="URL", help="read this database instead of the state folder's SQLite")
    parser.add_argument(
        "--kbs",
        metavar="[grpcs://]HOST:PORT",
        help="ask a running KBS instead (grpcs:// for TLS)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="credential for --kbs: the admin token, or your own (then with --dataset, one you own)",
    )


# -- kbs serve -----------------------------------------------------------------------------------------


def _check_listen_address(listen: str) -> None:
    """HOST:PORT with a real port that is free now, so a doomed start leaves no state behind."""
    import socket

    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"--listen {listen!r} is not HOST:PORT with a port from 0 to 65535")
    if int(port_text) == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)
    except OSError as error:
        raise UsageError(
            f"cannot listen on {listen}: {error.strerror or error}",
            hint="another server may use the port; pick another with --listen HOST:PORT",
        ) from None


def _check_transport(args: argparse.Namespace) -> None:
    from teelab.sealed_store.kbs.transport import KbsTarget, ServerTls

    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if args.tls_cert is not None:
        ServerTls.load(args.tls_cert, args.tls_key)  # a clear error now, not a failed handshake later
        return
    if not KbsTarget.parse(args.listen).loopback and not args.insecure:
        raise UsageError(
            f"--listen {args.listen} is beyond loopback, and without TLS the tokens would cross the "
            "network readable",
            hint="give --tls-cert PEM --tls-key PEM (clients then use grpcs://HOST:PORT), or --insecure "
            "behind a TLS-terminating proxy",
        )


def _serve(args: argparse.Namespace) -> int:
    from teelab.files import replace_atomically
    from teelab.sealed_store.kbs.auth import ADMIN_TOKEN_FILE, login_name
    from teelab.sealed_store.kbs.config import KbsConfig, default_state_dir
    from teelab.sealed_store.kbs.identity import local_token_file
    from teelab.sealed_store.kbs.server import KbsServer, tune_gc_for_serving
    from teelab.sealed_store.kbs.store import safe_url
    from teelab.sealed_store.services import ENDPOINT_FILE

    if args.workers is not None and args.workers < 0:
        raise UsageError("--workers must be 0 (run requests on the event loop) or more")
    state = (args.state or default_state_dir()).expanduser().resolve()
    if state.exists() and not state.is_dir():
        raise UsageError(f"--state {state} is not a folder")
    _check_listen_address(args.listen)  # before any key or token is created
    _check_transport(args)
    config = KbsConfig(
        state_dir=state,
        auth=_auth_config(args.config, state),
        db_url=args.db,
        collateral=args.collateral,
        durability=args.durability,
        workers=args.workers,
        tls_certificate=args.tls_cert,
        tls_key=args.tls_key,
    )
    server = KbsServer(config, address=args.listen)
    server.start()
    tune_gc_for_serving()
    # Clients on this machine (the gateway, `teelab dataset`) find the broker here without configuration.
    endpoint = state / ENDPOINT_FILE
    replace_atomically(endpoint, server.target.encode(), mode=0o644)
    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    previous = signal.signal(signal.SIGTERM, stop)
    assert server.broker is not None
    print(f"teelab key broker listening on {server.target}", flush=True)
    print(f"  state:       {state}")
    print(f"  database:    {safe_url(config.database_url)}")
    print(f"  collateral:  {server.broker.source.description}")
    print(f"  transport:   {'TLS (' + str(args.tls_cert) + ')' if args.tls_cert else 'plaintext gRPC'}")
    print(f"  admin token: {state / ADMIN_TOKEN_FILE} (the operator's; never give it to a Jupyter server)")
    print(f"  identity:    {', '.join(config.auth.providers)}")
    login = login_name()
    if "local" in config.auth.providers and login is not None:
        print(f"  your token:  {local_token_file(state, login)}")
    print(f"  signing key: {server.broker.keys.signing_public_key.hex()} (pin it for `teelab audit verify`)")
    print("Ctrl-C stops it.", flush=True)
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        with contextlib.suppress(OSError):
            if endpoint.read_text() == server.target:
                endpoint.unlink()
        server.stop(grace=5)
    print("key broker stopped", file=sys.stderr)
    return 0


def _auth_config(path: Path | None, state: Path) -> AuthConfig:
    from teelab.sealed_store.kbs.auth_config import CONFIG_FILE, AuthConfig, load_auth_config

    if path is None and (state / CONFIG_FILE).is_file():
        path = state / CONFIG_FILE
    return load_auth_config(path) if path is not None else AuthConfig()


def _user(args: argparse.Namespace) -> int:
    from teelab.sealed_store.kbs.config import default_state_dir
    from teelab.sealed_store.kbs.identity import issue_local_token, local_token_file

    state = (args.state or default_state_dir()).expanduser().resolve()
    existed = local_token_file(state, args.name).exists()
    path = issue_local_token(state, args.name, replace=args.renew)
    verb = "renewed" if existed and args.renew else "exists" if existed else "issued"
    print(f"{args.name}: token {verb} at {path}")
    print(
        "  hand it to the user privately; it authenticates as them (`--token-file`, $TEELAB_KBS_TOKEN_FILE)"
    )
    return 0


# -- teelab audit ----------------------------------------------------------------------------------------


class _Source:
    """Where the audit entries come from: the database directly, or a running KBS."""

    def __init__(self, args: argparse.Namespace) -> None:
        from teelab.sealed_store.kbs.config import DB_FILE, default_state_dir

        self.args = args
        self.state: Path = (args.state or default_state_dir()).expanduser()
        self.url: str = args.db or f"sqlite:///{self.state / DB_FILE}"
        if args.kbs and args.db:
            raise UsageError("give --kbs or --db, not both")
        if args.kbs and not args.token_file:
            raise UsageError("--kbs needs --token-file (the KBS's admin-token)")

    def records(self, since: int = 0, dataset: str | None = None) -> Iterator[AuditRecord]:
        """Entries after ``since`` (of ``dataset`` only, if given), in order, a page at a time."""
        if self.args.kbs:
            from teelab.sealed_store.kbs.client import KbsClient

            with KbsClient.with_token_file(self.args.kbs, self.args.token_file) as client:
                yield from client.iter_audit(since_seq=since, dataset=dataset)
            return
        from teelab.sealed_store.kbs.store import Store

        store = Store.reader(self.url)
        try:
            for record in store.iter_audit(since_seq=since):
                if dataset is None or record.entry().get("dataset") == dataset:
                    yield record
        finally:
            store.close()

    def head(self) -> SignedHead:
        """The KBS's signed head record (read before the entries, so the log is at least this long)."""
        if self.args.kbs:
            from teelab.sealed_store.kbs.client import KbsClient

            with KbsClient.with_token_file(self.args.kbs, self.args.token_file) as client:
                page = client.audit(limit=1)
            return page.head or SignedHead(page.head_seq, page.head_hash, None)
        from teelab.sealed_store.kbs.store import Store

        store = Store.reader(self.url)
        try:
            return store.audit_head()
        finally:
            store.close()

    def head_seq(self) -> int:
        return self.head().seq

    def public_key(self) -> bytes:
        from teelab.sealed_store.kbs.crypto import SIGNING_PUBLIC_FILE, load_signing_public_key

        if self.args.public_key:
            return load_signing_public_key(self.args.public_key)
        if self.args.kbs:
            from teelab.sealed_store.kbs.client import KbsClient

            with KbsClient(self.args.kbs) as client:
                return client.info().signing_public_key
        path = self.state / SIGNING_PUBLIC_FILE
        if not path.exists():
            raise UsageError(
                f"no signing key to verify with at {path}",
                hint="pass --public-key FILE (the KBS's signing.pub)",
            )
        return load_signing_public_key(path)


def _show(args: argparse.Namespace) -> int:
    from teelab.sealed_store.kbs.audit import render_table

    source = _Source(args)
    since = args.since or 0
    if args.since is None and args.limit > 0 and not args.dataset:  # the newest entries
        since = max(0, source.head_seq() - args.limit)
    records: list[AuditRecord] = []
    for record in source.records(since, args.dataset):
        records.append(record)
        if args.limit > 0 and len(records) >= args.limit:
            break
    if args.json:
        for record in records:
            line = {
                "seq": record.seq,
                "body": record.entry(),
                "hash": record.hash.hex(),
                "signature": record.signature.hex(),
            }
            print(json.dumps(line, sort_keys=True))
        return 0
    if not records:
        print("the audit log is empty" if not args.since else f"no entries after {args.since}")
        return 0
    print(render_table(records))
    return 0


_VERIFIED_HEADS = "audit-verified-heads.json"


def _remembered_heads() -> dict[str, list[object]]:
    from teelab.paths import data_dir

    try:
        data = json.loads((data_dir() / _VERIFIED_HEADS).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember_head(key_id: str, seq: int, digest: bytes) -> None:
    from teelab.files import replace_atomically
    from teelab.paths import data_dir

    heads = _remembered_heads()
    heads[key_id] = [seq, digest.hex()]
    replace_atomically(data_dir() / _VERIFIED_HEADS, json.dumps(heads, indent=1).encode())


def _verify(args: argparse.Namespace) -> int:
    """Every entry, and the log's length against four witnesses: the broker's signed head record, the head
    this machine verified last time (unless --forget), a --witness file, and any --head / --min-count given."""
    from teelab.sealed_store.kbs.audit import verify_audit
    from teelab.sealed_store.kbs.crypto import key_id

    source = _Source(args)
    key = source.public_key()
    kid = key_id(key)
    head = _parse_head(args.head) if args.head else None
    witness = _read_witness(args.witness, kid) if args.witness else None
    remembered = None if args.forget else _remembered_heads().get(kid)
    if head is None and witness is not None:
        head = witness
    if head is None and isinstance(remembered, list) and len(remembered) == 2:
        head = (int(str(remembered[0])), bytes.fromhex(str(remembered[1])))
    signed = source.head()
    min_count = max(args.min_count or 0, signed.seq, head[0] if head else 0)
    result = verify_audit(
        source.records(), key, trusted_head=head, min_count=min_count or None, signed_head=signed
    )
    if result.ok:
        if not args.forget:
            _remember_head(kid, result.head_seq, result.head_hash)
        if args.witness:
            _write_witness(args.witness, kid, result.head_seq, result.head_hash)
        print(result.summary())
        print(f"  head to record for later checks: --head {result.head_seq}:{result.head_hash.hex()}")
        return 0
    print(result.summary(), file=sys.stderr)
    print(
        f"  entries 1..{result.head_seq} verify; not trustworthy from entry {result.first_bad_seq} on",
        file=sys.stderr,
    )
    return 1


def _read_witness(path: Path, kid: str) -> tuple[int, bytes] | None:
    """The head an auditor recorded last time, kept outside the KBS's database (none yet: None)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise UsageError(f"--witness {path}: not a witness file ({error})") from None
    if not isinstance(data, dict) or data.get("key_id") != kid:
        raise UsageError(f"--witness {path} is for another key broker (signing key {data.get('key_id')!r})")
    try:
        return int(data["seq"]), bytes.fromhex(str(data["hash"]))
    except (KeyError, ValueError, TypeError):
        raise UsageError(f"--witness {path}: expected seq and hash") from None


def _write_witness(path: Path, kid: str, seq: int, digest: bytes) -> None:
    from teelab.files import replace_atomically

    record = {"key_id": kid, "seq": seq, "hash": digest.hex()}
    replace_atomically(path, (json.dumps(record, indent=1) + "\n").encode())


def _parse_head(text: str) -> tuple[int, bytes]:
    seq, sep, digest = text.partition(":")
    try:
        if not sep:
            raise ValueError
        value = (int(seq), bytes.fromhex(digest))
    except ValueError:
        raise UsageError(
            f"--head {text!r}: expected SEQ:HASH (hex)", hint="`teelab audit verify` prints it"
        ) from None
    if value[0] < 1 or len(value[1]) != 32:
        raise UsageError(f"--head {text!r}: expected a positive SEQ and a 64-digit SHA-256")
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m teelab.sealed_store.kbs``: these commands without the rest of ``teelab``."""
    from teelab.cli_support import HelpFormatter, run

    parser = argparse.ArgumentParser(
        prog="teelab", formatter_class=HelpFormatter, description=KBS_DESCRIPTION
    )
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return run(parser, argv)
