"""The backend interface: what every TEE backend provides, on the host and inside the TEE.

Host side (:class:`EnclaveBackend`): build an enclave image from an :class:`~.manifest.ImageSpec`, measure
it, launch a command inside it, and hand the verifier the collateral for evidence from this platform.
In-TEE side (:class:`TeeRuntime`): evidence over 64 bytes of report_data, and sealing keys bound to the
enclave's identity. The lifecycle is explicit: build → (measure) → launch → the launched process asks its
runtime for evidence → the host cleans up.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import shutil
import signal
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

from teelab.enclave_runtime.controller import ControllerBinding, check_controller
from teelab.enclave_runtime.hashcache import HashCache
from teelab.enclave_runtime.image import EnclaveImage, default_image_dir
from teelab.enclave_runtime.launching import LaunchPlan, refuse_unlisted_inputs, start_process
from teelab.enclave_runtime.manifest import EnclaveManifest, ImageSpec, ProgressCallback, check_trusted_files
from teelab.errors import EvidenceError

REPORT_DATA_SIZE = 64


class EvidenceKind(StrEnum):
    SGX_QUOTE = "sgx-dcap-quote"
    TDX_QUOTE = "tdx-dcap-quote"
    SNP_REPORT = "sev-snp-report"


class SealPolicy(StrEnum):
    """Which identity a sealing key is bound to (SGX's KEYPOLICY)."""

    MRENCLAVE = "mrenclave"  # only this exact enclave image
    MRSIGNER = "mrsigner"  # any enclave of this author and product id


@dataclass(frozen=True)
class Evidence:
    """Evidence as the TEE produced it; ``certificates`` carries e.g. SNP's auxblob when the host gave one."""

    kind: EvidenceKind
    blob: bytes
    certificates: bytes | None = None

    def to_json(self) -> dict[str, str]:
        data = {"kind": self.kind.value, "blob": base64.b64encode(self.blob).decode()}
        if self.certificates is not None:
            data["certificates"] = base64.b64encode(self.certificates).decode()
        return data

    @classmethod
    def from_json(cls, data: object) -> Evidence:
        """Decode evidence that crossed the untrusted host; malformed input is an EvidenceError."""
        try:
            if not isinstance(data, dict):
                raise ValueError("evidence must be a JSON object")
            certificates = data.get("certificates")
            return cls(
                kind=EvidenceKind(data["kind"]),
                blob=base64.b64decode(data["blob"], validate=True),
                certificates=None if certificates is None else base64.b64decode(certificates, validate=True),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as error:
            raise EvidenceError(f"malformed evidence message: {error}") from None


def check_report_data(report_data: bytes) -> None:
    if len(report_data) != REPORT_DATA_SIZE:
        raise EvidenceError(f"report_data must be exactly 64 bytes, not {len(report_data)}")


class TeeRuntime(ABC):
    """What code running inside the TEE can ask of it."""

    backend: ClassVar[str]
    simulated: ClassVar[bool] = False

    @abstractmethod
    def evidence(self, report_data: bytes) -> Evidence:
        """Fresh evidence whose report data is ``report_data`` (exactly 64 bytes)."""

    @abstractmethod
    def sealing_key(self, policy: SealPolicy = SealPolicy.MRENCLAVE, *, label: bytes = b"") -> bytes:
        """A 256-bit key only this enclave (or this author's enclaves) can derive on this platform."""

    @abstractmethod
    def controller(self) -> bytes | None:
        """The controller hash this TEE was launched for, read from the launch-time platform field every
        evidence of it carries (or, under the "measurement" binding, from the measured image); None when none
        is bound. The boot obeys only a boot request naming this controller (ARCHITECTURE §3)."""

    def confine(self, private_dirs: Iterable[str] = ()) -> Callable[[bytes], Evidence] | None:
        """Called by the boot once it has its session evidence, before any user code runs: where this process
        could otherwise reach the raw attestation interface at will (a confidential VM's guest device), keep it
        for a privileged agent, hand ``private_dirs`` to the kernel's user and run on unprivileged. Returns
        user code's evidence function then (raw user data in; evidence over SHA-512("teelab/user/v1" ‖ data)
        out). None: nothing to confine here (an enclave's interface is the LibOS's, the simulation has none)."""
        return None


@dataclass
class BackendStatus:
    """What ``teelab doctor`` reports for one backend."""

    name: str
    available: bool
    summary: str
    found: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


class EnclaveProcess:
    """A process launched inside a TEE, plus the host-side resources its launch created."""

    def __init__(self, popen: subprocess.Popen[bytes], scratch: Path | None = None) -> None:
        self.popen = popen
        self.scratch = scratch

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    def send_signal(self, signum: int) -> None:
        # The launch made the process a session leader; signal its whole group so helpers go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def cleanup(self) -> None:
        """Remove what the launch left on the host; call after the process has exited."""
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


@dataclass(frozen=True)
class RootPin:
    """A root certificate this backend's evidence chains to, beyond the production roots every verifier pins
    (Intel's SGX root, AMD's ARKs): its SHA-256 fingerprint (hex, of the DER) and a label for messages.

    ``simulated`` roots make evidence authentic *as a simulation* only; the verifier marks such evidence
    ``simulated`` and only a policy that allows simulation accepts it. enclave_runtime imports no other part,
    so the gateway turns these into its trust anchors (``teelab.gateway.verifier.default_anchors``).
    """

    sha256: str
    label: str
    simulated: bool = True


@dataclass(frozen=True)
class BuildRequest:
    """What ``build`` was asked for: the spec, the output folder, the author's key, the debug flag."""

    spec: ImageSpec
    out: Path
    signing_key: Path | None
    debug: bool
    progress: ProgressCallback | None


@dataclass(frozen=True)
class Measurement:
    """What ``measure`` found: the MRENCLAVE a verifier will see, and the expanded manifest it covers."""

    mrenclave: bytes
    manifest: EnclaveManifest


class EnclaveBackend(ABC):
    """The host side of a TEE backend.

    Who calls what: ``teelab doctor`` calls :meth:`status`; ``teelab enclave build`` and ``teelab kernel
    install`` call :meth:`build`; ``teelab enclave measure`` calls :meth:`measure`; the kernel provisioner calls
    :meth:`load_image`, :meth:`launch` (with its gateway's controller), and for verifying the kernel's evidence
    :meth:`collateral_for` and :meth:`root_pins`. A backend implements the abstract methods and the launch hooks
    (:meth:`check_image`, :meth:`check_files`, :meth:`plan_launch`, :meth:`started`); :meth:`launch` itself is
    the same for all.
    """

    name: ClassVar[str]
    simulated: ClassVar[bool] = False
    # How this backend binds the launching gateway's controller into its evidence (see .controller).
    binding: ControllerBinding
    # What this TEE calls the code measurement a verifier pins: every CLI and UI surface labels it so.
    measurement_label: str = "MRENCLAVE"

    def describe_measurement(self, image: EnclaveImage) -> tuple[str, str]:
        """``(label, value)`` of the measurement a policy pins for ``image`` under this TEE."""
        return self.measurement_label, image.mrenclave.hex()

    @classmethod
    @abstractmethod
    def status(cls) -> BackendStatus:
        """Can this machine run this backend, and if not, precisely why."""

    def build(
        self,
        spec: ImageSpec,
        *,
        out: Path | None = None,
        signing_key: Path | None = None,
        debug: bool = False,
        progress: ProgressCallback | None = None,
    ) -> EnclaveImage:
        """Build (and sign) the image into ``out`` (default: :meth:`image_dir`); its MRENCLAVE is the value a
        verifier will see."""
        return self.build_into(
            BuildRequest(spec, out or self.image_dir(spec.name), signing_key, debug, progress)
        )

    @abstractmethod
    def build_into(self, request: BuildRequest) -> EnclaveImage:
        """This backend's build of ``request.spec`` into ``request.out``."""

    @abstractmethod
    def measure(self, spec: ImageSpec, *, progress: ProgressCallback | None = None) -> Measurement:
        """The MRENCLAVE ``spec`` will have under this backend, without the author's key (the value to pin);
        an EnclaveError saying where the reference value comes from when the backend cannot compute it."""

    def image_dir(self, name: str) -> Path:
        """Where this backend keeps the image ``name`` built in this environment (see image.default_image_dir)."""
        return default_image_dir(name, self.name)

    def load_image(self, name: str, path: Path | None = None) -> EnclaveImage:
        """The built image ``name`` (from ``path``, default :meth:`image_dir`), checked for consistency."""
        return self.open_image(path or self.image_dir(name))

    @abstractmethod
    def open_image(self, path: Path) -> EnclaveImage:
        """Read and check the image in ``path``; a missing or damaged image is an EnclaveError."""

    def describe(self) -> str:
        """Where this backend's TEEs come from, for messages and audit records."""
        return f"the {self.name} backend"

    @classmethod
    def known_root_pins(cls) -> tuple[RootPin, ...]:
        """Extra roots this backend's evidence on this machine chains to, found without creating anything
        (verifiers with no backend at hand call this through ``backends.known_root_pins``)."""
        return ()

    def root_pins(self) -> tuple[RootPin, ...]:
        """Extra roots the evidence of TEEs this backend launches chains to (none for real hardware, whose
        roots are the production ones every verifier pins)."""
        return self.known_root_pins()

    # -- launch: one template; the hooks below are what differs between backends --------------------------

    def launch(
        self,
        image: EnclaveImage,
        *,
        inputs: Mapping[str, str],
        controller: bytes | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> EnclaveProcess:
        """Start the image's entrypoint inside the TEE; ``inputs`` are its passthrough (untrusted) env.

        ``controller`` (32 bytes, ``SHA-256(G.pub)`` of the launching gateway) is bound into every evidence the
        TEE produces, in the way :attr:`binding` names (see :mod:`~teelab.enclave_runtime.controller`); None
        leaves the platform field zero. The steps: check the inputs, check the image and its trusted files,
        the backend's own command and environment, start the process, and what the backend does once it runs.
        """
        controller = check_controller(controller)
        refuse_unlisted_inputs(image.manifest, inputs)
        self.check_image(image, controller)
        self.check_files(image)
        plan = self.plan_launch(image, inputs, controller)
        try:
            popen = start_process(
                plan.argv,
                executable=plan.executable,
                env=plan.env,
                cwd=plan.cwd,
                stdout=stdout,
                stderr=stderr,
                pass_fds=plan.pass_fds,
            )
        except BaseException:
            plan.discard()
            raise
        finally:
            for fd in plan.pass_fds:
                os.close(fd)  # the child's ends: the child has its own copies now
        process = EnclaveProcess(popen, plan.scratch)
        try:
            self.started(process, image, plan, controller)
        except BaseException:
            process.kill()
            process.wait()
            process.cleanup()
            raise
        return process

    def check_image(self, image: EnclaveImage, controller: bytes | None) -> None:
        """Refuse an image this backend cannot launch (another backend's, not built, or not bound to
        ``controller`` where the measured image is what binds it)."""
        return None

    def check_files(self, image: EnclaveImage) -> None:
        """Check every trusted file against the measured manifest before launching (a changed file is named)."""
        with HashCache() as cache:
            check_trusted_files(image.manifest, cache)

    @abstractmethod
    def plan_launch(
        self, image: EnclaveImage, inputs: Mapping[str, str], controller: bytes | None
    ) -> LaunchPlan:
        """The program, environment and folder that start ``image`` in this TEE, bound to ``controller``."""

    def started(
        self, process: EnclaveProcess, image: EnclaveImage, plan: LaunchPlan, controller: bytes | None
    ) -> None:
        """What the launcher does once the process runs; raising kills it."""
        return None

    @abstractmethod
    def collateral_path(self, at: datetime | None = None) -> Path | None:
        """Where the verifier finds collateral for this platform's evidence (None: it must be supplied)."""

    def collateral_for(self, evidence: bytes, at: datetime) -> Path | None:
        """Collateral for one piece of evidence (real platforms pick it by the quote's FMSPC and PCK CA).

        The host provides collateral, and that is safe: every document in it is signed and checked.
        """
        return self.collateral_path(at)


class PccsCollateral:
    """Mixin for backends whose Intel quotes need collateral chosen by the quote's FMSPC and PCK CA: fetched
    from the configured PCCS (and cached) per piece of evidence, rather than one path per platform."""

    def collateral_path(self, at: datetime | None = None) -> Path | None:
        return None

    def collateral_for(self, evidence: bytes, at: datetime) -> Path | None:
        from teelab.enclave_runtime.cvm.pccs import PccsClient

        return PccsClient().collateral_for_quote(evidence, at)


def encode_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
