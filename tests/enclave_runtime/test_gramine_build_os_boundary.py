"""`teelab enclave build|measure --backend gramine` and the Gramine launch, with stand-in Gramine tools.

Gramine is not installable here, so ``gramine-manifest``, ``gramine-sgx-sign``, ``gramine-sgx`` and
``gramine-direct`` are small stand-in scripts on PATH: the first renders the template as gramine-manifest does,
the second writes a SIGSTRUCT signed with the given key over a stand-in MRENCLAVE (SHA-256 of the manifest — the
real value covers Gramine's loader and needs Gramine), the launchers record how they were called. This checks
teelab's side of the boundary — arguments, files, parsing MRENCLAVE/MRSIGNER from the .sig — not Gramine or SGX.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from teelab.cli import main
from teelab.enclave_runtime.backends import get_backend
from teelab.enclave_runtime.controller import CONTROLLER_ENV, ControllerBinding, pin_controller
from teelab.enclave_runtime.gramine.backend import GramineBackend, GramineImage
from teelab.enclave_runtime.gramine.sigstruct import build_sigstruct, parse_sigstruct
from teelab.enclave_runtime.manifest import ImageSpec
from teelab.errors import EnclaveError

from .libos_standin import GRAMINE_LOADER_CHECKS

MANIFEST_TOOL = f"""#!{sys.executable}
import sys, tomllib
from teelab.enclave_runtime.gramine.template import preview_manifest
args = [a for a in sys.argv[1:] if not a.startswith("-")]
text = preview_manifest(open(args[0]).read(), runtimedir="/opt/gramine/runtime/glibc", libos="/opt/gramine/libsysdb.so")
tomllib.loads(text)
open(args[1], "w").write(text)
"""
SIGN_TOOL = f"""#!{sys.executable}
import argparse, hashlib, tomllib
from cryptography.hazmat.primitives import serialization
from teelab.enclave_runtime.gramine.sigstruct import build_sigstruct
p = argparse.ArgumentParser()
for flag in ("--manifest", "--output", "--sigfile", "--key", "--date"):
    p.add_argument(flag, required=True)
a = p.parse_args()
data = open(a.manifest, "rb").read()
doc = tomllib.loads(data.decode())
key = serialization.load_pem_private_key(open(a.key, "rb").read(), None)
sig = build_sigstruct(key, mrenclave=hashlib.sha256(data).digest(), isv_prod_id=doc["sgx"]["isvprodid"],
                      isv_svn=doc["sgx"]["isvsvn"], attribute_flags=0x04 | (0x02 if doc["sgx"]["debug"] else 0))
open(a.sigfile, "wb").write(sig)
open(a.output, "wb").write(data)
"""
LAUNCH_TOOL = f"""#!{sys.executable}
import json, os, sys, tomllib
{GRAMINE_LOADER_CHECKS}
manifest = os.path.join(os.getcwd(), sys.argv[-1] + ".manifest.sgx")
if os.path.exists(manifest):  # Gramine's loader refuses what it cannot apply, before the application runs
    errors = gramine_loader_errors(tomllib.loads(open(manifest).read()))
    if errors:
        sys.exit("error: " + "; ".join(errors))
