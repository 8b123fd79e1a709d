"""The host side of the Occlum backend: an Occlum instance built, signed, measured and run.

``build``: ``occlum new`` a fresh instance, copy the Python runtime in with ``copy_bom`` (our generated file
list), write the measured launcher and ``Occlum.json``, ``occlum build --sign-key`` with the author's key (the
instance's default ``Enclave.pem`` is a public test key and is refused), then ``occlum print mrenclave`` and
``occlum print mrsigner``. ``launch``: ``occlum run /teelab/bin/<name>`` from the instance, with only the
passthrough variables in the environment.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from teelab.enclave_runtime.backend import (
    BackendStatus,
    BuildRequest,
    EnclaveBackend,
    Measurement,
    PccsCollateral,
)
from teelab.enclave_runtime.controller import ControllerBinding, refuse_other_controller, sgx_config_id
from teelab.enclave_runtime.gramine.sigstruct import load_author_key
from teelab.enclave_runtime.hashcache import HashCache
from teelab.enclave_runtime.image import IMAGE_FILE, EnclaveImage, read_image_file
from teelab.enclave_runtime.images import ask_interpreter
from teelab.enclave_runtime.launching import LaunchPlan, passthrough, throwaway_signing_key
from teelab.enclave_runtime.manifest import EnclaveManifest, ImageSpec, ProgressCallback, expand
from teelab.enclave_runtime.occlum.config import (
    TEE_STATE_PATH,
    OcclumOptions,
    copy_bom,
    launcher_name,
    launcher_script,
    occlum_json,
)
from teelab.enclave_runtime.signing import mrsigner_of, sign
from teelab.errors import EnclaveError, UsageError
from teelab.files import replace_atomically

INSTALL_HINT = (
    "install Occlum ≥ 0.30 (its Docker image occlum/occlum, or the occlum packages from Occlum's apt "
    "repository), then run `teelab doctor`"
)
DEFAULT_OCCLUM_PREFIX = Path("/opt/occlum")
_HEX32 = re.compile(r"\b([0-9a-fA-F]{64})\b")
_SYS_PATH_PROBE = "import json, os, sys; print(json.dumps([os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)]))"
Which = Callable[[str], str | None]


@dataclass(frozen=True)
class OcclumImage(EnclaveImage):
    """A built Occlum instance: its identity is what ``occlum print`` reports."""

    occlum_mrenclave: bytes
    occlum_mrsigner: bytes
    kss: bool = (
        False  # built with KSS: the launcher sets CONFIGID (images from before KSS: measurement binding)
    )

    @property
    def mrenclave(self) -> bytes:
        return self.occlum_mrenclave

    @property
    def mrsigner(self) -> bytes:
        return self.occlum_mrsigner

    @property
    def instance(self) -> Path:
        return self.path / "instance"


def default_test_keys(prefix: Path = DEFAULT_OCCLUM_PREFIX) -> list[Path]:
    return [prefix / "etc" / "template" / "Enclave.pem"]


def _public_der(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class OcclumBackend(PccsCollateral, EnclaveBackend):
    name = "occlum"
    # `occlum run --config-id <base64>` sets CONFIGID of an instance built with metadata.enable_kss (docs/backends.md).
    binding = ControllerBinding.CONFIGID

    def __init__(self, *, which: Which = shutil.which, occlum_prefix: Path = DEFAULT_OCCLUM_PREFIX) -> None:
        self.which = which
        self.prefix = occlum_prefix

    @classmethod
    def status(cls) -> BackendStatus:
        from teelab.enclave_runtime.doctor import HostView, occlum_status

        return occlum_status(HostView())

    def _tool(self, name: str) -> str:
        location = self.which(name)
        if location is None:
            raise EnclaveError(f"{name} is not on PATH: Occlum is not installed here", hint=INSTALL_HINT)
        return location

    def _run(self, command: Sequence[str], *, cwd: Path) -> str:
        try:
            done = subprocess.run(
                [self._tool(command[0]), *command[1:]],
                cwd=cwd,
                capture_output=True,
                text=True,
                check=False,
                timeout=3600,
            )
        except OSError as error:
            raise EnclaveError(f"cannot run {command[0]}: {error.strerror}") from None
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip()[-2000:]
            raise EnclaveError(
                f"`{' '.join(command[:3])}` failed (exit {done.returncode}): {said or 'no output'}"
            )
        return done.stdout

    def refuse_test_key(self, key: rsa.RSAPrivateKey, key_path: Path, *, also: Sequence[Path] = ()) -> None:
        """Occlum's ``Enclave.pem`` is published: anyone can sign with it, so MRSIGNER would prove nothing."""
        mine = _public_der(key)
        for known in [*default_test_keys(self.prefix), *also]:
            try:
                other = serialization.load_pem_private_key(known.read_bytes(), password=None)
            except (OSError, ValueError, TypeError):
                continue
            if isinstance(other, rsa.RSAPrivateKey) and _public_der(other) == mine:
                raise UsageError(
                    f"{key_path} is Occlum's public test key ({known}); sign with your own key",
                    hint="create one with `openssl genrsa -3 -out author.pem 3072` and pass --signing-key",
                )

    def prepare(
        self,
        spec: ImageSpec,
        out: Path,
        *,
        options: OcclumOptions,
        base: Mapping[str, Any] | None = None,
        progress: ProgressCallback | None = None,
    ) -> tuple[EnclaveManifest, dict[str, Any]]:
        """Hash the image and write the instance's inputs into ``out`` (no Occlum needed)."""
        with HashCache() as cache:
            manifest = expand(spec, cache, progress)
        interpreter = os.path.realpath(spec.entrypoint)
        sys_path = self._sys_path(spec.entrypoint)
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        paths = [f.path for f in manifest.trusted_files if f.path != spec.entrypoint]
        replace_atomically(
            out / "teelab-image.yaml", copy_bom(paths, interpreter=interpreter).encode(), 0o644
        )
        launcher = launcher_script(manifest, interpreter=interpreter, sys_path=sys_path)
        replace_atomically(out / "launcher.py", launcher.encode(), 0o755)
        config = occlum_json(manifest, options, base)
        replace_atomically(out / "Occlum.json", (json.dumps(config, indent=2) + "\n").encode(), 0o644)
        return manifest, config

    @staticmethod
    def _sys_path(python: str) -> list[str]:
        return [str(p) for p in ask_interpreter(python, _SYS_PATH_PROBE)]

    def build_into(self, request: BuildRequest) -> OcclumImage:
        spec, out, signing_key, debug = request.spec, request.out, request.signing_key, request.debug
        key = load_author_key(signing_key, backend=self.name)
        assert signing_key is not None
        self.refuse_test_key(key, signing_key)
        options = OcclumOptions(debug=debug)
        manifest, _ = self.prepare(spec, out, options=options, progress=request.progress)
        missing = [tool for tool in ("occlum", "copy_bom") if self.which(tool) is None]
        if missing:
            raise EnclaveError(
                f"wrote the Occlum inputs (Occlum.json, copy_bom list, launcher) to {out}, but cannot build: "
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on PATH",
                hint=INSTALL_HINT,
            )
        instance = out / "instance"
        shutil.rmtree(instance, ignore_errors=True)  # a fresh instance: nothing stale gets measured
        self._run(["occlum", "new", str(instance)], cwd=out)
        self.refuse_test_key(key, signing_key, also=[instance / "Enclave.pem"])
        base = json.loads((instance / "Occlum.json").read_text())
        shutil.rmtree(instance / "image", ignore_errors=True)
        self._run(
            [
                "copy_bom",
                "-f",
                str(out / "teelab-image.yaml"),
                "--root",
                "image",
                "--include-dir",
                str(self.prefix / "etc" / "template"),
            ],
            cwd=instance,
        )
        launcher = instance / "image" / launcher_name(manifest).lstrip("/")
        launcher.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "launcher.py", launcher)
        launcher.chmod(0o755)
        (instance / "image" / TEE_STATE_PATH.lstrip("/")).mkdir(parents=True, exist_ok=True)
        config = occlum_json(manifest, options, base)
        replace_atomically(instance / "Occlum.json", (json.dumps(config, indent=2) + "\n").encode(), 0o644)
        self._run(["occlum", "build", "--sign-key", str(signing_key.resolve())], cwd=instance)
        mrenclave = self._print(instance, "mrenclave")
        mrsigner = self._print(instance, "mrsigner")
        if mrsigner != mrsigner_of(key.public_key()):
            raise EnclaveError("occlum print mrsigner does not match the signing key given")
        sigstruct = sign(
            key, mrenclave=mrenclave, isv_prod_id=manifest.isv_prod_id, isv_svn=manifest.isv_svn, debug=debug
        )
        document = {
            "manifest": manifest.to_json(),
            "sigstruct": sigstruct.to_json(),
            "occlum": {
                "mrenclave": mrenclave.hex(),
                "mrsigner": mrsigner.hex(),
                "launcher": launcher_name(manifest),
                "kss": options.kss,
            },
        }
        replace_atomically(out / IMAGE_FILE, json.dumps(document, indent=1).encode(), mode=0o644)
        return OcclumImage(out, self.name, manifest, sigstruct, mrenclave, mrsigner, options.kss)

    def measure(self, spec: ImageSpec, *, progress: ProgressCallback | None = None) -> Measurement:
        """MRENCLAVE of ``spec`` under this host's Occlum: a scratch build signed with a throwaway key.

        MRENCLAVE covers the LibOS build and the sealed image, so only ``occlum build`` can compute it; the key
        only decides MRSIGNER. The scratch instance is deleted afterwards.
        """
        missing = [tool for tool in ("occlum", "copy_bom") if self.which(tool) is None]
        if missing:
            raise EnclaveError(
                f"measuring an Occlum image needs Occlum: {', '.join(missing)} not on PATH (MRENCLAVE covers "
                "the LibOS and the sealed image, so only `occlum build` can compute it)",
                hint=INSTALL_HINT,
            )
        with tempfile.TemporaryDirectory(prefix="teelab-occlum-measure-") as scratch:
            folder = Path(scratch)
            _, key_path = throwaway_signing_key(folder)
            image = self.build_into(BuildRequest(spec, folder / "image", key_path, False, progress))
            return Measurement(image.mrenclave, image.manifest)

    def _print(self, instance: Path, what: str) -> bytes:
        output = self._run(["occlum", "print", what], cwd=instance)
        match = _HEX32.search(output)
        if match is None:
            raise EnclaveError(f"`occlum print {what}` printed no 32-byte hex value: {output.strip()[:200]}")
        return bytes.fromhex(match.group(1))

    def open_image(self, path: Path) -> OcclumImage:
        manifest, sigstruct, (mrenclave, mrsigner, kss) = read_image_file(
            path,
            kind="Occlum",
            build_hint="`teelab enclave build --backend occlum`",
            section=lambda document: (
                bytes.fromhex(document["occlum"]["mrenclave"]),
                bytes.fromhex(document["occlum"]["mrsigner"]),
                document["occlum"].get("kss") is True,
            ),
        )
        if sigstruct.mrenclave != mrenclave or sigstruct.mrsigner != mrsigner:
            raise EnclaveError(f"the Occlum image at {path} is inconsistent", hint="rebuild it")
        return OcclumImage(path, self.name, manifest, sigstruct, mrenclave, mrsigner, kss)

    def check_image(self, image: EnclaveImage, controller: bytes | None) -> None:
        if not isinstance(image, OcclumImage):
            raise EnclaveError(f"{image.path} is a {image.backend} image, not an Occlum one")
        if not image.kss:
            refuse_other_controller(image.manifest, controller, backend=self.name)
        if not (image.instance / "build").is_dir():
            raise EnclaveError(f"{image.instance} has not been built", hint="rebuild the image")

    def check_files(self, image: EnclaveImage) -> None:
        """Nothing to check on the host: ``occlum build`` copied the files into the instance's image, which
        the LibOS checks against its measured hashes as it reads them."""

    def plan_launch(
        self, image: EnclaveImage, inputs: Mapping[str, str], controller: bytes | None
    ) -> LaunchPlan:
        assert isinstance(image, OcclumImage)  # check_image
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **passthrough(image.manifest, inputs)}
        # `occlum run` takes its own options before the program; the PAL hands CONFIGID to sgx_create_enclave_ex.
        binding: list[str] = []
        if controller is not None and image.kss:
            binding = ["--config-id", base64.b64encode(sgx_config_id(controller)).decode()]
        argv = [self._tool("occlum"), "run", *binding, launcher_name(image.manifest)]
        return LaunchPlan(argv, env, image.instance)
