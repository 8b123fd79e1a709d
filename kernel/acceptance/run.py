"""The acceptance run: one command that walks what a user of a TEE backend does, through the user's own tools.

Steps, each a check in the report: install the kernel (build and measure its image, write its kernelspec and
policy) → start the key broker (`teelab kbs serve`) → seal and publish a small dataset to it (`teelab dataset
upload`) → start the attested kernel through jupyter_client with the installed kernelspec (the gateway launches
it with its controller binding and verifies its evidence with the backend's collateral) → run cells (pandas, a
subprocess) → read the sealed dataset inside the kernel → look for the cells' and the dataset's plaintext in
what crossed the host's loopback meanwhile.

Everything happens in a fresh folder with its own HOME, teelab data/config and Jupyter folders (environment
variables of this process, restored afterwards), so the user's own installation is neither used nor touched.
The hash cache stays the user's (it only saves re-hashing unchanged files; its entries are keyed by size and
modification time).
"""

from __future__ import annotations

import getpass
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from teelab.enclave_runtime.acceptance.loopback import LoopbackCapture, open_capture
from teelab.kernel.acceptance.report import AcceptanceReport, CheckFailed, Recorder

KERNEL_TIMEOUT = 180.0
KBS_START_TIMEOUT = 60.0
DATASET = "acceptance"
TOTAL_CHECKS = 9


@dataclass(frozen=True)
class AcceptanceOptions:
    backend: str = "sim"
    work: Path | None = None  # default: a new folder under the system's temporary folder
    policy: Path | None = None  # required by hardware backends: the policy pinning the image
    signing_key: Path | None = None  # Gramine/Occlum: the image author's key
    kbs_collateral: str | None = None  # `teelab kbs serve --collateral`; default: sim for sim, else none


@dataclass
class _State:
    work: Path
    marker: str
    installed: Any = None
    kbs: subprocess.Popen[bytes] | None = None
    kernel: Any = None
    client: Any = None
    capture: LoopbackCapture | None = None
    outputs: list[str] = field(default_factory=list)


def _teelab() -> str:
    """The `teelab` command of this installation."""
    return str(Path(sys.executable).with_name("teelab"))


