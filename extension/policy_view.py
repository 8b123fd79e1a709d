"""Which appraisal policy a kernelspec's kernels are judged by, and that policy as JSON.

Resolution is the provisioner's own (:func:`teelab.kernel.policy_files.locate_policy`, fed the server's
``c.TeeProvisioner`` settings): the server's ``policy_file`` wins; otherwise the operator's policy folders,
then (unless ``allow_user_policies`` is off) the user's. The answer is read fresh on every request, as the
provisioner reads it on every kernel start.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from jupyter_client.kernelspec import KernelSpec
from traitlets.config import Config

from teelab.gateway.policy import AppraisalPolicy, load_policy
from teelab.kernel.policy_files import PolicyLocation, PolicySettings
from teelab.kernel.policy_files import locate_policy as _locate

PROVISIONER_NAME = "teelab"


def is_teelab_kernelspec(spec: KernelSpec) -> bool:
    provisioner = spec.metadata.get("kernel_provisioner")
    return isinstance(provisioner, dict) and provisioner.get("provisioner_name") == PROVISIONER_NAME


def locate_policy(kernel_name: str, server_config: Config) -> PolicyLocation:
    return _locate(kernel_name, PolicySettings.from_config(server_config))


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
