"""Built enclave images: an expanded manifest plus its signature structure.

``<folder>/image.json`` holds the measured manifest and the author's signature over its MRENCLAVE in one
file, replaced atomically, so a reader never sees a manifest with another image's signature. Backends may
add their own files beside it (Gramine's ``.manifest.sgx`` and ``.sig``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from teelab.enclave_runtime.hashcache import HashCache
from teelab.enclave_runtime.manifest import EnclaveManifest, ImageSpec, ProgressCallback, expand
from teelab.enclave_runtime.signing import Sigstruct, load_or_create_key, sign
from teelab.errors import EnclaveError
from teelab.files import replace_atomically
from teelab.paths import data_dir

IMAGE_FILE = "image.json"
T = TypeVar("T")


_LOADED: dict[tuple[str, str, int, int, int, int], EnclaveImage] = {}


def environment_key(prefix: str | None = None) -> str:
    """The folder name of one Python environment's images: its folder name and the hash of its real path.

    An image measures one environment's interpreter and packages, and the kernel policy installed from that
    environment pins it; an image folder shared by two environments would let one environment's build replace
    the image the other's policy pins (issue 11 item 7). The hash keeps environments with the same folder
    name apart; the name keeps the folder readable.
    """
    real = os.path.realpath(prefix or sys.prefix)
    return f"{os.path.basename(real) or 'root'}-{hashlib.sha256(real.encode()).hexdigest()[:12]}"


def default_image_dir(name: str, backend: str, *, prefix: str | None = None) -> Path:
    """``<data dir>/images/<backend>/<environment>/<name>``: the image of one backend, built from (and for) the
    Python environment ``prefix`` (default: the running one, ``sys.prefix``)."""
    return data_dir() / "images" / backend / environment_key(prefix) / name


@dataclass(frozen=True)
class EnclaveImage:
    path: Path
    backend: str
    manifest: EnclaveManifest
    sigstruct: Sigstruct

    @property
    def mrenclave(self) -> bytes:
        return self.manifest.mrenclave

    @property
    def mrsigner(self) -> bytes:
        return self.sigstruct.mrsigner

    @classmethod
    def load(cls, path: Path, backend: str) -> EnclaveImage:
        """Load and check an image; a process that launches many kernels parses an unchanged file once."""
        image_file = path / IMAGE_FILE
        try:
            info = image_file.stat()
        except OSError:
            info = None
        key = (
            (
                str(image_file.resolve()),
                backend,
                info.st_mtime_ns,
                info.st_ctime_ns,
                info.st_size,
                info.st_ino,
            )
            if info
            else None
        )
        if key is not None and (cached := _LOADED.get(key)) is not None:
            return cached
        image = cls._parse(path, backend)
        if key is not None:
            _LOADED.clear()  # a new build replaces the old one; keep just the latest per process
            _LOADED[key] = image
        return image

    @classmethod
    def _parse(cls, path: Path, backend: str) -> EnclaveImage:
        manifest, sigstruct, _ = read_image_file(
            path, kind="enclave", build_hint="`teelab enclave build`", section=lambda document: None
        )
        if sigstruct.mrenclave != manifest.mrenclave:
            raise EnclaveError(
                f"the enclave image at {path} is inconsistent: its signature is over another MRENCLAVE",
                hint="rebuild it with `teelab enclave build`",
            )
        return cls(path, backend, manifest, sigstruct)


def read_image_file(
    path: Path,
    *,
    kind: str,
    build_hint: str,
    section: Callable[[dict[str, Any]], T],
) -> tuple[EnclaveManifest, Sigstruct, T]:
    """The manifest, the signature and ``section(document)`` (a backend's own part) of ``path/image.json``;
    a missing or damaged file is an EnclaveError naming it (``kind``: "Gramine", "Occlum", "enclave")."""
    image_file = path / IMAGE_FILE
    try:
        document = json.loads(image_file.read_text())
        manifest = EnclaveManifest.from_json(document["manifest"], source=str(image_file))
        sigstruct = Sigstruct.from_json(document["sigstruct"], source=str(image_file))
        extra = section(document)
    except FileNotFoundError:
        raise EnclaveError(f"no {kind} image at {path}", hint=f"build it with {build_hint}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise EnclaveError(f"the {kind} image file {image_file} is damaged: {error}") from None
    return manifest, sigstruct, extra


def build_image(
    spec: ImageSpec,
    *,
    out: Path,
    backend: str,
    signing_key: Path | None = None,
    debug: bool = False,
    progress: ProgressCallback | None = None,
    cache: HashCache | None = None,
) -> EnclaveImage:
    key = load_or_create_key(signing_key)
    if cache is None:
        with HashCache() as own_cache:
            manifest = expand(spec, own_cache, progress)
    else:
        manifest = expand(spec, cache, progress)
    sigstruct = sign(
        key,
        mrenclave=manifest.mrenclave,
        isv_prod_id=manifest.isv_prod_id,
        isv_svn=manifest.isv_svn,
        debug=debug,
    )
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    document = {"manifest": manifest.to_json(), "sigstruct": sigstruct.to_json()}
    replace_atomically(out / IMAGE_FILE, json.dumps(document, indent=1).encode(), mode=0o644)
    return EnclaveImage(out, backend, manifest, sigstruct)
