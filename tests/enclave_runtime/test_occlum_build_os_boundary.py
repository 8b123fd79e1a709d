"""The Occlum instance teelab prepares, checked key by key, and the build/launch flow with stand-in tools.

OS boundary only: Occlum is not installed here, so ``occlum`` and ``copy_bom`` are stand-in scripts that record
how they were called (``occlum print`` answers with a stand-in MRENCLAVE and the MRSIGNER of the key it was
given). What is checked is teelab's side: Occlum.json, the copy_bom list, the measured launcher, the refusal
of Occlum's public test key, the arguments and environment of each command.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from teelab.cli import main
from teelab.enclave_runtime.controller import ControllerBinding
from teelab.enclave_runtime.hashcache import HashCache
from teelab.enclave_runtime.images import kernel_image_spec
from teelab.enclave_runtime.manifest import TEE_STATE, TEE_TMP, ImageSpec, expand
from teelab.enclave_runtime.occlum.backend import OcclumBackend, OcclumImage
from teelab.enclave_runtime.occlum.config import (
    TEMPLATE,
    OcclumOptions,
    copy_bom,
    launcher_script,
    occlum_json,
)
from teelab.enclave_runtime.signing import mrsigner_of
from teelab.errors import EnclaveError, UsageError

OCCLUM_TOOL = f"""#!{sys.executable}
import hashlib, json, os, sys
from cryptography.hazmat.primitives import serialization
log = os.path.join(os.getcwd(), "occlum-calls.jsonl")
open(log, "a").write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}) + "\\n")
command = sys.argv[1]
if command == "new":
    os.makedirs(os.path.join(sys.argv[2], "image"))
    installed = {json.dumps(TEMPLATE)!r}
    doc = json.loads(installed)
    doc["resource_limits"]["user_space_max_size"] = "1200MB"  # an installed default teelab must override
    open(os.path.join(sys.argv[2], "Occlum.json"), "w").write(json.dumps(doc))
elif command == "build":
    key = sys.argv[sys.argv.index("--sign-key") + 1]
    os.makedirs("build", exist_ok=True)
    open("build/.key", "w").write(key)
    open("build/.mrenclave", "w").write(hashlib.sha256(open("Occlum.json", "rb").read()).hexdigest())
elif command == "print":
    if sys.argv[2] == "mrenclave":
        print(open("build/.mrenclave").read())
    else:
        key = serialization.load_pem_private_key(open(open("build/.key").read(), "rb").read(), None)
        n = key.public_key().public_numbers().n.to_bytes(384, "little")
        print(hashlib.sha256(n).hexdigest())
