"""TeeCluster's defaults inside a teelab kernel (teelab.dask.own_kernel): the kernel's own image, checked against
its verified measurement, and a policy pinning exactly that measurement. Outside a kernel: today's defaults.

The end-to-end case (a cluster made in the attested sim kernel with no image and no policy, reading a sealed
dataset) is tests/kernel/test_dask_notebook.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import teelab.session
from teelab.dask.controller import kernel_image, resolve_policy
from teelab.dask.own_kernel import OwnKernel, own_kernel, own_measurement_policy
from teelab.enclave_runtime.backends import get_backend
from teelab.enclave_runtime.images import KERNEL_IMAGE
from teelab.enclave_runtime.launching import launched_image_dir
from teelab.errors import ConfigError
from tests.dask.conftest import DaskEnv

SIGNER = "ab" * 32
OTHER = "11" * 32


def sgx_result(mrenclave: str, *, simulated: bool = True, **extra: Any) -> dict[str, Any]:
    claims = {"mrenclave": mrenclave, "mrsigner": SIGNER, "isv_prod_id": 7, "debug": False}
    return {"tee": "sgx", "simulated": simulated, "tcb_status": "UpToDate", "claims": claims, **extra}


def test_the_policy_pins_exactly_the_kernels_own_measured_identity() -> None:
    policy = own_measurement_policy(sgx_result("cd" * 32), "sim")
    assert policy.sgx is not None
    assert policy.sgx.mrenclave == ("cd" * 32,) and policy.sgx.mrsigner == (SIGNER,)
    assert policy.sgx.isv_prod_id == 7
    assert policy.allow_simulation and not policy.allow_debug
    assert policy.accepted_tcb_statuses == ("UpToDate",) and policy.tdx is None and policy.snp is None
    policy.require_identity_pin("gramine")  # a real-TEE pin, not only a simulated one


def test_simulation_debug_and_tcb_are_allowed_only_as_the_kernel_itself_was_accepted() -> None:
    hardware = own_measurement_policy(sgx_result("cd" * 32, simulated=False), "gramine")
    assert not hardware.allow_simulation
    result = sgx_result(
        "cd" * 32, simulated=False, tcb_status="SWHardeningNeeded", advisory_ids=["INTEL-SA-1"]
    )
    result["claims"]["debug"] = True
    own = own_measurement_policy(result, "gramine")
    assert own.allow_debug and own.accepted_tcb_statuses == ("UpToDate", "SWHardeningNeeded")
    assert own.accepted_advisory_ids == ("INTEL-SA-1",)


def test_confidential_vms_pin_their_launch_measurement() -> None:
    tdx = own_measurement_policy({"tee": "tdx", "claims": {"mrtd": "aa" * 48}}, "cvm")
    assert tdx.tdx is not None and tdx.tdx.mrtd == ("aa" * 48,) and tdx.sgx is None
    snp = own_measurement_policy({"tee": "sev-snp", "claims": {"measurement": "bb" * 48}}, "cvm")
    assert snp.snp is not None and snp.snp.measurement == ("bb" * 48,)


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ({"tee": None, "claims": {}}, "names no TEE"),
        ({"tee": "sgx", "claims": {"mrenclave": "cd" * 32}}, "lacks the measured identity"),
        ({"tee": "tdx", "claims": {"mrtd": "not hex"}}, "tdx.mrtd"),
    ],
)
def test_an_attestation_without_a_pinnable_identity_is_a_config_error_with_a_hint(
    result: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        own_measurement_policy(result, "sim")
    assert raised.value.hint


def test_the_image_folder_is_where_the_launcher_placed_the_tee_state() -> None:
    assert launched_image_dir("/data/images/sim/env/python-kernel/tee-state/pycache") == Path(
        "/data/images/sim/env/python-kernel"
    )
    for prefix in ("", "/usr/lib/pycache", "/x/tee-state/other", "images/tee-state/pycache"):
        assert launched_image_dir(prefix) is None, prefix


def test_outside_a_kernel_there_are_no_own_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(teelab.session, "_state", None)
    assert own_kernel("sim") is None
    # An attested session installed in a process outside any TEE (a test's stand-in) is no kernel either.
    teelab.session.install(sgx_result("cd" * 32))
    assert own_kernel("sim") is None


def own(env: DaskEnv, measurement: str, image_dir: Path | None) -> OwnKernel:
    backend = get_backend("sim")
    return OwnKernel(backend, image_dir, measurement, own_measurement_policy(sgx_result(measurement), "sim"))


def test_the_kernels_own_image_is_used_only_if_it_has_the_kernels_measurement(dask_env: DaskEnv) -> None:
    backend = get_backend("sim")
    folder = backend.image_dir(KERNEL_IMAGE)
    assert kernel_image(backend, None, own(dask_env, dask_env.mrenclave, folder)).mrenclave.hex() == (
        dask_env.mrenclave
    )
    # The host placed another image where the kernel's launch says its image is: refused before any launch.
    with pytest.raises(ConfigError, match="not the one this kernel runs in") as raised:
        kernel_image(backend, None, own(dask_env, OTHER, folder))
    assert OTHER in raised.value.message and dask_env.mrenclave in raised.value.message
    assert "image=" in (raised.value.hint or "")
    with pytest.raises(ConfigError, match="which image folder") as raised:
        kernel_image(backend, None, own(dask_env, dask_env.mrenclave, None))
    assert raised.value.hint


def test_in_a_kernel_the_default_policy_is_its_own_and_outside_todays(dask_env: DaskEnv) -> None:
    backend = get_backend("sim")
    inside = resolve_policy(None, backend, None, own(dask_env, OTHER, None))
    assert inside.sgx is not None and inside.sgx.mrenclave == (OTHER,)
    outside = resolve_policy(None, backend, None)  # the image `teelab kernel install` built here
    assert outside.sgx is not None and outside.sgx.mrenclave == (dask_env.mrenclave,)


@pytest.mark.slow
def test_a_node_of_another_image_fails_the_own_measurement_policy(dask_env: DaskEnv) -> None:
    """Were the host to swap the image after the check, the nodes launched from it are of another measurement
    than the kernel's: the pinned policy refuses each at check ``policy.mrenclave`` before anything is sealed."""
    from teelab.dask import TeeCluster

    with pytest.raises(RuntimeError, match=r"policy\.mrenclave"):
        TeeCluster(n_workers=0, backend="sim", policy=own_measurement_policy(sgx_result(OTHER), "sim"))


def test_outside_the_simulated_tee_the_sibling_backend_is_the_default_one(dask_env: DaskEnv) -> None:
    """Inside the sim TEE it is the platform the kernel runs on (the notebook test's workers release keys from the
    key broker that trusts only that platform's root); outside, the user's default platform, as before."""
    from teelab.enclave_runtime.backends import sibling_backend

    assert sibling_backend("sim").describe() == get_backend("sim").describe()
    assert sibling_backend("sim").describe().endswith(str(dask_env.data / "sim-platform"))
