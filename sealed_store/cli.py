"""``teelab dataset seal|upload|list|show|grant|revoke|delete`` — the data owner's commands."""

from __future__ import annotations

import argparse
import json
import re
from argparse import ArgumentParser
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from teelab.cli_support import Handler, Subparsers
from teelab.errors import UsageError
from teelab.timeutil import parse_time, utcnow

GROUP_EPILOG = """\
A data owner seals a dataset on their own machine (the data key never touches a disk), registers the key
with the key broker, uploads the sealed parts, and grants users or groups. Only an attested kernel of a
granted user — one whose evidence passes the dataset's release policy — ever gets the key.

examples:
  teelab kbs serve &                                      the local key broker (embedded defaults)
  teelab dataset upload sales.csv --name sales --policy ~/.config/teelab/policies/teelab-sim.toml \\
      --grant alice --grant group:analysts
  teelab dataset list
  teelab dataset show sales
  teelab dataset grant sales bob --expires 7d
  teelab dataset revoke sales bob
in a notebook on the teelab kernel:
  from teelab.sealed_store import read_dataset
  df = read_dataset("sales", columns=["region", "amount"])
"""

POLICY_HELP = (
    "release policy: the appraisal policy TOML a kernel's evidence must pass (docs/policy.md), e.g. the "
    "simulated kernel's installed ~/.config/teelab/policies/teelab-sim.toml. Required, unless "
    "--builtin-policy"
)
BUILTIN_POLICY_HELP = (
    "release to any genuine, up-to-date, non-debug TEE, whatever it runs (teelab's built-in policy, no "
    "measurement pinned)"
)


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where (defaults: the local broker and store)")
    group.add_argument(
        "--kbs",
        metavar="[grpcs://]HOST:PORT",
        help="key broker address, grpcs:// for TLS (default: $TEELAB_KBS, or local; a private CA: $TEELAB_KBS_CA)",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="your key broker token (default: $TEELAB_KBS_TOKEN_FILE, or the local broker's users/<you>.token)",
    )
    group.add_argument("--store", metavar="URL", help="dataset store, any fsspec URL (default: local folder)")


def _owner(args: argparse.Namespace) -> Any:
    from teelab.sealed_store.owner import DataOwner

    return DataOwner.connect(
        kbs=args.kbs, token_file=args.token_file, store=args.store, owner=getattr(args, "owner", None)
    )


def _expiry(text: str | None) -> datetime | None:
    """An ISO-8601 time, or a duration from now such as 7d, 12h, 30m."""
    if not text:
        return None
    match = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if match:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match[2]]
        return utcnow() + timedelta(**{unit: int(match[1])})
    return parse_time(text)


def _policy(args: argparse.Namespace) -> str:
    """The release policy's text. The choice is explicit: the built-in policy releases to every genuine,
    up-to-date, non-debug TEE whatever code it runs, which must never happen by omission."""
    path: Path | None = args.policy
    if path is None:
        if getattr(args, "builtin_policy", False):
            return ""
        raise UsageError(
            "choose who may receive this dataset's key: --policy FILE pins the kernels you trust",
            hint="e.g. --policy ~/.config/teelab/policies/teelab-sim.toml (the simulated kernel's); "
            "--builtin-policy releases to ANY measurement on up-to-date hardware",
        )
    from teelab.gateway.policy import parse_policy

    try:
        text = path.read_text()
    except OSError as error:
        raise UsageError(f"cannot read the release policy {path}: {error.strerror or error}") from None
    parse_policy(text, source=str(path))  # refuse a broken policy before anything is sealed
    return text


def _progress(args: argparse.Namespace) -> Any:
    return None  # a bar on stderr when it is a terminal (the sealed store's default)


def _seal(args: argparse.Namespace) -> int:
    from teelab.sealed_store.seal_cli import seal_options

    name, version, out, options = seal_options(args)
    with _owner(args) as owner:
        version = version or owner.next_version(name)
        sealed = owner.seal(
            Path(args.input),
            name=name,
            version=version,
            out=out or Path(f"{name}-v{version}.sealed"),
            policy_toml=_policy(args),
            release_expires_at=_expiry(args.release_until),
            progress=_progress(args),
            **options,
        )
    dataset = sealed.dataset
    print(f"sealed         {dataset.name} v{dataset.version} → {dataset.folder} ({sealed.rows:,} rows)")
    print(f"parts          {len(dataset.manifest.parts)} ({dataset.manifest.total_size:,} bytes)")
    print(f"manifest       sha256 {dataset.manifest_sha256}")
    print("key            registered with the key broker (never written to disk)")
    print(f"next           teelab dataset upload {dataset.folder}")
    return 0


