"""A sealed dataset version in a local folder (what ``seal`` writes and ``upload`` reads): ``manifest.json``
and its parts. Needs neither the key nor pandas/pyarrow, so uploading stays light."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from teelab.sealed_store.errors import ManifestError, PartMissingError, PartSizeError
from teelab.sealed_store.format import MANIFEST_NAME, part_name
from teelab.sealed_store.manifest import Manifest, parse_manifest


@dataclass(frozen=True)
class SealedDataset:
    """A sealed dataset version in a local folder: ``manifest.json`` and its parts."""

    folder: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.dataset

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def manifest_sha256(self) -> str:
        return self.manifest.sha256

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST_NAME

    def part_path(self, k: int) -> Path:
        return self.folder / part_name(k)

    @classmethod
    def open(cls, folder: str | Path) -> SealedDataset:
        """Load a sealed folder (no key needed) and check that every part is there with its size."""
        folder = Path(folder)
        try:
            data = (folder / MANIFEST_NAME).read_bytes()
        except FileNotFoundError:
            raise ManifestError(
                f"{str(folder)!r} holds no {MANIFEST_NAME}: not a sealed dataset, or sealing did not finish"
            ) from None
        except OSError as error:
            raise ManifestError(f"cannot read {str(folder / MANIFEST_NAME)!r}: {error}") from None
        manifest = parse_manifest(data)
        for entry in manifest.parts:
            where = (manifest.dataset, manifest.version, entry.name)
            try:
                size = (folder / entry.name).stat().st_size
            except FileNotFoundError:
                raise PartMissingError(
                    f"missing from the sealed folder {str(folder)!r}",
                    dataset=where[0],
                    version=where[1],
                    part=where[2],
                ) from None
            if size != entry.size:
                raise PartSizeError(
                    f"is {size} bytes in {str(folder)!r}, the manifest says {entry.size}",
                    dataset=where[0],
                    version=where[1],
                    part=where[2],
                )
        return cls(folder=folder, manifest=manifest)
