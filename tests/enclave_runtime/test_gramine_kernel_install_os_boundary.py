"""`teelab kernel install --backend gramine` pins this gateway's controller in the measured image.

Upstream Gramine has no KSS: the launcher cannot set CONFIGID, so a Gramine kernel is bound to its controller by
measurement — the image names the gateway it obeys, and the launch refuses an image naming another (or none) when
the gateway passes its controller. An install that built an unpinned image would give a kernel every start of
which is refused. With the stand-in Gramine tools of test_gramine_build_os_boundary (teelab's side of the boundary
only).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from teelab.cli import main
from teelab.enclave_runtime.controller import CONTROLLER_ENV
from teelab.enclave_runtime.gramine.backend import GramineBackend
from teelab.enclave_runtime.images import KERNEL_IMAGE
from teelab.errors import EnclaveError
from teelab.gateway.identity import GatewayIdentity

from .test_gramine_build_os_boundary import author_key, stand_in_bin, stand_in_gramine  # noqa: F401  (fixtures)


def test_os_boundary_kernel_install_pins_the_gateways_controller_in_a_gramine_image(
    tmp_path: Path,
    author_key: Path,  # noqa: F811
    stand_in_gramine: Path,  # noqa: F811
    shared_cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, folder in (
        ("TEELAB_DATA_DIR", "data"),
        ("TEELAB_CONFIG_DIR", "config"),
        ("JUPYTER_DATA_DIR", "jupyter"),
    ):
        monkeypatch.setenv(name, str(tmp_path / folder))
    monkeypatch.setenv("TEELAB_CACHE_DIR", str(shared_cache_dir))
    policy = tmp_path / "policy.toml"
    policy.write_text(f'id = "gramine-kernel"\n[sgx]\nmrenclave = ["{"ab" * 32}"]\n')
    identity_file = tmp_path / "gateway.pem"
    code = main(
        [
            "kernel",
            "install",
            "--user",
            "--backend",
            "gramine",
            "--policy",
            str(policy),
            "--signing-key",
            str(author_key),
            "--identity-file",
            str(identity_file),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    controller = GatewayIdentity.load_or_create(identity_file).controller
    assert f"controller     {controller.hex()} (pinned in the measured image)" in out
    said = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    backend = GramineBackend()
    image = backend.load_image(KERNEL_IMAGE, Path(said["image"]))
    assert dict(image.manifest.env)[CONTROLLER_ENV] == controller.hex()
    # The gateway of this identity can launch it; the launch for any other gateway's controller is refused.
    assert backend.launch(image, inputs={}, controller=controller).wait(timeout=60) == 0
    record = json.loads((image.path / "launch.json").read_text())
    assert record["argv"][-1] == KERNEL_IMAGE
    other = hashlib.sha256(b"another gateway").digest()
    with pytest.raises(EnclaveError, match="pins the controller"):
        backend.launch(image, inputs={}, controller=other)