def _upload(args: argparse.Namespace) -> int:
    from teelab.sealed_store.folder import SealedDataset
    from teelab.sealed_store.format import MANIFEST_NAME

    source = Path(args.input)
    grants = [(who, _expiry(args.expires)) for who in args.grant]
    with _owner(args) as owner:
        if (source / MANIFEST_NAME).is_file():  # an already sealed (and registered) folder: upload or resume
            sealed = SealedDataset.open(source)
            result = owner.upload(sealed, progress=_progress(args))
            for who, until in grants:
                owner.grant(sealed.name, who, expires_at=until)
            state = "already there" if result.already_present else f"{result.parts_uploaded} part(s) uploaded"
            if result.parts_skipped:
                state += f", {result.parts_skipped} resumed"
            print(f"uploaded       {sealed.name} v{sealed.version}: {state}")
            return 0
        if not args.name:
            raise UsageError("--name is required when INPUT is not a sealed folder")
        from teelab.sealed_store.seal_cli import seal_options

        args.out = None
        name, version, _, options = seal_options(args)
        published = owner.publish(
            source,
            name=name,
            version=version,
            policy_toml=_policy(args),
            grants=grants,
            release_expires_at=_expiry(args.release_until),
            progress=_progress(args),
            **options,
        )
    print(
        f"published      {published.name} v{published.version} ({published.parts} part(s), {published.size:,} bytes)"
    )
    print(f"manifest       sha256 {published.manifest_sha256}")
    for grant in published.grants:
        suffix = f" until {grant.expires_at.isoformat()}" if grant.expires_at else ""
        print(f"granted        {grant.principal}{suffix}")
    print(f'read it        read_dataset("{published.name}")  — in a notebook on a teelab kernel')
    return 0


def _list(args: argparse.Namespace) -> int:
    with _owner(args) as owner:
        views = owner.list()
    if args.json:
        print(json.dumps([v.to_json() for v in views], indent=1))
        return 0
    if not views:
        print("no datasets yet — `teelab dataset upload FILE --name NAME` publishes one")
        return 0
    print(f"{'name':<24} {'current':>7}  {'uploaded':<12} {'grants':<30} owner")
    for view in views:
        data = view.to_json()
        uploaded = ",".join(f"v{v['version']}" for v in data["versions"] if v["uploaded"]) or "-"
        grants = ",".join(g["principal"] for g in data["grants"]) or "-"
        current = f"v{data['current_version']}" if data["current_version"] else "-"
        print(f"{data['name']:<24} {current:>7}  {uploaded:<12} {grants:<30} {data['owner']}")
    return 0


def _show(args: argparse.Namespace) -> int:
    with _owner(args) as owner:
        view = owner.show(args.name)
    print(json.dumps(view.to_json(), indent=1))
    return 0