@contextmanager
def isolated_environment(work: Path) -> Iterator[None]:
    """HOME, teelab's and Jupyter's folders inside ``work`` for the duration (this process and its children)."""
    values = {
        "HOME": str(work / "home"),
        "TEELAB_DATA_DIR": str(work / "data"),
        "TEELAB_CONFIG_DIR": str(work / "config"),
        "JUPYTER_DATA_DIR": str(work / "jupyter" / "data"),
        "JUPYTER_RUNTIME_DIR": str(work / "jupyter" / "runtime"),
        "JUPYTER_CONFIG_DIR": str(work / "jupyter" / "config"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    if "TEELAB_CACHE_DIR" not in os.environ:
        from teelab.paths import cache_dir

        values["TEELAB_CACHE_DIR"] = str(cache_dir())
    for name in ("TEELAB_KBS", "TEELAB_KBS_TOKEN_FILE"):
        values[name] = ""
    saved = {name: os.environ.get(name) for name in values}
    (work / "home").mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, value in values.items():
        if value:
            os.environ[name] = value
        else:
            os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _run(args: list[str], what: str, timeout: float = 600.0) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise CheckFailed(f"{what} exited {result.returncode}: {result.stderr.strip()[-800:]}")
    return result.stdout


def _execute(client: Any, code: str, timeout: float = 120.0) -> str:
    """Run ``code`` in the kernel; its stream output, or CheckFailed with the kernel's error."""
    msg_id = client.execute(code)
    output: list[str] = []
    while True:
        message = client.get_iopub_msg(timeout=timeout)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = message["msg_type"], message["content"]
        if kind == "stream":
            output.append(content["text"])
        elif kind == "error":
            raise CheckFailed(f"{content['ename']}: {content['evalue']}")
        elif kind == "status" and content["execution_state"] == "idle":
            break
    reply = client.get_shell_msg(timeout=timeout)
    if reply["content"]["status"] != "ok":
        raise CheckFailed(f"the cell ended with status {reply['content']['status']}")
    return "".join(output)


def run_acceptance(options: AcceptanceOptions, out: Path, stream: TextIO = sys.stderr) -> AcceptanceReport:
    """Walk the whole path once; write ``acceptance.json`` and ``acceptance.txt`` into ``out``."""
    import tempfile

    from teelab.timeutil import utcnow

    work = options.work or Path(tempfile.mkdtemp(prefix="teelab-acceptance-"))
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    report = AcceptanceReport(options.backend, utcnow().isoformat())
    report.facts["work folder"] = str(work)
    report.facts["doctor"] = _doctor_facts(options.backend)
    recorder = Recorder(report, stream, TOTAL_CHECKS)
    state = _State(work=work, marker="ACCEPTANCE-" + secrets.token_hex(8))
    with isolated_environment(work):
        try:
            _walk(options, state, recorder, report)
        finally:
            _stop(state)
    report.write(out)
    return report


def _doctor_facts(backend: str) -> dict[str, object]:
    """What `teelab doctor` says about the backend's host (found and missing), for the report's reader."""
    from teelab.enclave_runtime.doctor import all_statuses

    for status in all_statuses():
        if backend.startswith(status.name):
            return {"available": status.available, "found": status.found, "missing": status.missing}
    return {}


class _Steps:
    """The acceptance run's steps, in order; each may raise CheckFailed with what a hardware user should read."""

    def __init__(self, options: AcceptanceOptions, state: _State, report: AcceptanceReport) -> None:
        self.options, self.state, self.report = options, state, report

    def install(self, note: Any) -> None:
        from teelab.enclave_runtime.backends import get_backend
        from teelab.kernel.kernelspec import install as install_kernel

        self.state.installed = install_kernel(
            backend=self.options.backend,
            policy=self.options.policy,
            signing_key=self.options.signing_key,
            user=True,
        )
        label, value = get_backend(self.options.backend).describe_measurement(self.state.installed.image)
        self.report.facts[label] = value
        self.report.facts["trusted files"] = len(self.state.installed.image.manifest.trusted_files)
        note(f"kernelspec {self.state.installed.name}; {label} {value}")

    def key_broker(self, note: Any) -> None:
        collateral = self.options.kbs_collateral or ("sim" if self.options.backend == "sim" else "none")
        command = [_teelab(), "kbs", "serve", "--listen", "127.0.0.1:0", "--collateral", collateral]
        with open(
            self.state.work / "kbs.log", "wb"
        ) as log:  # the broker's output, for whoever reads the report
            self.state.kbs = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        from teelab.sealed_store import services

        endpoint = services.kbs_state_dir() / services.ENDPOINT_FILE
        token = services.user_token_file()
        deadline = time.monotonic() + KBS_START_TIMEOUT
        while not (endpoint.is_file() and token.is_file()):
            if self.state.kbs.poll() is not None:
                raise CheckFailed(
                    f"teelab kbs serve exited {self.state.kbs.returncode} (see {self.state.work / 'kbs.log'})"
                )
            if time.monotonic() > deadline:
                raise CheckFailed(f"teelab kbs serve did not start in {KBS_START_TIMEOUT:.0f}s")
            time.sleep(0.1)
        note(f"listening on {endpoint.read_text().strip()}; user token for {getpass.getuser()}")

    def upload(self, note: Any) -> None:
        data = self.state.work / "acceptance.csv"
        rows = [f"{i},{self.state.marker}-row-{i},{i * 1.5}" for i in range(100)]
        data.write_text("id,label,amount\n" + "\n".join(rows) + "\n")
        _run(
            [
                _teelab(),
                "dataset",
                "upload",
                str(data),
                "--name",
                DATASET,
                "--policy",
                str(self.state.installed.policy_file),
                "--grant",
                f"user:{getpass.getuser()}",
            ],
            "teelab dataset upload",
        )
        note(f"sealed and published {DATASET!r} (100 rows) under the installed policy")

    def launch(self, note: Any) -> None:
        from jupyter_client.manager import KernelManager

        self.state.capture = open_capture()
        self.state.kernel = KernelManager(kernel_name=self.state.installed.name)
        self.state.kernel.start_kernel()
        self.state.client = self.state.kernel.client()
        self.state.client.start_channels()
        self.state.client.wait_for_ready(timeout=KERNEL_TIMEOUT)
        result = self.state.kernel.provisioner.result
        if result is None:
            raise CheckFailed("the gateway holds no attestation result for the kernel")
        self.report.facts["verdict"] = result.verdict
        self.report.facts["simulated"] = result.simulated
        self.report.facts["tcb status"] = result.tcb_status
        self.report.facts["verifier checks"] = {
            c.name: "pass" if c.passed else f"FAIL: {c.detail}" for c in result.checks
        }
        failed = [c.name for c in result.checks if not c.passed]
        if failed or not result.ok:
            raise CheckFailed(f"attestation {result.verdict}; failed checks: {', '.join(failed) or 'none'}")
        note(f"verdict {result.verdict}{' (SIMULATED — not confidential)' if result.simulated else ''}")

    def controller(self, note: Any) -> None:
        result = self.state.kernel.provisioner.result
        checks = {c.name: c for c in result.checks}
        if "controller" not in checks:
            raise CheckFailed("the attestation result has no 'controller' check")
        note(checks["controller"].detail)

    def collateral(self, note: Any) -> None:
        result = self.state.kernel.provisioner.result
        issued = result.collateral_issued_at
        if issued is None and result.tee == "sgx":
            raise CheckFailed("SGX evidence was verified without collateral")
        note(
            f"TCB {result.tcb_status}; collateral issued {issued.isoformat() if issued else 'with the evidence'}"
        )

    def cells(self, note: Any) -> None:
        text = _execute(
            self.state.client,
            "import pandas as pd, subprocess\n"
            f"frame = pd.DataFrame({{'x': range(10)}})\nprint('{self.state.marker}-pandas', int(frame.x.sum()))\n"
            f"print(subprocess.run(['echo', '{self.state.marker}-subprocess'], capture_output=True, text=True).stdout"
            ".strip())\n",
        )
        expected = [f"{self.state.marker}-pandas 45", f"{self.state.marker}-subprocess"]
        if text.split("\n")[:2] != expected:
            raise CheckFailed(f"unexpected output {text!r}")
        self.state.outputs.append(text)
        note("pandas and a subprocess ran")

    def dataset(self, note: Any) -> None:
        text = _execute(
            self.state.client,
            "from teelab.sealed_store import read_dataset\n"
            f"frame = read_dataset({DATASET!r})\nprint(len(frame), frame.amount.sum(), frame.label[7])\n",
        )
        if text.strip() != f"100 {sum(i * 1.5 for i in range(100))} {self.state.marker}-row-7":
            raise CheckFailed(f"unexpected output {text!r}")
        note("the kernel read the sealed dataset through the key broker's release")


def _walk(options: AcceptanceOptions, state: _State, recorder: Recorder, report: AcceptanceReport) -> None:
    steps = _Steps(options, state, report)
    recorder.run("install the kernel (build and measure the image)", steps.install)
    recorder.run("start the key broker (teelab kbs serve)", steps.key_broker)
    recorder.run("seal and publish a dataset (teelab dataset upload)", steps.upload)
    recorder.run("launch an attested kernel and verify its evidence", steps.launch)
    recorder.run("controller binding checked", steps.controller)
    recorder.run("collateral and TCB", steps.collateral)
    recorder.run("run cells: pandas, a subprocess", steps.cells)
    recorder.run("read the sealed dataset in the kernel", steps.dataset)
    _loopback(state, recorder)


def _loopback(state: _State, recorder: Recorder) -> None:
    name = "no plaintext on the host's loopback"

    if state.capture is None:
        recorder.skip(name, "not checked (needs root: capturing the loopback needs CAP_NET_RAW)")
        return
    if not state.outputs:
        recorder.skip(name, "not checked: no cell ran")
        return

    def check(note: Any) -> None:
        assert state.capture is not None
        seen = state.capture.stop()
        leaked = [m for m in (state.marker.encode(), b"-row-7") if m in seen]
        if leaked:
            raise CheckFailed(f"plaintext crossed the loopback: {leaked}")
        note(f"{len(seen):,} bytes captured while the kernel ran; none of the cells' or dataset's plaintext")

    recorder.run(name, check, needs_previous=False)


def _stop(state: _State) -> None:
    if state.client is not None:
        with suppress(Exception):
            state.client.stop_channels()
    if state.kernel is not None:
        with suppress(Exception):
            state.kernel.shutdown_kernel(now=True)
    if state.capture is not None:
        state.capture.stop()
    if state.kbs is not None:
        state.kbs.terminate()
        try:
            state.kbs.wait(timeout=15)
        except subprocess.TimeoutExpired:
            state.kbs.kill()
            state.kbs.wait()
