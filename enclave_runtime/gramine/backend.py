"""The host side of the Gramine backend: build, sign, measure and launch the kernel image under Gramine.

``build`` hashes the image's files (as every backend does), renders the manifest template, runs
``gramine-manifest`` and ``gramine-sgx-sign`` with the author's key, and reads MRENCLAVE and MRSIGNER from the
SIGSTRUCT Gramine wrote: the values a quote from this enclave will carry, and the ones to pin. Without
Gramine the template is still rendered (to read or to build elsewhere) and the build stops with what to install.

``launch`` runs ``gramine-sgx <name>`` from the image folder. ``gramine-direct`` (no SGX, no attestation) only
runs when the backend was created with ``insecure_direct=True`` (the ``gramine-direct`` backend name), and says
so loudly on every launch: the kernel starts, but it can produce no evidence, so the gateway refuses it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from teelab.enclave_runtime.backend import (
    BackendStatus,
    BuildRequest,
    EnclaveBackend,
    Measurement,
    PccsCollateral,
)
from teelab.enclave_runtime.controller import ControllerBinding, refuse_other_controller
from teelab.enclave_runtime.gramine.sigstruct import SgxSigstruct, load_author_key, parse_sigstruct
from teelab.enclave_runtime.gramine.template import STATE_FOLDER, GramineOptions, render_template
from teelab.enclave_runtime.gramine.tools import (
    BUILD_TOOLS,
    DIRECT_LAUNCHER,
    INSTALL_HINT,
    SGX_LAUNCHER,
    GramineTools,
)
from teelab.enclave_runtime.hashcache import HashCache
from teelab.enclave_runtime.image import IMAGE_FILE, EnclaveImage, read_image_file
from teelab.enclave_runtime.images import ask_interpreter
from teelab.enclave_runtime.launching import LaunchPlan, passthrough, throwaway_signing_key
from teelab.enclave_runtime.manifest import (
    EnclaveManifest,
    ImageSpec,
    ProgressCallback,
    TrustedFile,
    expand,
)
from teelab.enclave_runtime.signing import sign
from teelab.errors import EnclaveError
from teelab.files import replace_atomically

DIRECT_WARNING = (
    "teelab: WARNING: gramine-direct runs the kernel as an ordinary process: no SGX enclave, no memory "
    "protection, no attestation. The host sees everything. The gateway will refuse this kernel."
)

# Host data folders the kernel's libraries open (Gramine's file policy refuses anything not listed).
SYSTEM_DATA_DIRS = ("/usr/share/zoneinfo",)

_INTERPRETER_PROBE = r"""
import json, os, sys, sysconfig
libdir = sysconfig.get_config_var("LIBDIR") or ""
soname = sysconfig.get_config_var("INSTSONAME") or ""
shared = bool(sysconfig.get_config_var("Py_ENABLE_SHARED"))
library = os.path.realpath(os.path.join(libdir, soname)) if shared and libdir and soname else ""
print(json.dumps({"real": os.path.realpath(sys.executable),
                  "multiarch": sysconfig.get_config_var("MULTIARCH") or "",
                  "libpython": library if library and os.path.exists(library) else ""}))
"""


@dataclass(frozen=True)
class GramineImage(EnclaveImage):
    """A signed Gramine image: its identity is the SIGSTRUCT's, not teelab's own manifest hash."""

    sgx: SgxSigstruct
    options: GramineOptions

    @property
    def mrenclave(self) -> bytes:
        return self.sgx.mrenclave

    @property
    def mrsigner(self) -> bytes:
        return self.sgx.mrsigner

    @property
    def app(self) -> str:
        return self.manifest.name

    def file(self, suffix: str) -> Path:
        return self.path / f"{self.app}{suffix}"


def gramine_options(spec: ImageSpec, cache: HashCache, *, debug: bool) -> GramineOptions:
    """The enclave shape for ``spec``'s interpreter: its real path, libdirs, and a libpython from elsewhere."""
    found: dict[str, str] = ask_interpreter(spec.entrypoint, _INTERPRETER_PROBE)
    arch = found.get("multiarch") or "x86_64-linux-gnu"
    lib_dirs = (f"/lib/{arch}", f"/usr/lib/{arch}")
    native: list[TrustedFile] = []
    library = found.get("libpython", "")
    if library and not any(library.startswith(d + "/") for d in lib_dirs):
        info = os.stat(library)
        native.append(TrustedFile(library, cache.digest(library, info), info.st_size))
    data_dirs = tuple(d for d in SYSTEM_DATA_DIRS if os.path.isdir(d))
    return GramineOptions(
        debug=debug,
        lib_dirs=lib_dirs,
        data_dirs=data_dirs,
        native_files=tuple(native),
        real_entrypoint=found["real"],
    )


