"""Progress reporting for sealing and uploading: a tqdm bar on a terminal, or the caller's callback.

``progress`` arguments accept ``None`` (a bar on stderr only when stderr is a terminal, so logs and pipes
stay clean), ``False`` (never), ``True`` (always a bar on stderr), or a callable ``(done, total)`` that a
web front-end or a test can use instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm

ProgressCallback = Callable[[int, int], None]  # (done, total) in the bar's unit
Progress = bool | ProgressCallback | None
Advance = Callable[[int], None]


@contextmanager
def progress_bar(progress: Progress, *, total: int, label: str, unit: str) -> Iterator[Advance]:
    """Yield ``advance(n)``; ``unit="B"`` shows bytes scaled to KiB/MiB/GiB."""
    if callable(progress):
        callback = progress
        done = 0

        def advance_callback(n: int) -> None:
            nonlocal done
            done += n
            callback(done, total)

        yield advance_callback
        return
    show = sys.stderr.isatty() if progress is None else progress
    scaled = unit == "B"
    bar = tqdm(
        total=total,
        desc=label,
        unit=unit,
        unit_scale=scaled,
        unit_divisor=1024 if scaled else 1000,
        file=sys.stderr,
        disable=not show,
        leave=False,
        dynamic_ncols=True,
    )
    try:
        yield bar.update
    finally:
        bar.close()