"""
COPY_BOM_TOOL = f"""#!{sys.executable}
import json, os, sys
open("copy_bom-call.json", "w").write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}))
os.makedirs("image", exist_ok=True)
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
    folder = tmp_path_factory.mktemp("occlum-bin")
    for name, text in (("occlum", OCCLUM_TOOL), ("copy_bom", COPY_BOM_TOOL)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def which_in(folder: Path):  # type: ignore[no-untyped-def]
    return lambda name: str(folder / name) if (folder / name).exists() else None


def small_spec(tmp_path: Path) -> ImageSpec:
    lib = tmp_path / "env" / "lib"
    lib.mkdir(parents=True)
    (lib / 'odd "name".py').write_text("")
    return ImageSpec(
        name="python-kernel",
        entrypoint=sys.executable,
        argv=(sys.executable, "-s", "-m", "teelab.kernel.boot"),
        env={"HOME": f"{TEE_TMP}/home", "PYTHONPYCACHEPREFIX": f"{TEE_STATE}/pycache"},
        passthrough_env=("TEELAB_BOOT_REQUEST",),
        trusted=(sys.executable, str(lib)),
        isv_prod_id=2,
        isv_svn=5,
    )


def test_os_boundary_occlum_json_key_by_key_at_the_os_boundary(tmp_path: Path) -> None:
    with HashCache() as cache:
        manifest = expand(small_spec(tmp_path), cache)
    base = json.loads(json.dumps(TEMPLATE))
    base["resource_limits"]["user_space_max_size"] = "1200MB"
    config = occlum_json(manifest, OcclumOptions(), base)
    limits = config["resource_limits"]
    assert limits["user_space_size"] == limits["user_space_max_size"] == "6GB"
    assert limits["kernel_space_heap_size"] == limits["kernel_space_heap_max_size"] == "512MB"
    assert limits["kernel_space_stack_size"] == "1MB" and limits["max_num_of_threads"] >= 64
    assert config["process"]["default_stack_size"] == "8MB"
    assert config["entry_points"] == ["/teelab/bin"]
    assert config["env"]["default"] == [
        "HOME=/teelab/tmp/home",
        "PYTHONPYCACHEPREFIX=/teelab/state/pycache",
        "PYTHONNOUSERSITE=1",
    ]
    assert config["env"]["untrusted"] == ["TEELAB_BOOT_REQUEST"]
    metadata = config["metadata"]
    assert metadata["debuggable"] is False and metadata["disable_log"] is True
    assert (metadata["product_id"], metadata["version_number"]) == (2, 5)
    assert config["feature"]["enable_edmm"] is False
    assert {"target": "/teelab/tmp", "type": "ramfs"} in config["mount"]
    assert config["mount"][0]["type"] == "unionfs"  # the installed root file system is kept
    debug = occlum_json(manifest, OcclumOptions(debug=True))
    assert debug["metadata"]["debuggable"] is True and debug["metadata"]["disable_log"] is False
    with pytest.raises(EnclaveError, match="at least 64"):
        occlum_json(manifest, OcclumOptions(max_num_of_threads=32))


def test_os_boundary_copy_bom_lists_every_trusted_file_at_its_own_path(tmp_path: Path) -> None:
    with HashCache() as cache:
        manifest = expand(small_spec(tmp_path), cache)
    paths = [f.path for f in manifest.trusted_files]
    document = yaml.safe_load(copy_bom(paths, interpreter="/opt/python/bin/python3.11"))
    assert document["includes"] == ["base.yaml"]
    listed = {
        (target["target"], file)
        for target in document["targets"]
        for step in target["copy"]
        for file in step["files"]
    }
    for path in [*paths, "/opt/python/bin/python3.11"]:
        assert (str(Path(path).parent), path) in listed


def test_os_boundary_the_launcher_ignores_the_hosts_command_line(tmp_path: Path) -> None:
    """Occlum does not measure argv: whatever the host adds, the launcher runs the image's module only."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "fakeboot.py").write_text(
        "import json, sys\nprint(json.dumps({'argv': sys.argv, 'name': __name__}))\n"
    )
    with HashCache() as cache:
        manifest = expand(small_spec(tmp_path), cache)
    sys_path = [*OcclumBackend._sys_path(sys.executable), str(modules)]
    script = launcher_script(manifest, interpreter=sys.executable, sys_path=sys_path, module="fakeboot")
    launcher = tmp_path / "launcher"
    launcher.write_text(script)
    launcher.chmod(0o755)
    done = subprocess.run(
        [str(launcher), "-c", "print('host code')", "--evil"], capture_output=True, text=True, check=True
    )
    ran = json.loads(done.stdout)
    assert ran["name"] == "__main__" and ran["argv"] == [str(modules / "fakeboot.py")]
    assert "host code" not in done.stdout
    assert (
        launcher_script(manifest, interpreter="/usr/bin/python3", sys_path=[]).count("teelab.kernel.boot")
        == 1
    )


def test_os_boundary_build_refuses_no_key_and_occlums_public_test_key(
    tmp_path: Path, author_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["enclave", "build", "--backend", "occlum"]) == 2
    assert "author's key" in capsys.readouterr().err
    prefix = tmp_path / "occlum"
    (prefix / "etc" / "template").mkdir(parents=True)
    (prefix / "etc" / "template" / "Enclave.pem").write_bytes(author_key.read_bytes())
    backend = OcclumBackend(which=lambda _: None, occlum_prefix=prefix)
    with pytest.raises(UsageError, match="Occlum's public test key"):
        backend.build(small_spec(tmp_path), out=tmp_path / "image", signing_key=author_key)


def test_os_boundary_build_without_occlum_writes_the_inputs_and_says_what_to_install(
    tmp_path: Path, author_key: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    out = tmp_path / "image"
    code = main(
        ["enclave", "build", "--backend", "occlum", "--signing-key", str(author_key), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 1 and "occlum, copy_bom are not on PATH" in err and "install Occlum" in err
    assert {"Occlum.json", "teelab-image.yaml", "launcher.py"} <= {p.name for p in out.iterdir()}
    assert main(["enclave", "measure", "--backend", "occlum"]) == 1
    assert "needs Occlum" in capsys.readouterr().err


def test_os_boundary_build_and_launch_with_stand_in_occlum(
    tmp_path: Path, author_key: Path, stand_in_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{stand_in_bin}:{os.environ['PATH']}")
    out = tmp_path / "image"
    backend = OcclumBackend(which=which_in(stand_in_bin), occlum_prefix=tmp_path / "no-occlum")
    image = backend.build(kernel_image_spec(), out=out, signing_key=author_key)
    instance = out / "instance"
    calls = [json.loads(line) for line in (out / "occlum-calls.jsonl").read_text().splitlines()]
    calls += [json.loads(line) for line in (instance / "occlum-calls.jsonl").read_text().splitlines()]
    commands = [c["argv"][:2] for c in calls]
    assert ["new", str(instance)] in commands and ["build", "--sign-key"] in commands
    assert ["print", "mrenclave"] in commands and ["print", "mrsigner"] in commands
    copy = json.loads((instance / "copy_bom-call.json").read_text())
    assert copy["argv"][:4] == ["-f", str(out / "teelab-image.yaml"), "--root", "image"]
    config = json.loads((instance / "Occlum.json").read_text())
    assert config["resource_limits"]["user_space_max_size"] == "6GB"
    assert config["metadata"]["debuggable"] is False
    launcher = instance / "image" / "teelab" / "bin" / "python-kernel"
    assert (
        launcher.read_text().startswith(f"#!{os.path.realpath(sys.executable)}\n")
        and launcher.stat().st_mode & 0o111
    )
    assert (instance / "image" / "teelab" / "state").is_dir()
    key = serialization.load_pem_private_key(author_key.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert isinstance(image, OcclumImage) and image.mrsigner == mrsigner_of(key.public_key())
    assert image.mrenclave.hex() == (instance / "build" / ".mrenclave").read_text()
    loaded = backend.load_image("python-kernel", out)
    assert loaded.mrenclave == image.mrenclave
    monkeypatch.setenv("SECRET_ON_THE_HOST", "x")
    process = backend.launch(loaded, inputs={"TEELAB_BOOT_REQUEST": "r"})
    assert process.wait(timeout=60) == 0
    run = json.loads((instance / "occlum-calls.jsonl").read_text().splitlines()[-1])
    assert run["argv"] == ["run", "/teelab/bin/python-kernel"]
    assert run["env"]["TEELAB_BOOT_REQUEST"] == "r" and "SECRET_ON_THE_HOST" not in run["env"]


def test_os_boundary_occlum_binds_the_controller_into_configid_with_kss(
    tmp_path: Path, author_key: Path, stand_in_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Occlum's launcher sets CONFIGID (`occlum run --config-id <base64>`, KSS enabled in the measured
    Occlum.json): the stand-in records the value, which must be controller ‖ 32 zero bytes."""
    monkeypatch.setenv("PATH", f"{stand_in_bin}:{os.environ['PATH']}")
    out = tmp_path / "image"
    backend = OcclumBackend(which=which_in(stand_in_bin), occlum_prefix=tmp_path / "no-occlum")
    assert backend.binding is ControllerBinding.CONFIGID
    backend.build(small_spec(tmp_path), out=out, signing_key=author_key)
    instance = out / "instance"
    assert json.loads((instance / "Occlum.json").read_text())["metadata"]["enable_kss"] is True
    image = backend.load_image("python-kernel", out)
    assert isinstance(image, OcclumImage) and image.kss
    controller = hashlib.sha256(b"G.pub of this gateway").digest()
    assert backend.launch(image, inputs={}, controller=controller).wait(timeout=60) == 0
    run = json.loads((instance / "occlum-calls.jsonl").read_text().splitlines()[-1])
    assert run["argv"][:3] == ["run", "--config-id", base64.b64encode(controller + bytes(32)).decode()]
    assert run["argv"][3] == "/teelab/bin/python-kernel"
    assert backend.launch(image, inputs={}).wait(timeout=60) == 0  # no controller: CONFIGID stays zero
    assert json.loads((instance / "occlum-calls.jsonl").read_text().splitlines()[-1])["argv"] == [
        "run",
        "/teelab/bin/python-kernel",
    ]
    # An instance built before KSS (no "kss" in its image file) can only be bound by its measured image.
    document = json.loads((out / "image.json").read_text())
    del document["occlum"]["kss"]
    (out / "image.json").write_text(json.dumps(document))
    old = backend.load_image("python-kernel", out)
    assert isinstance(old, OcclumImage) and not old.kss
    with pytest.raises(EnclaveError, match="pins no controller"):
        backend.launch(old, inputs={}, controller=controller)
