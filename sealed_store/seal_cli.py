"""``teelab dataset seal INPUT --name NAME [--version N] [--out DIR] [--part-size SIZE]``.

The wiring into ``teelab dataset`` (and the key broker registration behind ``key_sink``) belongs to the
CLI integration; this module provides the arguments (:func:`add_seal_arguments`) and the handler
(:func:`seal_command`).
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Callable
from pathlib import Path

from teelab.errors import UsageError
from teelab.sealed_store.errors import InvalidNameError
from teelab.sealed_store.folder import SealedDataset
from teelab.sealed_store.format import MANIFEST_NAME, check_name, check_version
from teelab.sealed_store.seal import COMPRESSIONS, DEFAULT_PART_SIZE, seal_dataset

KeySink = Callable[[str, int, bytes], None]  # (dataset, version, data key)

EXAMPLES = """\
examples:
  teelab dataset seal sales.csv --name sales
  teelab dataset seal events/ --name events --version 3 --out /secure/events-v3 --part-size 256MiB

The data key is handed to the key broker; it is never written to disk. Sizes: 512MiB, 1G (binary),
500MB (decimal), or a number of bytes.
"""

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str) -> int:
    """``128MiB`` -> 134217728. K/M/G and KiB/MiB/GiB are binary, KB/MB/GB decimal."""
    match = _SIZE_RE.fullmatch(text)
    unit = match[2].lower() if match else None
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (write e.g. 128MiB, 1G or 500MB)")
    value = int(float(match[1]) * _UNITS[unit])
    if value < 1:
        raise argparse.ArgumentTypeError(f"a size must be positive: {text!r}")
    return value


def add_seal_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments :func:`seal_command` reads."""
    parser.add_argument(
        "input", metavar="INPUT", help="a CSV file (.csv, .csv.gz…), a Parquet file or folder"
    )
    parser.add_argument("--name", required=True, help="dataset name: letters, digits, '.', '_', '-'")
    parser.add_argument("--version", type=int, default=1, help="dataset version, an integer >= 1 (default 1)")
    parser.add_argument(
        "--out", type=Path, default=None, help="new folder to write (default ./NAME-vVERSION.sealed)"
    )
    parser.add_argument(
        "--part-size",
        type=parse_size,
        default=DEFAULT_PART_SIZE,
        help="uncompressed data per part (default 128MiB): what one part needs in memory when read",
    )
    parser.add_argument(
        "--input-format", choices=("auto", "csv", "parquet"), default="auto", help="default: from the name"
    )
    parser.add_argument("--compression", choices=COMPRESSIONS, default="snappy", help="default: snappy")


def seal_options(args: argparse.Namespace) -> tuple[str, int | None, Path | None, dict[str, object]]:
    """(name, version, out folder, keyword arguments for ``seal_dataset``) from parsed arguments."""
    try:
        name = check_name(args.name)
        version = None if getattr(args, "version", None) is None else check_version(args.version)
    except InvalidNameError as error:
        raise UsageError(error.message, hint=error.hint) from None
    part_size = getattr(args, "part_size", DEFAULT_PART_SIZE)
    if isinstance(part_size, str):
        try:
            part_size = parse_size(part_size)
        except argparse.ArgumentTypeError as error:
            raise UsageError(str(error)) from None
    out = Path(args.out) if getattr(args, "out", None) is not None else None
    options: dict[str, object] = {
        "part_size": part_size,
        "input_format": getattr(args, "input_format", "auto"),
        "compression": getattr(args, "compression", "snappy"),
    }
    return name, version, out, options


def seal_command(args: argparse.Namespace, *, key_sink: KeySink) -> int:
    """Seal ``args.input``; hand the data key to ``key_sink``; print where it went and the manifest digest.

    If ``key_sink`` fails, the sealed folder is removed again: without its key it could never be read.
    """
    name, maybe_version, out_arg, options = seal_options(args)
    version = maybe_version or 1
    out = out_arg or Path(f"{name}-v{version}.sealed")
    result = seal_dataset(Path(args.input), name=name, version=version, out=out, **options)  # type: ignore[arg-type]
    sealed, dek = result.dataset, result.dek
    try:
        key_sink(name, version, dek)
    except BaseException:
        discard(sealed)
        raise
    manifest = sealed.manifest
    print(
        f"sealed {name!r} v{version}: {len(manifest.parts)} part(s), {manifest.total_size:,} bytes, "
        f"into {sealed.folder}"
    )
    print(f"manifest sha256: {sealed.manifest_sha256}")
    return 0


def discard(sealed: SealedDataset) -> None:
    with contextlib.suppress(OSError):
        (sealed.folder / MANIFEST_NAME).unlink()
    for entry in sealed.manifest.parts:
        with contextlib.suppress(OSError):
            (sealed.folder / entry.name).unlink()
    with contextlib.suppress(OSError):
        sealed.folder.rmdir()
