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

from teelab.enclave_runtime.backend import BackendStatus, EnclaveBackend, EnclaveProcess
from teelab.enclave_runtime.controller import check_controller, sgx_config_id
from teelab.enclave_runtime.hashcache import HashCache
from teelab.enclave_runtime.image import EnclaveImage, build_image, default_image_dir
from teelab.enclave_runtime.launching import prepare_local_launch, refuse_unlisted_inputs, start_process
from teelab.enclave_runtime.manifest import (
    ImageSpec,
    ProgressCallback,
    check_trusted_files,
)
from teelab.enclave_runtime.sim.identity import IDENTITY_FD_ENV, SimIdentity
from teelab.enclave_runtime.sim.platform import COLLATERAL_CACHE, SimPlatform, default_path
from teelab.errors import EnclaveError
from teelab.timeutil import utcnow


class SimBackend(EnclaveBackend):
    name = "sim"
    simulated = True

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

    def build(
        self,
        spec: ImageSpec,
        *,
        out: Path | None = None,
        signing_key: Path | None = None,
        debug: bool = False,
        progress: ProgressCallback | None = None,
    ) -> EnclaveImage:
        return build_image(
            spec,
            out=out or default_image_dir(spec.name, self.name),
            backend=self.name,
            signing_key=signing_key,
            debug=debug,
            progress=progress,
        )

    def load_image(self, name: str, path: Path | None = None) -> EnclaveImage:
        return EnclaveImage.load(path or default_image_dir(name, self.name), self.name)

    def launch(
        self,
        image: EnclaveImage,
        *,
        inputs: Mapping[str, str],
        controller: bytes | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> EnclaveProcess:
        controller = check_controller(controller)
        manifest = image.manifest
        refuse_unlisted_inputs(manifest, inputs)
        if not any(f.path == manifest.entrypoint for f in manifest.trusted_files):
            raise EnclaveError(f"the entrypoint {manifest.entrypoint} is not a trusted file of the image")
        platform = self.platform
        launch = prepare_local_launch(image, inputs, backend=self.name, scratch_prefix="teelab-tee-")
        # Like a LibOS, the loader checks the trusted files while the enclave loads. The enclave receives
        # its identity — without which it can produce no evidence — only after every file matched.
        identity_read, identity_write = os.pipe()
        launch.env[IDENTITY_FD_ENV] = str(identity_read)
        try:
            popen = start_process(
                launch.argv,
                executable=manifest.entrypoint,
                env=launch.env,
                cwd=launch.scratch,
                stdout=stdout,
                stderr=stderr,
                pass_fds=(identity_read,),
            )
        except EnclaveError:
            os.close(identity_write)
            launch.discard()
            raise
        finally:
            os.close(identity_read)
        process = EnclaveProcess(popen, launch.scratch)
        try:
            cache = self.hash_cache()
            check_trusted_files(manifest, cache)
            cache.flush()
        except BaseException:
            os.close(identity_write)
            process.kill()
            process.wait()
            process.cleanup()
            raise
        identity = SimIdentity(
            platform=platform.path,
            mrenclave=image.mrenclave,
            mrsigner=image.mrsigner,
            isv_prod_id=image.sigstruct.isv_prod_id,
            isv_svn=image.sigstruct.isv_svn,
            attributes=image.sigstruct.attributes,
            config_id=sgx_config_id(controller),
        )
        with os.fdopen(identity_write, "w") as pipe:
            try:
                pipe.write(identity.to_env())
            except BrokenPipeError:
                pass  # the process already exited; its exit status tells the caller
        return process

    def collateral_path(self, at: datetime | None = None) -> Path:
        """The platform's collateral bundle, re-issued when it has expired (the sim plays Intel's PCS)."""
        self.platform.collateral(at or utcnow())
        return self.platform_path / COLLATERAL_CACHE
