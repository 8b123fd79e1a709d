"""Which appraisal policy judges a kernelspec's kernels: the one place that decides it.

Policies are operator-owned files, never kernelspec metadata. ``teelab kernel install`` writes ``<name>.toml``
into a policy folder beside the kernelspec's install location. A server's own configuration
(``c.TeeProvisioner.policy_file``) wins; otherwise the system folders are searched first (an operator's
policy wins), then, unless the operator turned it off (``c.TeeProvisioner.allow_user_policies``), the user's
configuration folder. The provisioner (every kernel start) and the server extension's policy view both call
:func:`locate_policy`.

A policy that ``teelab kernel install`` *generated* for the simulated backend pins the image signed with the
signing key of one data folder (``TEELAB_DATA_DIR``) — MRSIGNER is that key's hash — so it describes one
simulated platform and nothing else. Its header records that folder (:func:`sim_data_dir_marker`), and the
search skips it when teelab runs with another data folder: a benchmark or test that isolates its data and
configuration folders is not judged by the policy ``make demo`` installed into the environment for the
user's own data folder. Policies an operator wrote (``--policy FILE``) carry no such line and always apply.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from teelab.errors import ConfigError
from teelab.gateway.policy import AppraisalPolicy, load_policy
from teelab.paths import config_dir, data_dir

SYSTEM_POLICY_DIRS = (Path("/etc/teelab/policies"), Path("/usr/local/etc/teelab/policies"))
_SIM_MARKER = "# teelab: generated for the simulated platform of data folder "
_HEADER_LINES = 8  # the marker is in the generated header; never scan a whole (possibly huge) file

PolicySource = Literal["server-config", "policy-folder"]


@dataclass(frozen=True)
class PolicyLocation:
    path: Path | None  # None when no policy file was found
    source: PolicySource | None
    searched: tuple[Path, ...]


@dataclass(frozen=True)
class PolicySettings:
    """The server's say in the lookup (the provisioner's ``policy_file`` and ``allow_user_policies``)."""

    policy_file: str | None = None
    allow_user_policies: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, object] | None) -> PolicySettings:
        """The settings a server's traitlets configuration gives ``TeeProvisioner`` (nothing is launched)."""
        section = config.get("TeeProvisioner") if config is not None else None
        if not isinstance(section, Mapping):
            return cls()
        policy_file, allow_user = section.get("policy_file"), section.get("allow_user_policies", True)
        if isinstance(allow_user, str):  # from the command line (traitlets defers parsing to the trait)
            allow_user = {"true": True, "1": True, "false": False, "0": False}.get(
                allow_user.lower(), allow_user
            )
        if policy_file is not None and not isinstance(policy_file, str | os.PathLike):
            raise ConfigError("c.TeeProvisioner.policy_file must be a path")
        if not isinstance(allow_user, bool):
            raise ConfigError("c.TeeProvisioner.allow_user_policies must be True or False")
        return cls(os.fspath(policy_file) if policy_file is not None else None, allow_user)


def sys_prefix_policy_dir() -> Path:
    return Path(sys.prefix) / "etc" / "teelab" / "policies"


def user_policy_dir() -> Path:
    return config_dir() / "policies"


def policy_dirs(*, allow_user: bool) -> list[Path]:
    dirs = [sys_prefix_policy_dir(), *SYSTEM_POLICY_DIRS]
    if allow_user:
        dirs.append(user_policy_dir())
    return dirs


def sim_data_dir_marker(folder: Path | None = None) -> str:
    """The header line of a generated sim policy: the data folder whose signing key and platform it pins."""
    return _SIM_MARKER + str((folder or data_dir()).resolve())


def _generated_for(path: Path) -> Path | None:
    """The data folder a generated sim policy was made for (None for any other policy)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as text:
            for _, line in zip(range(_HEADER_LINES), text, strict=False):
                if line.startswith(_SIM_MARKER):
                    return Path(line[len(_SIM_MARKER) :].rstrip("\n"))
    except OSError:
        return None
    return None


def _applies(path: Path) -> bool:
    made_for = _generated_for(path)
    return made_for is None or made_for == data_dir().resolve()


def find_policy(kernel_name: str, *, allow_user: bool) -> Path | None:
    for folder in policy_dirs(allow_user=allow_user):
        candidate = folder / f"{kernel_name}.toml"
        if candidate.is_file() and _applies(candidate):
            return candidate
    return None


def locate_policy(kernel_name: str, settings: PolicySettings) -> PolicyLocation:
    if settings.policy_file:
        return PolicyLocation(Path(settings.policy_file), "server-config", ())
    allow_user = settings.allow_user_policies
    found = find_policy(kernel_name, allow_user=allow_user)
    searched = tuple(policy_dirs(allow_user=allow_user))
    return PolicyLocation(found, "policy-folder" if found else None, searched)


def load_kernel_policy(kernel_name: str, settings: PolicySettings) -> AppraisalPolicy:
    """The policy kernel ``kernel_name`` is judged by; a ConfigError saying where it looked when there is none."""
    location = locate_policy(kernel_name, settings)
    if location.path is None:
        searched = ", ".join(str(d) for d in location.searched)
        skipped = [
            str(d / f"{kernel_name}.toml") for d in location.searched if (d / f"{kernel_name}.toml").is_file()
        ]
        other = f"; {', '.join(skipped)} pins another data folder's simulated platform" if skipped else ""
        raise ConfigError(
            f"no attestation policy for kernel {kernel_name!r} (looked for {kernel_name}.toml in {searched}{other})",
            hint=f"install one with `teelab kernel install --name {kernel_name} --policy FILE`",
        )
    return load_policy(location.path)