def _options_json(options: GramineOptions) -> dict[str, object]:
    return {
        "debug": options.debug,
        "enclave_size": options.enclave_size,
        "max_threads": options.max_threads,
        "stack_size": options.stack_size,
        "lib_dirs": list(options.lib_dirs),
        "data_dirs": list(options.data_dirs),
        "native_files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in options.native_files],
        "real_entrypoint": options.real_entrypoint,
    }


def _options_from_json(data: Mapping[str, object]) -> GramineOptions:
    native = data.get("native_files") or []
    lib_dirs = data.get("lib_dirs") or []
    data_dirs = data.get("data_dirs") or []
    if not isinstance(native, list) or not isinstance(lib_dirs, list) or not isinstance(data_dirs, list):
        raise ValueError("native_files, lib_dirs and data_dirs must be lists")
    real = data.get("real_entrypoint")
    return GramineOptions(
        debug=bool(data["debug"]),
        enclave_size=str(data["enclave_size"]),
        max_threads=int(str(data["max_threads"])),
        stack_size=str(data["stack_size"]),
        lib_dirs=tuple(str(d) for d in lib_dirs),
        data_dirs=tuple(str(d) for d in data_dirs),
        native_files=tuple(TrustedFile(str(f["path"]), str(f["sha256"]), int(f["size"])) for f in native),
        real_entrypoint=None if real is None else str(real),
    )


