"""Launching through the simulated backend: the process runs the measured entrypoint with only the
manifest's environment and its declared inputs, and gets quotes over its own identity."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from teelab.enclave_runtime.manifest import TEE_TMP, ImageSpec
from teelab.enclave_runtime.sim.backend import SimBackend
from teelab.errors import EnclaveError
from teelab.gateway.policy import AppraisalPolicy
from teelab.gateway.verifier import verify_evidence
from teelab.timeutil import utcnow

PROBE = """
import json, os, sys
from teelab.enclave_runtime.runtime import current_runtime
runtime = current_runtime()
evidence = runtime.evidence(bytes.fromhex(os.environ["PROBE_INPUT"]))
print(json.dumps({"env": sorted(os.environ), "cwd": os.getcwd(), "tmp": os.environ["TMPDIR"],
                  "quote": evidence.blob.hex(), "kind": evidence.kind.value}))
"""


@pytest.fixture
def image_spec(tmp_path: Path) -> ImageSpec:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    import teelab

    return ImageSpec(
        name="probe",
        entrypoint=sys.executable,
        argv=(sys.executable, "-s", str(script)),
        env={"TMPDIR": TEE_TMP, "PATH": "/usr/bin:/bin"},
        passthrough_env=("PROBE_INPUT",),
        trusted=(sys.executable, str(script), str(Path(teelab.__file__).parent)),
    )


def test_launched_process_gets_quotes_over_its_measured_identity(
    image_spec: ImageSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOST_ONLY_SECRET", "must-not-leak")
    backend = SimBackend()
    image = backend.build(image_spec, out=tmp_path / "image")
    report_data = bytes(range(64))
    process = backend.launch(image, inputs={"PROBE_INPUT": report_data.hex()}, stdout=subprocess.PIPE)
    out, _ = process.popen.communicate(timeout=60)
    assert process.wait() == 0
    result = json.loads(out)
    scratch = Path(result["tmp"])
    process.cleanup()
    assert not scratch.exists()
    quote = bytes.fromhex(result["quote"])
    assert result["kind"] == "sgx-dcap-quote"
    assert quote[112:144] == image.mrenclave
    assert quote[176:208] == image.mrsigner
    assert quote[368:432] == report_data
    assert "HOST_ONLY_SECRET" not in result["env"]
    assert set(result["env"]) <= {
        "TMPDIR",
        "PATH",
        "PROBE_INPUT",
        "TEELAB_TEE",
        "TEELAB_SIM_IDENTITY_FD",
        "LC_CTYPE",
    }
    assert result["cwd"] == result["tmp"]


def test_inputs_not_declared_in_the_manifest_are_refused(image_spec: ImageSpec, tmp_path: Path) -> None:
    backend = SimBackend()
    image = backend.build(image_spec, out=tmp_path / "image")
    with pytest.raises(EnclaveError, match="does not let LD_PRELOAD in"):
        backend.launch(image, inputs={"LD_PRELOAD": "/tmp/evil.so"})


def test_launch_refuses_when_a_trusted_file_changed(image_spec: ImageSpec, tmp_path: Path) -> None:
    backend = SimBackend()
    image = backend.build(image_spec, out=tmp_path / "image")
    (tmp_path / "probe.py").write_text("print('tampered')\n")
    with pytest.raises(EnclaveError, match=r"probe\.py changed"):
        backend.launch(image, inputs={})


def test_damaged_image_file_is_reported(image_spec: ImageSpec, tmp_path: Path) -> None:
    backend = SimBackend()
    image = backend.build(image_spec, out=tmp_path / "image")
    document = json.loads((image.path / "image.json").read_text())
    document["manifest"]["env"]["TMPDIR"] = "/somewhere/else"
    (image.path / "image.json").write_text(json.dumps(document))
    with pytest.raises(EnclaveError, match="measures differently"):
        backend.load_image("probe", image.path)


def test_controller_is_bound_into_the_configid_of_every_quote(image_spec: ImageSpec, tmp_path: Path) -> None:
    backend = SimBackend()
    image = backend.build(image_spec, out=tmp_path / "image")
    controller = hashlib.sha256(b"gateway identity key G.pub").digest()
    report_data = bytes(range(64))
    process = backend.launch(
        image, inputs={"PROBE_INPUT": report_data.hex()}, controller=controller, stdout=subprocess.PIPE
    )
    out, _ = process.popen.communicate(timeout=60)
    assert process.wait() == 0
    process.cleanup()
    quote = bytes.fromhex(json.loads(out)["quote"])
    assert quote[48 + 192 : 48 + 256] == controller + bytes(32)  # the report body's CONFIGID
    result = verify_evidence(
        quote,
        collateral=backend.collateral_path(),
        at=utcnow(),
        policy=AppraisalPolicy(allow_simulation=True),
        expected_report_data=report_data,
    )
    assert result.ok, result.error
    assert result.claims["config_id"] == (controller + bytes(32)).hex()


def test_without_a_controller_the_configid_stays_zero(image_spec: ImageSpec, tmp_path: Path) -> None:
    backend = SimBackend()
    image = backend.build(image_spec, out=tmp_path / "image")
    process = backend.launch(image, inputs={"PROBE_INPUT": "00" * 64}, stdout=subprocess.PIPE)
    out, _ = process.popen.communicate(timeout=60)
    assert process.wait() == 0
    process.cleanup()
    assert bytes.fromhex(json.loads(out)["quote"])[240:304] == bytes(64)


@pytest.mark.parametrize("controller", [b"", bytes(31), bytes(33), bytes(64)])
def test_a_controller_that_is_not_a_32_byte_hash_is_refused(
    image_spec: ImageSpec, tmp_path: Path, controller: bytes
) -> None:
    backend = SimBackend()
    image = backend.build(image_spec, out=tmp_path / "image")
    with pytest.raises(EnclaveError, match="32-byte SHA-256"):
        backend.launch(image, inputs={}, controller=controller)
