"""The backend contract (issue 11 item 3): measure and the trust anchors are methods of every backend, the
gateway turns a backend's neutral root pins into its trust anchors, and the measurement binding of the
controller refuses an image that does not pin the launching gateway."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from teelab.enclave_runtime.backend import EnclaveBackend, RootPin
from teelab.enclave_runtime.backends import backend_names, get_backend, known_root_pins
from teelab.enclave_runtime.controller import CONTROLLER_ENV, pin_controller, refuse_other_controller
from teelab.enclave_runtime.hashcache import HashCache
from teelab.enclave_runtime.manifest import ImageSpec, expand
from teelab.enclave_runtime.sim.backend import SimBackend
from teelab.errors import EnclaveError
from teelab.gateway.anchors import INTEL_SGX_ROOT_CA
from teelab.gateway.verifier import default_anchors

CONTROLLER = hashlib.sha256(b"G.pub of gateway A").digest()
OTHER = hashlib.sha256(b"G.pub of gateway B").digest()


def probe_spec(tmp_path: Path, **env: str) -> ImageSpec:
    script = tmp_path / "probe.py"
    script.write_text("print('hello')\n")
    return ImageSpec(
        name="probe",
        entrypoint=sys.executable,
        argv=(sys.executable, "-s", str(script)),
        env={"PATH": "/usr/bin:/bin", **env},
        trusted=(sys.executable, str(script)),
    )


@pytest.mark.parametrize("name", backend_names())
def test_every_backend_has_measure_root_pins_and_a_controller_binding(name: str) -> None:
    backend = get_backend(name)
    assert isinstance(backend, EnclaveBackend)
    assert callable(backend.measure) and isinstance(backend.binding.value, str)
    if not backend.simulated:
        assert backend.root_pins() == ()  # real hardware chains to the production roots only


def test_sim_measure_is_the_mrenclave_its_build_gets(tmp_path: Path) -> None:
    backend = SimBackend()
    spec = probe_spec(tmp_path)
    measured = backend.measure(spec)
    assert measured.mrenclave == backend.build(spec, out=tmp_path / "image").mrenclave
    assert measured.manifest.name == "probe"


def test_the_gateway_pins_the_backends_root_as_simulated_and_keeps_the_production_roots(
    tmp_path: Path,
) -> None:
    assert known_root_pins() == ()  # no simulated platform yet in this data folder: nothing is created
    backend = SimBackend(tmp_path / "platform")
    (pin,) = backend.root_pins()
    assert pin.simulated and pin.sha256 == backend.platform.root_fingerprint
    anchors = default_anchors(backend.root_pins())
    assert anchors.simulated_roots == {pin.sha256: pin.label}
    assert INTEL_SGX_ROOT_CA in anchors.intel_roots
    extra = RootPin("ab" * 32, "a private Intel-format root", simulated=False)
    assert default_anchors([extra]).intel_roots["ab" * 32] == "a private Intel-format root"
    assert default_anchors([extra]).simulated_roots == {}


def test_default_anchors_know_the_default_sim_platform_once_it_exists() -> None:
    root = SimBackend().platform.root_fingerprint  # created on first use, in this test's data folder
    assert [p.sha256 for p in known_root_pins()] == [root]
    assert root in default_anchors().simulated_roots


def test_controller_measurement_binding_accepts_only_the_pinned_controller(tmp_path: Path) -> None:
    with HashCache(tmp_path / "hashes.sqlite") as cache:
        pinned = expand(pin_controller(probe_spec(tmp_path), CONTROLLER), cache)
        unpinned = expand(probe_spec(tmp_path), cache)
    assert dict(pinned.env)[CONTROLLER_ENV] == CONTROLLER.hex()
    assert pinned.mrenclave != unpinned.mrenclave  # the pin is measured
    refuse_other_controller(pinned, CONTROLLER, backend="gramine")
    refuse_other_controller(unpinned, None, backend="gramine")  # no controller: today's behaviour
    with pytest.raises(EnclaveError, match="pins the controller"):
        refuse_other_controller(pinned, OTHER, backend="gramine")
    with pytest.raises(EnclaveError, match="pins no controller"):
        refuse_other_controller(unpinned, CONTROLLER, backend="gramine")


def test_a_pin_the_host_could_override_is_no_pin(tmp_path: Path) -> None:
    spec = pin_controller(probe_spec(tmp_path), CONTROLLER)
    spec = ImageSpec(**{**spec.__dict__, "passthrough_env": (CONTROLLER_ENV,)})
    with HashCache(tmp_path / "hashes.sqlite") as cache:
        manifest = expand(spec, cache)
    with pytest.raises(EnclaveError, match="lets TEELAB_CONTROLLER in from the host"):
        refuse_other_controller(manifest, CONTROLLER, backend="occlum")