class GramineBackend(PccsCollateral, EnclaveBackend):
    name = "gramine"
    # Upstream Gramine (v1.9) lets the launcher set no CONFIGID (its SECS keeps KSS off), so the measured
    # manifest pins the controller (docs/backends.md).
    binding = ControllerBinding.MEASUREMENT

    def __init__(self, *, tools: GramineTools | None = None, insecure_direct: bool = False) -> None:
        self.tools = tools or GramineTools()
        self.insecure_direct = insecure_direct

    @classmethod
    def status(cls) -> BackendStatus:
        from teelab.enclave_runtime.doctor import HostView, gramine_status

        return gramine_status(HostView())

    # -- build ----------------------------------------------------------------------------------------

    def render(
        self, spec: ImageSpec, out: Path, *, debug: bool, progress: ProgressCallback | None = None
    ) -> tuple[EnclaveManifest, GramineOptions, Path]:
        """Hash the image and write ``<name>.manifest.template`` into ``out`` (no Gramine needed)."""
        with HashCache() as cache:
            manifest = expand(spec, cache, progress)
            options = gramine_options(spec, cache, debug=debug)
        text = render_template(manifest, options)
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        template = out / f"{spec.name}.manifest.template"
        replace_atomically(template, text.encode(), mode=0o644)
        return manifest, options, template

    def build_into(self, request: BuildRequest) -> GramineImage:
        signing_key, out = request.signing_key, request.out
        key = load_author_key(signing_key, backend=self.name)
        assert signing_key is not None  # load_author_key refuses None
        manifest, options, template = self.render(
            request.spec, out, debug=request.debug, progress=request.progress
        )
        missing = self.tools.missing(BUILD_TOOLS)
        if missing:
            raise EnclaveError(
                f"rendered the Gramine manifest template {template}, but cannot sign it: "
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on PATH",
                hint=INSTALL_HINT,
            )
        return self._sign(manifest, options, template, out, key, signing_key)

    def _sign(
        self,
        manifest: EnclaveManifest,
        options: GramineOptions,
        template: Path,
        out: Path,
        key: rsa.RSAPrivateKey,
        key_path: Path,
    ) -> GramineImage:
        name = manifest.name
        self.tools.render_manifest(template, out / f"{name}.manifest")
        self.tools.sign(out / f"{name}.manifest", out / f"{name}.manifest.sgx", out / f"{name}.sig", key_path)
        sgx = self._read_sig(out / f"{name}.sig", manifest, options)
        # teelab's own signature structure over the SGX identity, with the same author key, so everything that
        # reads an image's sigstruct (ids, debug flag, MRSIGNER) sees Gramine's values and can verify them.
        sigstruct = sign(
            key, mrenclave=sgx.mrenclave, isv_prod_id=sgx.isv_prod_id, isv_svn=sgx.isv_svn, debug=sgx.debug
        )
        document = {
            "manifest": manifest.to_json(),
            "sigstruct": sigstruct.to_json(),
            "gramine": {"options": _options_json(options), "sgx_sigstruct": sgx.to_json()},
        }
        replace_atomically(out / IMAGE_FILE, json.dumps(document, indent=1).encode(), mode=0o644)
        return GramineImage(out, self.name, manifest, sigstruct, sgx, options)

    @staticmethod
    def _read_sig(path: Path, manifest: EnclaveManifest, options: GramineOptions) -> SgxSigstruct:
        try:
            sgx = parse_sigstruct(path.read_bytes(), source=str(path))
        except FileNotFoundError:
            raise EnclaveError(f"gramine-sgx-sign wrote no signature file {path}") from None
        if (sgx.isv_prod_id, sgx.isv_svn) != (manifest.isv_prod_id, manifest.isv_svn):
            raise EnclaveError(
                f"{path} signs ISV product/SVN {sgx.isv_prod_id}/{sgx.isv_svn}, not the image's"
            )
        if sgx.debug != options.debug:
            raise EnclaveError(
                f"{path} has debug={sgx.debug}, but the manifest asked for debug={options.debug}"
            )
        return sgx

    def measure(self, spec: ImageSpec, *, progress: ProgressCallback | None = None) -> Measurement:
        """MRENCLAVE of ``spec`` under this host's Gramine, without the author's key.

        MRENCLAVE covers Gramine's own loader (libpal), so only Gramine can compute it; the signing key only
        decides MRSIGNER. A throwaway key signs a scratch copy, which is then deleted.
        """
        missing = self.tools.missing(BUILD_TOOLS)
        if missing:
            raise EnclaveError(
                f"measuring a Gramine image needs Gramine: {', '.join(missing)} not on PATH "
                "(MRENCLAVE covers Gramine's own loader, so no other tool can compute it)",
                hint=INSTALL_HINT,
            )
        with tempfile.TemporaryDirectory(prefix="teelab-gramine-measure-") as scratch:
            folder = Path(scratch)
            throwaway, key_path = throwaway_signing_key(folder)
            manifest, options, template = self.render(spec, folder / "image", debug=False, progress=progress)
            image = self._sign(manifest, options, template, folder / "image", throwaway, key_path)
            return Measurement(image.mrenclave, manifest)

    def open_image(self, path: Path) -> GramineImage:
        manifest, sigstruct, options = read_image_file(
            path,
            kind="Gramine",
            build_hint="`teelab enclave build --backend gramine`",
            section=lambda document: _options_from_json(document["gramine"]["options"]),
        )
        sgx = self._read_sig(path / f"{manifest.name}.sig", manifest, options)
        if sigstruct.mrenclave != sgx.mrenclave or sigstruct.mrsigner != sgx.mrsigner:
            raise EnclaveError(
                f"the Gramine image at {path} is inconsistent: {manifest.name}.sig is not the signature it "
                "recorded",
                hint="rebuild it with `teelab enclave build --backend gramine`",
            )
        return GramineImage(path, self.name, manifest, sigstruct, sgx, options)

    # -- launch ---------------------------------------------------------------------------------------

    def check_image(self, image: EnclaveImage, controller: bytes | None) -> None:
        refuse_other_controller(image.manifest, controller, backend=self.name)
        if not isinstance(image, GramineImage):
            raise EnclaveError(f"{image.path} is a {image.backend} image, not a Gramine one")
        if not image.file(".manifest.sgx").exists():
            raise EnclaveError(f"{image.file('.manifest.sgx')} is missing", hint="rebuild the image")
        # Gramine refuses a changed trusted file when it is opened; check_files names it up front.

    def plan_launch(
        self, image: EnclaveImage, inputs: Mapping[str, str], controller: bytes | None
    ) -> LaunchPlan:
        assert isinstance(image, GramineImage)  # check_image
        launcher = SGX_LAUNCHER
        if self.insecure_direct:
            launcher = DIRECT_LAUNCHER
            print(DIRECT_WARNING, file=sys.stderr, flush=True)
        program = self.tools.find(launcher)
        (image.path / STATE_FOLDER).mkdir(mode=0o700, exist_ok=True)
        # The loader gets PATH to find its helpers; the enclave itself sees only the manifest's environment
        # plus the passthrough inputs.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **passthrough(image.manifest, inputs)}
        return LaunchPlan([program, image.app], env, image.path)
