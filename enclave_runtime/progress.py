"""A progress bar for long measurements (to stderr, only when someone is watching)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

from teelab.enclave_runtime.manifest import ProgressCallback


@contextmanager
def hashing_progress(label: str) -> Iterator[ProgressCallback]:
    bar = tqdm(desc=label, unit=" files", file=sys.stderr, disable=not sys.stderr.isatty(), leave=False)

    def update(files: int, hashed: int) -> None:
        bar.n = files
        bar.set_postfix_str(f"{hashed / 1e6:,.0f} MB hashed", refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()
