"""Host agents named by a kernelspec (issue 15): within the operator's allow-list, from system-wide kernelspecs.

A kernelspec is user-writable wherever the user can write; kernel.kernelspec hosts must not let it send kernels
(their code, the session's data keys) to a machine the operator never approved (kernel/host_pool.py).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from teelab.errors import ConfigError
from teelab.kernel.errors import KernelMisconfigured
from teelab.kernel.host_pool import kernelspec_pool

from . import test_remote_hosts as remote
from .conftest import KernelEnv

agents, remote_env = remote.agents, remote.remote_env  # the fixtures, for this module's tests
Agent = remote.Agent
UNAPPROVED = "grpc://127.0.0.9:7700"


def install_spec(kernel_env: KernelEnv, folder: Path, name: str, **config: object) -> Path:
    """The teelab-remote kernelspec as ``name`` in ``folder``/kernels, its provisioner config extended, and the
    operator's policy for it (a copy of the session's)."""
    source = kernel_env.jupyter_data / "kernels" / remote.REMOTE
    target = folder / "kernels" / name
    shutil.copytree(source, target)
    spec = json.loads((target / "kernel.json").read_text())
    spec["metadata"]["kernel_provisioner"]["config"].update(config)
    (target / "kernel.json").write_text(json.dumps(spec))
    (target / "kernel.json").chmod(0o644)
    shutil.copyfile(kernel_env.policy, kernel_env.policy.parent / f"{name}.toml")
    return target


@pytest.fixture
def system_dir(
    tmp_path: Path, remote_env: Path, kernel_env: KernelEnv, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A folder standing in for /usr/local/share/jupyter (the test cannot write there), on Jupyter's path."""
    folder = tmp_path / "system-jupyter"
    (folder / "kernels").mkdir(parents=True)
    monkeypatch.setenv("JUPYTER_PATH", str(folder))
    yield folder
    for spec in (folder / "kernels").iterdir():
        (kernel_env.policy.parent / f"{spec.name}.toml").unlink(missing_ok=True)


def test_a_system_kernelspec_sends_its_kernels_to_its_own_approved_host(
    agents: Callable[..., Agent], remote_env: Path, kernel_env: KernelEnv, system_dir: Path
) -> None:
    (_, first), (_, second) = agents("127.0.0.2"), agents("127.0.0.3")
    install_spec(kernel_env, system_dir, "teelab-remote-b", hosts=[second])
    km = remote.manager(
        remote_env,
        first,
        kernel_name="teelab-remote-b",
        allowed_hosts=[second],
        system_kernelspec_dirs=[str(system_dir / "kernels")],
    )
    km.start_kernel()
    try:
        assert km.get_connection_info()["ip"] == "127.0.0.3"  # the kernelspec's host, not the operator's pool
        assert remote.run_cell(km, "print('on b')").strip() == "on b"
    finally:
        km.shutdown_kernel(now=True)


def test_a_user_kernelspec_naming_an_unapproved_host_is_refused(
    agents: Callable[..., Agent], remote_env: Path, kernel_env: KernelEnv, system_dir: Path
) -> None:
    _, first = agents("127.0.0.2")
    user_spec = install_spec(kernel_env, kernel_env.jupyter_data, "teelab-remote-evil", host=UNAPPROVED)
    try:
        km = remote.manager(
            remote_env,
            first,
            kernel_name="teelab-remote-evil",
            system_kernelspec_dirs=[str(system_dir / "kernels")],
        )
        with pytest.raises(KernelMisconfigured) as refused:
            km.start_kernel()
        message = refused.value.message
        assert "refusing the kernelspec 'teelab-remote-evil'" in message
        assert f"has not approved ({UNAPPROVED}" in message
        assert "is not installed system-wide" in message
        listing = remote._call(first, "List", remote.host_pb2.ListRequest())
        assert isinstance(listing, remote.host_pb2.ListReply) and listing.running == 0
    finally:
        shutil.rmtree(user_spec)
        (kernel_env.policy.parent / "teelab-remote-evil.toml").unlink()


def test_the_operator_rules_for_kernelspec_hosts(tmp_path: Path) -> None:
    system, home = tmp_path / "system" / "kernels", tmp_path / "home" / "kernels"
    for folder in (system / "spec", home / "spec"):
        folder.mkdir(parents=True)
        (folder / "kernel.json").write_text("{}")
        (folder / "kernel.json").chmod(0o644)
    approved, other = "grpcs://tee-a.example:7700", "grpcs://tee-b.example:7700"

    def pool(hosts: list[str], spec: Path, mode: str = "system") -> list[str]:
        return kernelspec_pool(
            hosts,
            kernelspec="spec",
            resource_dir=str(spec),
            operator_hosts=[other],
            allowed_hosts=[approved],
            mode=mode,
            system_dirs=[str(system)],
        )

    assert pool([approved], system / "spec") == [approved]
    assert pool(["grpcs://tee-a.example:07700"], system / "spec") == ["grpcs://tee-a.example:07700"]
    with pytest.raises(ConfigError, match="is not installed system-wide"):
        pool([approved], home / "spec")
    assert pool([approved], home / "spec", mode="any") == [approved]  # the operator's choice
    with pytest.raises(ConfigError, match="has not approved"):
        pool(["grpcs://tee-evil.example:7700"], system / "spec", mode="any")
    with pytest.raises(ConfigError, match="lets no kernelspec choose"):
        pool([approved], system / "spec", mode="never")
    with pytest.raises(ConfigError, match="plaintext"):
        pool(["grpc://tee-a.example:7700"], system / "spec")
    # A symlink from the system folder into a home is where it points; a group-writable spec is not the
    # administrator's alone.
    (system / "linked").symlink_to(home / "spec")
    with pytest.raises(ConfigError, match="is not installed system-wide"):
        pool([approved], system / "linked")
    (system / "spec" / "kernel.json").chmod(0o664)
    with pytest.raises(ConfigError, match="is not installed system-wide"):
        pool([approved], system / "spec")
