"""teelab.sealed_store: sealed datasets (format, storage, reader) and the key broker (``kbs``).

The public names below are imported lazily: ``import teelab.sealed_store.kbs`` (the key broker server) must
not pay for pandas and pyarrow, which only the format, storage and reader need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from teelab.sealed_store.folder import SealedDataset
    from teelab.sealed_store.manifest import Manifest, PartEntry
    from teelab.sealed_store.notebook import read_dataset
    from teelab.sealed_store.reader import SealedReader, open_sealed, read_sealed, read_sealed_table
    from teelab.sealed_store.seal import SealResult, seal_dataset
    from teelab.sealed_store.storage import DatasetStore, DatasetVersion, default_store_url
    from teelab.sealed_store.upload import UploadResult

_EXPORTS = {
    "read_dataset": "notebook",
    "Manifest": "manifest",
    "PartEntry": "manifest",
    "SealedReader": "reader",
    "open_sealed": "reader",
    "read_sealed": "reader",
    "read_sealed_table": "reader",
    "SealedDataset": "folder",
    "SealResult": "seal",
    "seal_dataset": "seal",
    "DatasetStore": "storage",
    "DatasetVersion": "storage",
    "default_store_url": "storage",
    "UploadResult": "upload",
}

__all__ = [
    "DatasetStore",
    "DatasetVersion",
    "Manifest",
    "PartEntry",
    "SealResult",
    "SealedDataset",
    "SealedReader",
    "UploadResult",
    "default_store_url",
    "open_sealed",
    "read_dataset",
    "read_sealed",
    "read_sealed_table",
    "seal_dataset",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
