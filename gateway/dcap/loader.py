"""``load_collateral``: a bundle file or a PCS folder, parsed once, memoised while its files are unchanged."""

from __future__ import annotations

from pathlib import Path
from threading import Lock

from teelab.errors import VerificationError
from teelab.gateway.dcap.collateral import CHECK, IntelCollateral
from teelab.gateway.dcap.guard import verification_errors_only

_CACHE: dict[Path, tuple[tuple[object, ...], IntelCollateral]] = {}
_LOCK = Lock()
_CACHE_SIZE = 32


def _unreadable(path: Path, exc: OSError) -> VerificationError:
    return VerificationError(CHECK, f"{path}: cannot be read: {exc.strerror or exc}")


def _stamp(path: Path) -> tuple[object, ...]:
    """Names, sizes and mtimes of the files behind ``path``: a cheap stand-in for their content."""
    try:
        if path.is_dir():
            return tuple(
                (child.name, st.st_size, st.st_mtime_ns)
                for child in sorted(path.iterdir())
                if child.is_file() and (st := child.stat())
            )
        st = path.stat()
        return ((path.name, st.st_size, st.st_mtime_ns),)
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _load(path: Path) -> IntelCollateral:
    if path.is_dir():
        return IntelCollateral.from_folder(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from None
    return IntelCollateral.from_bundle_json(data, source=str(path))


@verification_errors_only("loading collateral")
def load_collateral(path: str | Path) -> IntelCollateral:
    """Load a dcap-qvl JSON bundle (a file) or a folder of PCS files, memoised by path + file stamps."""
    resolved = Path(path).resolve()
    if not resolved.exists():
        raise VerificationError(CHECK, f"{path}: no such file or folder")
    stamp = _stamp(resolved)
    with _LOCK:
        hit = _CACHE.get(resolved)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    collateral = _load(resolved)
    with _LOCK:
        if resolved not in _CACHE and len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[resolved] = (stamp, collateral)
    return collateral


def clear_collateral_cache() -> None:
    with _LOCK:
        _CACHE.clear()