def _grant(args: argparse.Namespace) -> int:
    with _owner(args) as owner:
        grant = owner.grant(args.name, args.principal, expires_at=_expiry(args.expires))
    until = f" until {grant.expires_at.isoformat()}" if grant.expires_at else ""
    print(f"granted {grant.principal} on {args.name}{until}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from teelab.sealed_store.owner import principal

    who = principal(args.principal)
    with _owner(args) as owner:
        removed = owner.revoke(args.name, who)
    print(f"revoked {who} on {args.name}" if removed else f"{who} had no grant on {args.name}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    what = f"{args.name} v{args.version}" if args.version else f"every version of {args.name}"
    if not args.yes:
        raise UsageError(f"this erases the key of {what}: the data can never be read again", hint="add --yes")
    with _owner(args) as owner:
        erased = owner.delete(args.name, args.version)
    print(f"deleted {what} (keys erased: {', '.join(f'v{v}' for v in erased) or 'none'})")
    return 0


def register(subparsers: Subparsers) -> None:
    from teelab.cli_support import command_group

    _, commands = command_group(
        subparsers,
        "dataset",
        help_text="seal, upload and share datasets only attested kernels can read",
        description="Sealed datasets: decrypted only inside an attested kernel, for the users you grant.",
        epilog=GROUP_EPILOG,
    )
    _register_seal(commands)
    _register_upload(commands)
    _register_reading(commands)
    _register_sharing(commands)


def _command(
    commands: Subparsers, name: str, help_text: str, handler: Handler, epilog: str
) -> ArgumentParser:
    from teelab.cli_support import add_command

    parser = add_command(commands, name, handler, help_text=help_text, epilog=epilog)
    _connection_arguments(parser)
    return parser


def _policy_arguments(parser: ArgumentParser) -> None:
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--policy", type=Path, metavar="FILE", help=POLICY_HELP)
    choice.add_argument("--builtin-policy", action="store_true", help=BUILTIN_POLICY_HELP)


def _register_seal(commands: Subparsers) -> None:
    from teelab.sealed_store.seal_cli import add_seal_arguments

    seal = _command(
        commands,
        "seal",
        "seal a CSV or Parquet input into a folder and register its key (upload it afterwards)",
        _seal,
        "example:\n  teelab dataset seal sales.csv --name sales --policy policy.toml\n"
        "  teelab dataset upload sales-v1.sealed",
    )
    add_seal_arguments(seal)
    _policy_arguments(seal)
    seal.add_argument(
        "--release-until", metavar="TIME", help="no key release after this (ISO-8601 or e.g. 90d)"
    )
    seal.add_argument("--owner", help="owner name recorded with the dataset (default: your login)")
    for action in seal._actions:
        if action.dest == "version":
            action.default, action.help = None, "version (default: one more than any registered)"


def _register_upload(commands: Subparsers) -> None:
    from teelab.sealed_store.seal import COMPRESSIONS, DEFAULT_PART_SIZE
    from teelab.sealed_store.seal_cli import parse_size

    upload = _command(
        commands,
        "upload",
        "publish a dataset (seal + register + upload + grant), or upload/resume a sealed folder",
        _upload,
        "examples:\n  teelab dataset upload sales.csv --name sales --grant alice --grant group:analysts\n"
        "  teelab dataset upload sales-v1.sealed          (resumes an interrupted upload)",
    )
    upload.add_argument(
        "input", metavar="INPUT", help="CSV/Parquet input, or a folder made by `dataset seal`"
    )
    upload.add_argument("--name", help="dataset name (required for a CSV/Parquet input)")
    upload.add_argument("--version", type=int, default=None, help="version (default: the next one)")
    _policy_arguments(upload)
    upload.add_argument(
        "--grant", action="append", default=[], metavar="WHO", help="user:NAME or group:NAME (repeatable)"
    )
    upload.add_argument("--expires", metavar="TIME", help="the grants' expiry (ISO-8601 or e.g. 30d)")
    upload.add_argument("--release-until", metavar="TIME", help="no key release after this")
    upload.add_argument("--owner", help="owner name recorded with the dataset (default: your login)")
    upload.add_argument("--part-size", type=parse_size, default=DEFAULT_PART_SIZE, help="default 128MiB")
    upload.add_argument("--input-format", choices=("auto", "csv", "parquet"), default="auto")
    upload.add_argument("--compression", choices=COMPRESSIONS, default="snappy")


def _register_reading(commands: Subparsers) -> None:
    listing = _command(
        commands,
        "list",
        "datasets, their versions and who may read them",
        _list,
        "examples:\n  teelab dataset list\n  teelab dataset list --json | jq '.[].name'",
    )
    listing.add_argument("--json", action="store_true")
    show = _command(
        commands, "show", "one dataset in detail (JSON)", _show, "example:\n  teelab dataset show sales"
    )
    show.add_argument("name")


def _register_sharing(commands: Subparsers) -> None:
    grant = _command(
        commands,
        "grant",
        "let a user or group read a dataset",
        _grant,
        "examples:\n  teelab dataset grant sales alice\n  teelab dataset grant sales group:analysts --expires 30d\n"
        "  teelab dataset grant sales user:bob --expires 2026-12-31T23:59:59Z",
    )
    grant.add_argument("name")
    grant.add_argument("principal", metavar="WHO", help="user:NAME, group:NAME, or a bare user name")
    grant.add_argument("--expires", metavar="TIME", help="ISO-8601, or a duration such as 7d, 12h")
    revoke = _command(
        commands,
        "revoke",
        "withdraw a grant (takes effect at the next key release)",
        _revoke,
        "examples:\n  teelab dataset revoke sales alice\n  teelab dataset revoke sales group:analysts",
    )
    revoke.add_argument("name")
    revoke.add_argument("principal", metavar="WHO")
    delete = _command(
        commands,
        "delete",
        "erase a dataset's keys and sealed parts",
        _delete,
        "examples:\n  teelab dataset delete sales --version 1 --yes\n  teelab dataset delete sales --yes",
    )
    delete.add_argument("name")
    delete.add_argument("--version", type=int, help="only this version")
    delete.add_argument("--yes", action="store_true", help="really erase it")
