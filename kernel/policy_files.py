"""Where a kernelspec's attestation policy lives: operator-owned files, never kernelspec metadata.

``teelab kernel install`` writes ``<name>.toml`` into a policy folder beside the kernelspec's install
location. The provisioner looks for the policy of kernel ``<name>`` in the system folders first (an
operator's policy wins) and then, unless the operator disabled it, in the user's configuration folder.
A server's own configuration (``c.TeeProvisioner.policy_file``) overrides all of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from teelab.paths import config_dir

SYSTEM_POLICY_DIRS = (Path("/etc/teelab/policies"), Path("/usr/local/etc/teelab/policies"))


def sys_prefix_policy_dir() -> Path:
    return Path(sys.prefix) / "etc" / "teelab" / "policies"


def user_policy_dir() -> Path:
    return config_dir() / "policies"


def policy_dirs(*, allow_user: bool) -> list[Path]:
    dirs = [sys_prefix_policy_dir(), *SYSTEM_POLICY_DIRS]
    if allow_user:
        dirs.append(user_policy_dir())
    return dirs


def find_policy(kernel_name: str, *, allow_user: bool) -> Path | None:
    for folder in policy_dirs(allow_user=allow_user):
        candidate = folder / f"{kernel_name}.toml"
        if candidate.is_file():
            return candidate
    return None
