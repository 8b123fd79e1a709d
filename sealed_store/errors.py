"""What can go wrong with a sealed dataset, one class per kind of failure.

Every class derives from :class:`teelab.errors.SealedDataError`, so callers that only care that *something*
is wrong catch that; callers that react differently (the CLI's hints, the tamper tests, the audit log) catch
the subclass. Each error names the dataset, version and part concerned, in the message and as attributes.
"""

from __future__ import annotations

from teelab.errors import SealedDataError


def describe(dataset: str | None, version: int | None, part: str | None) -> str:
    """``'sales' v3, part-00002.parquet`` — how messages name what they are about."""
    where = repr(dataset) if dataset is not None else "sealed dataset"
    if version is not None:
        where += f" v{version}"
    if part is not None:
        where += f", {part}"
    return where


class SealedStoreError(SealedDataError):
    """Base of this package's errors; ``dataset``/``version``/``part`` say where the problem is."""

    default_hint: str | None = None

    def __init__(
        self,
        detail: str,
        *,
        dataset: str | None = None,
        version: int | None = None,
        part: str | None = None,
        hint: str | None = None,
    ) -> None:
        located = dataset is not None or version is not None or part is not None
        message = f"{describe(dataset, version, part)}: {detail}" if located else detail
        super().__init__(message, hint=hint if hint is not None else self.default_hint)
        self.detail = detail
        self.dataset = dataset
        self.version = version
        self.part = part


class InvalidNameError(SealedStoreError):
    """A dataset name or version is not of the allowed form."""


class DatasetNotFoundError(SealedStoreError):
    """The store has no visible (manifest-complete) version of that dataset."""


class ManifestError(SealedStoreError):
    """A manifest is not a well-formed v1 sealed-dataset manifest."""

    default_hint = "the manifest is damaged or was edited; upload the sealed dataset again"


class ManifestTamperedError(ManifestError):
    """A manifest is well formed but its MAC, or the dataset/version it names, does not check out."""

    default_hint = "someone edited the manifest; do not trust this copy, upload the sealed dataset again"


class ManifestMismatchError(SealedStoreError):
    """The store serves a manifest other than the one the key broker registered for this version."""

    default_hint = "the store's copy was replaced; restore it from the data owner's sealed folder"


class RollbackError(ManifestMismatchError):
    """The store serves an older version where the key broker says a newer one is current."""

    default_hint = "the store was rolled back; restore the current version from the data owner"


class KeyMismatchError(SealedStoreError):
    """The data key does not belong to this dataset version (its key commitment does not match)."""

    default_hint = "the key broker released a key registered for another dataset or version"


class PartError(SealedStoreError):
    """Base of the errors about one part file."""


class PartMissingError(PartError):
    """A part listed in the manifest is not in the store."""

    default_hint = "the upload is incomplete or a part was deleted; upload the sealed dataset again"


class PartSizeError(PartError):
    """A part's size differs from the manifest's: truncated, or bytes were appended."""

    default_hint = "the part was truncated or extended; upload the sealed dataset again"


class PartSwappedError(PartError):
    """A part holds the bytes of another part of the same version."""

    default_hint = "parts were renamed or reordered in the store; upload the sealed dataset again"


class PartTamperedError(PartError):
    """A part failed authentication: modified, or replaced by a part of another dataset or version."""

    default_hint = "do not trust this copy; upload the sealed dataset again from the data owner's folder"


class QueryError(SealedStoreError):
    """The requested columns or filters do not fit the dataset's schema."""


class SealInputError(SealedStoreError):
    """The input given to ``seal`` cannot be read or converted to Arrow."""


class SealOutputError(SealedStoreError):
    """The folder to seal into cannot be used (not empty, not writable)."""


class StorageError(SealedStoreError):
    """The dataset store could not be read or written (network, permissions, a missing bucket)."""


class VersionExistsError(SealedStoreError):
    """An upload names a version that is already visible with different content (versions are immutable)."""

    default_hint = "seal the data again as a new version"
