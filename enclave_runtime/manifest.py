"""Enclave manifests: what an enclave image runs and every file it trusts, and its measurement.

Like a LibOS manifest (Gramine's ``sgx.trusted_files``), an :class:`ImageSpec` names an entrypoint, its
argv and environment, the host environment variables allowed in unmeasured (``passthrough_env``), and the
trusted files and folders. Expanding the spec hashes every trusted file (folders recursively, per file) into
an :class:`EnclaveManifest`, whose canonical JSON form is what the measurement (MRENCLAVE) covers.

Bytecode caches (``__pycache__``, ``*.pyc``) are never trusted files: the host rewrites them whenever any
Python process imports a module, and a planted ``.pyc`` would be code the measurement never saw. The
kernel image points ``PYTHONPYCACHEPREFIX`` into the TEE's own storage instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat as stat_module
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from teelab.enclave_runtime.hashcache import HashCache
from teelab.errors import EnclaveError

MANIFEST_FORMAT = "teelab/enclave-manifest/v1"
EXCLUDED_DIRS = frozenset({"__pycache__"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo")

# Placeholders a backend substitutes at launch with locations inside the TEE. The measured manifest holds
# the placeholder, because what is measured is the meaning: "the TEE's private scratch space" (a tmpfs in
# Gramine) and "the TEE's own persistent storage" (an encrypted mount sealed to the enclave).
TEE_TMP = "{tee_tmp}"
TEE_STATE = "{tee_state}"

ProgressCallback = Callable[[int, int], None]  # (files done, bytes hashed so far)


@dataclass(frozen=True)
class ImageSpec:
    """What to put in an enclave image, before any file is hashed."""

    name: str
    entrypoint: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    passthrough_env: tuple[str, ...] = ()
    trusted: tuple[str, ...] = ()  # files or folders (folders are expanded recursively)
    excluded: tuple[str, ...] = ()  # folders under a trusted folder to leave out
    isv_prod_id: int = 0
    isv_svn: int = 0


@dataclass(frozen=True)
class TrustedFile:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class EnclaveManifest:
    name: str
    entrypoint: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    passthrough_env: tuple[str, ...]
    trusted_files: tuple[TrustedFile, ...]
    isv_prod_id: int
    isv_svn: int

    def canonical(self) -> bytes:
        """The exact bytes the measurement covers: sorted keys, no whitespace, sizes left out."""
        document = {
            "format": MANIFEST_FORMAT,
            "name": self.name,
            "entrypoint": self.entrypoint,
            "argv": list(self.argv),
            "env": dict(self.env),
            "passthrough_env": sorted(self.passthrough_env),
            "trusted_files": [[f.path, f.sha256] for f in self.trusted_files],
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @functools.cached_property
    def mrenclave(self) -> bytes:
        # Cached: a launcher reads it on every launch, and a Python environment has ~20,000 trusted files.
        return hashlib.sha256(self.canonical()).digest()

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.trusted_files)

    def to_json(self) -> dict[str, object]:
        return {
            "format": MANIFEST_FORMAT,
            "name": self.name,
            "entrypoint": self.entrypoint,
            "argv": list(self.argv),
            "env": dict(self.env),
            "passthrough_env": list(self.passthrough_env),
            "trusted_files": [
                {"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.trusted_files
            ],
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "mrenclave": self.mrenclave.hex(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object], *, source: str = "manifest") -> EnclaveManifest:
        try:
            if data["format"] != MANIFEST_FORMAT:
                raise ValueError(f"unknown format {data['format']!r}")
            files = data["trusted_files"]
            env = data["env"]
            argv = data["argv"]
            passthrough = data["passthrough_env"]
            if not (
                isinstance(files, list)
                and isinstance(env, dict)
                and isinstance(argv, list)
                and isinstance(passthrough, list)
            ):
                raise ValueError("argv, env, passthrough_env and trusted_files have the wrong types")
            manifest = cls(
                name=str(data["name"]),
                entrypoint=str(data["entrypoint"]),
                argv=tuple(str(a) for a in argv),
                env=tuple(sorted((str(k), str(v)) for k, v in env.items())),
                passthrough_env=tuple(str(p) for p in passthrough),
                trusted_files=tuple(
                    TrustedFile(str(f["path"]), str(f["sha256"]), int(f["size"])) for f in files
                ),
                isv_prod_id=int(str(data["isv_prod_id"])),
                isv_svn=int(str(data["isv_svn"])),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise EnclaveError(f"{source} is not a valid enclave manifest: {error}") from None
        recorded = data.get("mrenclave")
        if recorded is not None and recorded != manifest.mrenclave.hex():
            raise EnclaveError(f"{source} records MRENCLAVE {recorded} but its content measures differently")
        return manifest


def _walk(root: str, excluded: frozenset[str]) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files under ``root`` in a stable order, without following folder symlinks."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except (NotADirectoryError, FileNotFoundError):
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if entry.name in EXCLUDED_DIRS or entry.path in excluded:
                continue
            yield from _walk(entry.path, excluded)
        elif not entry.name.endswith(EXCLUDED_SUFFIXES):
            try:
                info = os.stat(entry.path)  # follows file symlinks: the content is what is trusted
            except OSError:
                continue  # a dangling symlink names no content
            if stat_module.S_ISREG(info.st_mode):
                yield entry.path, info


def trusted_paths(spec: ImageSpec) -> Iterator[tuple[str, os.stat_result]]:
    excluded = frozenset(os.path.abspath(p) for p in spec.excluded)
    seen: set[str] = set()
    for location in spec.trusted:
        location = os.path.abspath(location)
        try:
            info = os.stat(location)
        except OSError:
            raise EnclaveError(f"trusted location {location} does not exist") from None
        found = [(location, info)] if stat_module.S_ISREG(info.st_mode) else _walk(location, excluded)
        for path, file_info in found:
            if path not in seen:
                seen.add(path)
                yield path, file_info


def expand(spec: ImageSpec, cache: HashCache, progress: ProgressCallback | None = None) -> EnclaveManifest:
    """Hash every trusted file of ``spec`` into a manifest."""
    files: list[TrustedFile] = []
    for path, info in trusted_paths(spec):
        try:
            digest = cache.digest(path, info)
        except OSError as error:
            raise EnclaveError(f"cannot read trusted file {path}: {error.strerror}") from None
        files.append(TrustedFile(path, digest, info.st_size))
        if progress is not None and len(files) % 256 == 0:
            progress(len(files), cache.hashed_bytes)
    if progress is not None:
        progress(len(files), cache.hashed_bytes)
    files.sort(key=lambda f: f.path)
    return EnclaveManifest(
        name=spec.name,
        entrypoint=spec.entrypoint,
        argv=spec.argv,
        env=tuple(sorted(spec.env.items())),
        passthrough_env=tuple(sorted(spec.passthrough_env)),
        trusted_files=tuple(files),
        isv_prod_id=spec.isv_prod_id,
        isv_svn=spec.isv_svn,
    )


def check_trusted_files(manifest: EnclaveManifest, cache: HashCache) -> None:
    """Refuse to run when any trusted file is missing or differs from its measured hash."""
    found = cache.digests([f.path for f in manifest.trusted_files])
    for trusted in manifest.trusted_files:
        digest = found[trusted.path]
        if digest is None:
            raise EnclaveError(
                f"trusted file {trusted.path} is missing; the enclave image no longer matches this machine",
                hint="rebuild the image with `teelab enclave build` (its MRENCLAVE will change)",
            )
        if digest != trusted.sha256:
            raise EnclaveError(
                f"trusted file {trusted.path} changed since the enclave image was built "
                f"(sha256 {digest[:16]}…, measured {trusted.sha256[:16]}…)",
                hint="rebuild the image with `teelab enclave build` and pin the new MRENCLAVE",
            )