record = {{"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ)}}
open(os.environ["TEELAB_TEST_RECORD"] if "TEELAB_TEST_RECORD" in os.environ else os.path.join(os.getcwd(), "launch.json"), "w").write(json.dumps(record))
"""


@pytest.fixture(scope="module")
def author_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = rsa.generate_private_key(public_exponent=3, key_size=3072)
    path = tmp_path_factory.mktemp("keys") / "author.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


@pytest.fixture(scope="module")
def stand_in_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gramine-bin")
    for name, text in (
        ("gramine-manifest", MANIFEST_TOOL),
        ("gramine-sgx-sign", SIGN_TOOL),
        ("gramine-sgx", LAUNCH_TOOL),
        ("gramine-direct", LAUNCH_TOOL),
    ):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


@pytest.fixture
def stand_in_gramine(stand_in_bin: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PATH", f"{stand_in_bin}:{os.environ['PATH']}")
    return stand_in_bin


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, author_key: Path, stand_in_bin: Path) -> Path:
    """The kernel image of this environment, built once with the stand-in tools."""
    from teelab.enclave_runtime.images import kernel_image_spec

    out = tmp_path_factory.mktemp("gramine-image")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{stand_in_bin}:{os.environ['PATH']}")
        patch.setenv("TEELAB_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        GramineBackend().build(kernel_image_spec(), out=out, signing_key=author_key)
    return out


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_os_boundary_sigstruct_parsing_reads_mrenclave_and_checks_the_signature(author_key: Path) -> None:
    key = serialization.load_pem_private_key(author_key.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    data = build_sigstruct(key, mrenclave=b"\xab" * 32, isv_prod_id=5, isv_svn=9, attribute_flags=0x06)
    parsed = parse_sigstruct(data)
    modulus = key.public_key().public_numbers().n.to_bytes(384, "little")
    assert parsed.mrenclave == data[960:992] == b"\xab" * 32
    assert parsed.mrsigner == hashlib.sha256(modulus).digest()
    assert (parsed.isv_prod_id, parsed.isv_svn, parsed.debug) == (5, 9, True)
    tampered = bytearray(data)
    tampered[961] ^= 1  # one bit of MRENCLAVE: the signature no longer covers it
    with pytest.raises(EnclaveError, match="does not verify"):
        parse_sigstruct(bytes(tampered))
    with pytest.raises(EnclaveError, match="exactly 1808"):
        parse_sigstruct(data[:-1])
    with pytest.raises(EnclaveError, match="not an SGX signature"):
        parse_sigstruct(bytes(1808))


def test_os_boundary_build_without_a_signing_key_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "enclave", "build", "--backend", "gramine")
    assert code == 2 and "author's key" in err and "--signing-key" in err


def test_os_boundary_build_without_gramine_renders_the_template_and_says_what_to_install(
    tmp_path: Path, author_key: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    out = tmp_path / "image"
    code, _, err = run(
        capsys,
        "enclave",
        "build",
        "--backend",
        "gramine",
        "--signing-key",
        str(author_key),
        "--out",
        str(out),
    )
    assert code == 1
    assert "gramine-manifest, gramine-sgx-sign are not on PATH" in err and "install Gramine" in err
    assert (out / "python-kernel.manifest.template").read_text().startswith("# Gramine manifest template")
    code, _, err = run(capsys, "enclave", "measure", "--backend", "gramine")
    assert code == 1 and "needs Gramine" in err


def test_os_boundary_build_signs_with_the_authors_key_and_reports_the_sigstructs_mrenclave(
    tmp_path: Path, author_key: Path, stand_in_gramine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "image"
    code, stdout, err = run(
        capsys,
        "enclave",
        "build",
        "--backend",
        "gramine",
        "--signing-key",
        str(author_key),
        "--out",
        str(out),
        "--isv-prod-id",
        "4",
    )
    assert code == 0, err
    manifest_bytes = (out / "python-kernel.manifest").read_bytes()
    sig = parse_sigstruct((out / "python-kernel.sig").read_bytes())
    assert sig.mrenclave == hashlib.sha256(manifest_bytes).digest()  # what the stand-in signer measured
    assert stdout.splitlines()[-1] == sig.mrenclave.hex()
    assert f"mrsigner       {sig.mrsigner.hex()}" in stdout
    assert sig.isv_prod_id == 4 and not sig.debug
    image = GramineBackend().load_image("python-kernel", out)
    assert (
        isinstance(image, GramineImage)
        and image.mrenclave == sig.mrenclave
        and image.mrsigner == sig.mrsigner
    )
    assert image.sigstruct.mrenclave == sig.mrenclave  # teelab's record agrees with Gramine's structure


def test_os_boundary_launch_runs_gramine_sgx_with_only_the_passthrough_environment(
    tmp_path: Path, built: Path, stand_in_gramine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "image"
    shutil.copytree(built, out)
    backend = GramineBackend()
    monkeypatch.setenv("SECRET_ON_THE_HOST", "must-not-pass")
    image = backend.load_image("python-kernel", out)
    with pytest.raises(EnclaveError, match="does not let EVIL in"):
        backend.launch(image, inputs={"EVIL": "1"})
    process = backend.launch(image, inputs={"TEELAB_BOOT_REQUEST": "nonce-and-address"})
    assert process.wait(timeout=60) == 0
    record = json.loads((out / "launch.json").read_text())
    assert Path(record["argv"][0]).name == "gramine-sgx" and record["argv"][1:] == ["python-kernel"]
    assert Path(record["cwd"]) == out and (out / "tee-state").is_dir()
    assert record["env"]["TEELAB_BOOT_REQUEST"] == "nonce-and-address"
    assert "SECRET_ON_THE_HOST" not in record["env"]
    # A .sig altered after the build no longer verifies: the image is refused at load.
    tampered = bytearray((out / "python-kernel.sig").read_bytes())
    tampered[961] ^= 1
    (out / "python-kernel.sig").write_bytes(bytes(tampered))
    with pytest.raises(EnclaveError):
        backend.load_image("python-kernel", out)


def test_os_boundary_gramine_direct_is_a_separate_loud_backend(
    built: Path, stand_in_gramine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not GramineBackend().insecure_direct
    direct = get_backend("gramine-direct")
    assert isinstance(direct, GramineBackend) and direct.insecure_direct
    assert direct.launch(direct.load_image("python-kernel", built), inputs={}).wait(timeout=60) == 0
    record = json.loads((built / "launch.json").read_text())
    assert Path(record["argv"][0]).name == "gramine-direct"
    err = capsys.readouterr().err
    assert "WARNING" in err and "no attestation" in err and "refuse" in err


def test_os_boundary_measure_with_gramine_prints_the_mrenclave_alone_last(
    stand_in_gramine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, err = run(capsys, "enclave", "measure", "--backend", "gramine")
    assert code == 0, err
    value = stdout.splitlines()[-1]
    assert len(bytes.fromhex(value)) == 32 and "MRSIGNER depends on the key" in stdout


CONTROLLER = hashlib.sha256(b"G.pub of this gateway").digest()


def small_spec(tmp_path: Path) -> ImageSpec:
    script = tmp_path / "probe.py"
    script.write_text("print('hello')\n")
    return ImageSpec(
        name="probe",
        entrypoint=sys.executable,
        argv=(sys.executable, "-s", str(script)),
        env={"PATH": "/usr/bin:/bin"},
        passthrough_env=("TEELAB_BOOT_REQUEST",),
        trusted=(sys.executable, str(script)),
    )


def test_os_boundary_gramine_controller_is_pinned_by_the_measured_manifest(
    tmp_path: Path, author_key: Path, stand_in_gramine: Path
) -> None:
    """Upstream Gramine lets the launcher set no CONFIGID, so the controller is in the manifest MRENCLAVE covers."""
    backend = GramineBackend()
    assert backend.binding is ControllerBinding.MEASUREMENT
    spec = small_spec(tmp_path)
    pinned = backend.build(pin_controller(spec, CONTROLLER), out=tmp_path / "pinned", signing_key=author_key)
    plain = backend.build(spec, out=tmp_path / "plain", signing_key=author_key)
    manifest = tomllib.loads((pinned.path / "probe.manifest").read_text())
    assert manifest["loader"]["env"][CONTROLLER_ENV] == CONTROLLER.hex()
    assert pinned.mrenclave != plain.mrenclave  # the stand-in signer measures the manifest, as Gramine does
    process = backend.launch(pinned, inputs={}, controller=CONTROLLER)
    assert process.wait(timeout=60) == 0
    other = hashlib.sha256(b"G.pub of another gateway").digest()
    with pytest.raises(EnclaveError, match="pins the controller"):
        backend.launch(pinned, inputs={}, controller=other)
    with pytest.raises(EnclaveError, match="pins no controller"):
        backend.launch(plain, inputs={}, controller=CONTROLLER)
    assert backend.launch(plain, inputs={}).wait(timeout=60) == 0  # no controller: as before the rule
