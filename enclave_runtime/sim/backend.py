"""The host side of the simulated backend.

It builds and measures images exactly as a LibOS backend would and launches them as ordinary processes:
the same protocol, formats and checks as on hardware, and **no isolation** — the host can read the process's
memory and files. Every surface that shows a simulated result says so.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from teelab.enclave_runtime.backend import (
    BackendStatus,
    BuildRequest,
    EnclaveBackend,
    EnclaveProcess,
    Measurement,
    RootPin,
)
from teelab.enclave_runtime.controller import ControllerBinding, sgx_config_id
from teelab.enclave_runtime.hashcache import HashCache
from teelab.enclave_runtime.image import EnclaveImage, build_image
from teelab.enclave_runtime.launching import LaunchPlan, local_launch_plan
from teelab.enclave_runtime.manifest import (
    ImageSpec,
    ProgressCallback,
    check_trusted_files,
    expand,
)
from teelab.enclave_runtime.sim.identity import IDENTITY_FD_ENV, SimIdentity
from teelab.enclave_runtime.sim.platform import (
    COLLATERAL_CACHE,
    SimPlatform,
    default_path,
    known_root_fingerprints,
)
from teelab.errors import EnclaveError
from teelab.timeutil import utcnow


class SimBackend(EnclaveBackend):
    name = "sim"
    simulated = True
    binding = ControllerBinding.CONFIGID

    def __init__(self, platform_path: Path | None = None) -> None:
        self.platform_path = platform_path or default_path()
        self._hash_cache: HashCache | None = None

    def hash_cache(self) -> HashCache:
        """One cache for the backend's lifetime: a server launching many kernels loads it once."""
        if self._hash_cache is None:
            self._hash_cache = HashCache()
        return self._hash_cache

    @property
    def platform(self) -> SimPlatform:
        return SimPlatform.open(self.platform_path)

    @classmethod
    def status(cls) -> BackendStatus:
        path = default_path()
        state = "created" if (path / "platform.json").exists() else "created on first use"
        return BackendStatus(
            name=cls.name,
            available=True,
            summary="simulated SGX platform — the real protocol and formats, no isolation (not confidential)",
            found=[f"Python {sys.version.split()[0]}", f"simulated platform at {path} ({state})"],
        )

    def build_into(self, request: BuildRequest) -> EnclaveImage:
        return build_image(
            request.spec,
            out=request.out,
            backend=self.name,
            signing_key=request.signing_key,
            debug=request.debug,
            progress=request.progress,
        )

    def measure(self, spec: ImageSpec, *, progress: ProgressCallback | None = None) -> Measurement:
        """MRENCLAVE of a simulated image is the hash of its expanded manifest: no signer, no loader."""
        with HashCache() as cache:
            manifest = expand(spec, cache, progress)
        return Measurement(manifest.mrenclave, manifest)

    def describe(self) -> str:
        return f"simulated platform at {self.platform_path}"

    @classmethod
    def known_root_pins(cls) -> tuple[RootPin, ...]:
        """The default simulated platform's root, if it exists (never creates one)."""
        return tuple(RootPin(fp, label, simulated=True) for fp, label in known_root_fingerprints().items())

    def root_pins(self) -> tuple[RootPin, ...]:
        """This backend's platform root (created on first use), pinned as a *simulated* root."""
        label = f"teelab simulated platform ({self.platform_path})"
        return (RootPin(self.platform.root_fingerprint, label, simulated=True),)

    def open_image(self, path: Path) -> EnclaveImage:
        return EnclaveImage.load(path, self.name)

    def check_image(self, image: EnclaveImage, controller: bytes | None) -> None:
        manifest = image.manifest
        if not any(f.path == manifest.entrypoint for f in manifest.trusted_files):
            raise EnclaveError(f"the entrypoint {manifest.entrypoint} is not a trusted file of the image")

    def check_files(self, image: EnclaveImage) -> None:
        """Nothing before the start: like a LibOS, the loader checks the trusted files while the enclave
        loads (:meth:`started`), and the enclave gets its identity only once every file matched."""

    def plan_launch(
        self, image: EnclaveImage, inputs: Mapping[str, str], controller: bytes | None
    ) -> LaunchPlan:
        plan = local_launch_plan(image, inputs, backend=self.name, scratch_prefix="teelab-tee-")
        identity_read, identity_write = os.pipe()
        plan.env[IDENTITY_FD_ENV] = str(identity_read)
        plan.pass_fds, plan.keep_fds = (identity_read,), (identity_write,)
        return plan

    def started(
        self, process: EnclaveProcess, image: EnclaveImage, plan: LaunchPlan, controller: bytes | None
    ) -> None:
        (identity_write,) = plan.keep_fds
        try:
            platform = self.platform
            cache = self.hash_cache()
            check_trusted_files(image.manifest, cache)
            cache.flush()
        except BaseException:
            os.close(identity_write)
            raise
        # On hardware the launcher sets CONFIGID in the enclave's SECS and the CPU reports it; here the loader
        # hands it over with the identity, and the runtime reads it once at start-up (see sim.identity).
        identity = SimIdentity(
            platform=platform.path,
            mrenclave=image.mrenclave,
            mrsigner=image.mrsigner,
            isv_prod_id=image.sigstruct.isv_prod_id,
            isv_svn=image.sigstruct.isv_svn,
            attributes=image.sigstruct.attributes,
            config_id=sgx_config_id(controller),
        )
        try:
            with os.fdopen(identity_write, "w") as pipe:
                pipe.write(identity.to_env())  # buffered: a process already gone breaks the pipe at close
        except BrokenPipeError:
            pass  # the process already exited; its exit status tells the caller

    def collateral_path(self, at: datetime | None = None) -> Path:
        """The platform's collateral bundle, re-issued when it has expired (the sim plays Intel's PCS)."""
        self.platform.collateral(at or utcnow())
        return self.platform_path / COLLATERAL_CACHE
