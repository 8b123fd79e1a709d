"""Which appraisal policy a kernelspec's kernels are judged by, and that policy as JSON.

Resolution follows the provisioner (:meth:`teelab.kernel.provisioner.TeeProvisioner._policy`): the server's
``c.TeeProvisioner.policy_file`` wins; otherwise the operator's policy folders, then (unless
``allow_user_policies`` is off) the user's. The answer is read fresh on every request, as the provisioner
reads it on every kernel start.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

from jupyter_client.kernelspec import KernelSpec
from traitlets.config import Config

from teelab.gateway.policy import AppraisalPolicy, load_policy
from teelab.kernel.policy_files import find_policy, policy_dirs
from teelab.kernel.provisioner import TeeProvisioner

PROVISIONER_NAME = "teelab"

PolicySource = Literal["server-config", "policy-folder"]


@dataclass(frozen=True)
class PolicyLocation:
    path: Path | None  # None when no policy file was found
    source: PolicySource | None
    searched: tuple[Path, ...]


def is_teelab_kernelspec(spec: KernelSpec) -> bool:
    provisioner = spec.metadata.get("kernel_provisioner")
    return isinstance(provisioner, dict) and provisioner.get("provisioner_name") == PROVISIONER_NAME


def locate_policy(kernel_name: str, server_config: Config) -> PolicyLocation:
    # The provisioner's traits as this server configures them; nothing is launched.
    provisioner = TeeProvisioner(config=server_config)
    if provisioner.policy_file:
        return PolicyLocation(Path(provisioner.policy_file), "server-config", ())
    allow_user = bool(provisioner.allow_user_policies)
    found = find_policy(kernel_name, allow_user=allow_user)
    searched = tuple(policy_dirs(allow_user=allow_user))
    return PolicyLocation(found, "policy-folder" if found else None, searched)


def policy_json(location: PolicyLocation, kernel_name: str) -> dict[str, object]:
    """Load the policy (a ConfigError when the file is broken) and describe it."""
    assert location.path is not None
    policy = load_policy(location.path)
    return {
        "kernel": kernel_name,
        "path": str(location.path),
        "source": location.source,
        "id": policy.id,
        "digest": policy.digest,
        "settings": settings_json(policy),
    }


def settings_json(policy: AppraisalPolicy) -> dict[str, object]:
    """The policy's settings, field by field (id and digest are reported beside them)."""
    raw = dataclasses.asdict(policy)
    return {key: _jsonable(value) for key, value in raw.items() if key not in ("id", "digest")}


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, timedelta):
        return int(value.total_seconds())
    if isinstance(value, bytes):
        return value.hex()
    return value
