"""KubeSpawner for confidential containers: single-user pods in Kata/CoCo TEEs, with no secret in the pod spec.

What it sets (docs/hosted-hub.md, "Kubernetes with confidential containers"):

- ``runtimeClassName`` (KubeSpawner has no trait for it: ``extra_pod_config``): ``kata-qemu-snp`` (SEV-SNP),
  ``kata-qemu-tdx`` (TDX) or ``kata-qemu-coco-dev`` (CoCo without a TEE, for trying the plumbing only);
- the Kata/CoCo **init-data** annotation ``io.katacontainers.config.hypervisor.cc_init_data`` (Kata 3.x's
  ``KATA_ANNO_CFG_HYPERVISOR_INIT_DATA``; peer pods once read ``...config.runtime.cc_init_data``, which is
  checked the same way): gzip+base64 of an
  ``initdata.toml`` whose ``[data]`` holds only public values — the controller hash ``SHA-256(G_h.pub)`` of the
  hub's TeeSpawner and the digest of the hub's server policy (and the Kata agent policy, if given). The
  platform binds the TOML's digest into the evidence at launch (SEV-SNP ``HOST_DATA`` = SHA-256 of it, TDX
  ``MRCONFIGID`` = SHA-384 of it: :meth:`ConfidentialPods.init_data_digest`), so the controller is bound by
  the platform as the controller rule requires, one hash removed;
- ``automount_service_account_token = False`` (a Kubernetes API credential would be a secret in the pod);
- ``modify_pod_hook = strip_secrets``: whatever KubeSpawner put there, the pod leaves without
  ``JUPYTERHUB_API_TOKEN``/``JPY_API_TOKEN`` (the hub token, which is also the OAuth client secret), the
  ``internal_ssl`` key's Secret volume, or any other secret; TeeSpawner hands them to the attested server sealed
  instead. A pod that would still carry something secret-looking is refused (:class:`PodSecretError`).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from teelab.errors import ConfigError

RUNTIME_CLASSES = {"kata-qemu-snp": "sev-snp", "kata-qemu-tdx": "tdx", "kata-qemu-coco-dev": "none"}
INIT_DATA_ANNOTATION = "io.katacontainers.config.hypervisor.cc_init_data"
# The name OpenShift sandboxed containers <= 1.9 (peer pods) read: treated like the current one.
LEGACY_INIT_DATA_ANNOTATION = "io.katacontainers.config.runtime.cc_init_data"
INIT_DATA_ANNOTATIONS = (INIT_DATA_ANNOTATION, LEGACY_INIT_DATA_ANNOTATION)
DIGESTS = ("sha256", "sha384", "sha512")
MAX_INIT_DATA_TOML = 1024 * 1024  # decompressed; an agent policy from genpolicy is tens of KiB
INIT_DATA_VERSION = "0.1.0"
TEELAB_INIT_DATA = "teelab.toml"
AGENT_POLICY = "policy.rego"
# What KubeSpawner (or internal_ssl) would put in a single-user pod that TeeSpawner seals to the server instead.
SECRET_ENV = frozenset(
    {
        "JUPYTERHUB_API_TOKEN",
        "JPY_API_TOKEN",
        "JUPYTERHUB_SSL_KEYFILE",
        "JUPYTERHUB_SSL_CERTFILE",
        "JUPYTERHUB_SSL_CLIENT_CA",
        "TEELAB_KBS_TOKEN",
    }
)
# Anything else whose name says it is a credential is refused rather than guessed about.
SECRETISH = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|(^|_)KEY(FILE)?$", re.IGNORECASE)
TEE_KUBE_SPAWNER = "teelab.extension.hub.kube_spawner.TeeKubeSpawner"
# Where a TeeKubeSpawner pod's boot listens for the hub, and answers re-challenges (the pod's own ports).
BOOT_PORT = 8890
CHALLENGE_PORT = 8891
# Z2JH labels: the hub's pod may reach single-user pods; single-user pods carry component=singleuser-server.
HUB_ACCESS = {"hub.jupyter.org/network-access-singleuser": "true"}
SINGLEUSER = {"component": "singleuser-server"}
STRIP_HOOK = "from teelab.extension.hub.kubernetes import strip_secrets\nc.KubeSpawner.modify_pod_hook = strip_secrets\n"


class PodSecretError(ConfigError):
    """A single-user pod would carry a secret in its spec (env, volume, annotation)."""


@dataclass(frozen=True)
class ConfidentialPods:
    """How single-user pods run in confidential containers, and what their init-data binds."""

    runtime_class: str
    controller: bytes  # SHA-256(G_h.pub) of the hub's TeeSpawner identity
    policy_digest: str  # SHA-256 (hex) of the hub's policy for the servers
    agent_policy: str | None = None  # the Kata agent policy (Rego) genpolicy made for the pod; public
    # The init-data's hash; None: SHA-384 for TDX (fills MRCONFIGID), SHA-256 for SEV-SNP. TeeKubeSpawner uses
    # SHA-256 everywhere: Kata pads it with zeros in MRCONFIGID, the controller rule's encoding, which the boot
    # reads back as a 32-byte launch field (TeeRuntime.controller()).
    digest: str | None = None

    def __post_init__(self) -> None:
        if self.runtime_class not in RUNTIME_CLASSES:
            raise ConfigError(
                f"unknown runtime class {self.runtime_class!r}", hint=f"one of {', '.join(RUNTIME_CLASSES)}"
            )
        if len(self.controller) != 32:
            raise ConfigError("the controller hash is SHA-256(G.pub): 32 bytes")
        if not re.fullmatch(r"[0-9a-f]{64}", self.policy_digest):
            raise ConfigError("the policy digest is a SHA-256 in lower-case hex")
        if self.digest is not None and self.digest not in DIGESTS:
            raise ConfigError(
                f"unknown init-data digest {self.digest!r}", hint=f"one of {', '.join(DIGESTS)}"
            )

    @property
    def algorithm(self) -> str:
        """The init-data digest: TDX's MRCONFIGID holds 48 bytes (SHA-384), SEV-SNP's HOST_DATA 32 (SHA-256)."""
        if self.digest is not None:
            return self.digest
        return "sha384" if RUNTIME_CLASSES[self.runtime_class] == "tdx" else "sha256"

    def init_data_toml(self) -> str:
        teelab = f"controller = {json.dumps(self.controller.hex())}\npolicy_digest = {json.dumps(self.policy_digest)}\n"
        data = {TEELAB_INIT_DATA: teelab}
        if self.agent_policy is not None:
            data[AGENT_POLICY] = self.agent_policy
        # JSON strings are TOML basic strings (escapes included), so any text is quoted safely.
        entries = "".join(f"{json.dumps(name)} = {json.dumps(text)}\n" for name, text in data.items())
        return f'version = "{INIT_DATA_VERSION}"\nalgorithm = "{self.algorithm}"\n\n[data]\n{entries}'

    def init_data_annotation(self) -> str:
        """gzip (mtime 0: the same bytes every time) and base64, as CoCo reads the annotation."""
        return base64.b64encode(gzip.compress(self.init_data_toml().encode(), mtime=0)).decode()

    def init_data_digest(self) -> bytes:
        """What the platform reports for this init-data (HOST_DATA / MRCONFIGID, zero-padded to the field)."""
        return hashlib.new(self.algorithm, self.init_data_toml().encode()).digest()

    def kubespawner_traits(self) -> dict[str, Any]:
        return {
            "extra_pod_config": {"runtimeClassName": self.runtime_class},
            "extra_annotations": {INIT_DATA_ANNOTATION: self.init_data_annotation()},
            "automount_service_account_token": False,
        }

    def z2jh_values(self) -> dict[str, Any]:
        """Zero to JupyterHub Helm values (``hub.config`` sets traits; the hook comes by ``extraConfig``)."""
        return {
            "hub": {
                "config": {"KubeSpawner": self.kubespawner_traits()},
                "extraConfig": {"teelab-confidential-pods": STRIP_HOOK},
            }
        }

    def tee_kube_spawner_values(
        self, *, boot_port: int = BOOT_PORT, challenge_port: int = CHALLENGE_PORT, internal_ssl: bool = False
    ) -> dict[str, Any]:
        """Helm values for :class:`~teelab.extension.hub.kube_spawner.TeeKubeSpawner`: it makes each pod's
        init-data itself (for the user's policy), so only the runtime class and the ports are configuration;
        the network policies let the hub reach the boot's two ports (Z2JH allows only the server's port).
        ``internal_ssl``: the hub, the proxy and each server speak TLS, the server's with its attested in-TEE
        key (the proxy must run where JupyterHub's certificates are: docs/hosted-hub.md)."""
        ports = [{"port": boot_port, "protocol": "TCP"}, {"port": challenge_port, "protocol": "TCP"}]
        hub_traits: dict[str, Any] = {"spawner_class": TEE_KUBE_SPAWNER}
        if internal_ssl:
            hub_traits["internal_ssl"] = True
        return {
            "hub": {
                "config": {
                    "JupyterHub": hub_traits,
                    "TeeKubeSpawner": {
                        "runtime_class": self.runtime_class,
                        "boot_port": boot_port,
                        "challenge_port": challenge_port,
                    },
                    "KubeSpawner": {"automount_service_account_token": False},
                },
                "networkPolicy": {
                    "egress": [{"to": [{"podSelector": {"matchLabels": SINGLEUSER}}], "ports": ports}]
                },
            },
            "singleuser": {
                "networkPolicy": {
                    "ingress": [{"from": [{"podSelector": {"matchLabels": HUB_ACCESS}}], "ports": ports}]
                }
            },
        }


def configure_confidential_pods(c: Any, pods: ConfidentialPods) -> None:
    """Set ``c.KubeSpawner`` for ``pods`` in a ``jupyterhub_config.py``, keeping the operator's other settings."""
    section = c.KubeSpawner
    traits = pods.kubespawner_traits()
    existing_pod = dict(section["extra_pod_config"]) if "extra_pod_config" in section else {}
    existing_annotations = dict(section["extra_annotations"]) if "extra_annotations" in section else {}
    section.extra_pod_config = {**existing_pod, **traits["extra_pod_config"]}
    section.extra_annotations = {**existing_annotations, **traits["extra_annotations"]}
    section.automount_service_account_token = False
    section.modify_pod_hook = strip_secrets


def strip_secrets(spawner: Any, pod: Any) -> Any:
    """KubeSpawner's ``modify_pod_hook``: remove what TeeSpawner seals instead, then refuse anything left."""
    spec = pod.spec
    removed_volumes = {
        volume.name for volume in spec.volumes or [] if getattr(volume, "secret", None) is not None
    }
    spec.volumes = [volume for volume in spec.volumes or [] if volume.name not in removed_volumes]
    for container in [*(spec.containers or []), *(spec.init_containers or [])]:
        container.env = [entry for entry in container.env or [] if entry.name not in SECRET_ENV]
        container.volume_mounts = [
            mount for mount in container.volume_mounts or [] if mount.name not in removed_volumes
        ]
    found = find_secrets(_serialize(pod))
    if found:
        raise PodSecretError(
            "the single-user pod would carry secrets in its spec: " + "; ".join(found),
            hint="TeeSpawner hands secrets to the attested server sealed; remove them from the spawner's "
            "environment, volumes and annotations",
        )
    return pod


def _serialize(value: Any) -> Any:
    """A kubernetes model as the API server receives it (camelCase keys, no unset fields), as
    ``ApiClient.sanitize_for_serialization`` does — without an API client, which needs an event loop."""
    if isinstance(value, Mapping):
        return {key: _serialize(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_serialize(item) for item in value]
    names = getattr(value, "attribute_map", None)
    if isinstance(names, Mapping):
        fields = ((names[name], getattr(value, name)) for name in names)
        return {key: _serialize(item) for key, item in fields if item is not None}
    return value


def pod_json(pod: Any) -> Any:
    """A kubernetes pod model as the JSON the API server receives."""
    return _serialize(pod)


def find_secrets(pod: Mapping[str, Any]) -> list[str]:
    """Everything secret-looking in a pod manifest (as sent to the API server): [] for a clean one."""
    found: list[str] = []
    spec = pod.get("spec") or {}
    if spec.get("automountServiceAccountToken") is not False:
        found.append("automountServiceAccountToken is not false (a Kubernetes API token in the pod)")
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        for entry in container.get("env") or []:
            source = entry.get("valueFrom") or {}
            if SECRETISH.search(entry.get("name", "")) or "secretKeyRef" in source:
                found.append(f"env {entry.get('name')} in container {container.get('name')}")
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                found.append(f"envFrom a Secret in container {container.get('name')}")
    for volume in spec.get("volumes") or []:
        projected = (volume.get("projected") or {}).get("sources") or []
        if "secret" in volume or any("secret" in s or "serviceAccountToken" in s for s in projected):
            found.append(f"volume {volume.get('name')} (a Secret or a service account token)")
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    for name, value in annotations.items():
        if SECRETISH.search(name):
            found.append(f"annotation {name}")
        elif name in INIT_DATA_ANNOTATIONS:
            found += [f"init-data {problem}" for problem in _init_data_problems(value)]
    return found


def decode_init_data(annotation: str) -> dict[str, Any]:
    """The init-data TOML of an annotation value (a ConfigError when it is not one)."""
    import tomllib

    try:
        return tomllib.loads(gzip.decompress(base64.b64decode(annotation, validate=True)).decode())
    except (ValueError, OSError, EOFError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"the init-data annotation is not gzip+base64 TOML: {error}") from None


def _init_data_problems(annotation: str) -> list[str]:
    """Init-data holds public values only: teelab's (controller, policy digest) and the agent policy."""
    try:
        data = decode_init_data(annotation)
    except ConfigError as error:
        return [error.message]
    entries = data.get("data") or {}
    problems = [
        f"unexpected entry {name!r}" for name in entries if name not in (TEELAB_INIT_DATA, AGENT_POLICY)
    ]
    if TEELAB_INIT_DATA in entries:
        import tomllib

        try:
            teelab = tomllib.loads(entries[TEELAB_INIT_DATA])
        except tomllib.TOMLDecodeError:
            return [*problems, f"{TEELAB_INIT_DATA} is not TOML"]
        problems += [
            f"unexpected key {key!r} in {TEELAB_INIT_DATA}"
            for key in teelab
            if key not in ("controller", "policy_digest")
        ]
    return problems


def check_init_data_controller(
    claims: Mapping[str, object], init_data_toml: str, controller: bytes
) -> tuple[bool, str]:
    """The controller rule under CoCo, for a spawner verifying a pod's evidence: the launch field (SEV-SNP
    ``host_data``, TDX ``mrconfigid``) must be the digest of ``init_data_toml``, and that TOML must name
    ``controller``. Returns (passed, detail) for a check named ``controller``; the gateway's own check compares
    the launch field with the controller hash directly, which init-data replaces by its digest."""
    import hmac
    import tomllib

    try:
        document = tomllib.loads(init_data_toml)
        teelab = tomllib.loads(str((document.get("data") or {})[TEELAB_INIT_DATA]))
        algorithm = str(document["algorithm"])
        digest = hashlib.new(algorithm, init_data_toml.encode()).digest()
    except (KeyError, ValueError, TypeError, tomllib.TOMLDecodeError) as error:
        return False, f"the init-data is not teelab's: {error}"
    named = str(teelab.get("controller", ""))
    if not hmac.compare_digest(named.encode(), controller.hex().encode()):
        return False, f"the init-data names controller {named[:16]}…, not {controller.hex()[:16]}…"
    # SEV-SNP HOST_DATA, TDX MRCONFIGID; SGX (KSS) CONFIGID, which the simulated TEE models, per the init-data
    # specification's list of launch fields.
    for claim, size in (("host_data", 32), ("mrconfigid", 48), ("config_id", 64)):
        value = claims.get(claim)
        if isinstance(value, str):
            try:
                field = bytes.fromhex(value)
            except ValueError:
                return False, f"{claim} is not hex"
            # Kata truncates a longer digest to the field and pads a shorter one with zeros.
            if hmac.compare_digest(field, launch_value(digest, size)):
                return True, f"{claim} is the {algorithm} of the init-data, which names this controller"
            return (
                False,
                f"{claim} {value[:16]}… is not the init-data's {algorithm} digest (another init-data)",
            )
    return False, "the evidence carries neither host_data (SEV-SNP), mrconfigid (TDX) nor config_id (SGX)"


def launch_value(digest: bytes, size: int) -> bytes:
    """The launch field Kata sets for an init-data digest (``adjust_digest``): truncated or zero-padded."""
    return digest[:size] + bytes(max(0, size - len(digest)))


@dataclass(frozen=True)
class InitData:
    """A pod's init-data as its boot reads it from the boot request (public; its digest is the launch field)."""

    toml: str
    algorithm: str
    controller: bytes  # the controller hash teelab.toml names
    policy_digest: str

    def digest(self) -> bytes:
        return hashlib.new(self.algorithm, self.toml.encode()).digest()


def read_init_data(annotation: str) -> InitData:
    """Parse an init-data annotation that crossed the host (gzip+base64 TOML, bounded): fails only with
    :class:`~teelab.protocols.session.HandshakeError`."""
    import tomllib

    from teelab.protocols.session import HandshakeError

    try:
        inflate = zlib.decompressobj(wbits=31)  # gzip
        raw = inflate.decompress(base64.b64decode(annotation, validate=True), MAX_INIT_DATA_TOML)
        if inflate.unconsumed_tail or not inflate.eof:
            raise HandshakeError("the init-data is truncated or larger than 1 MiB")
        text = raw.decode()
        document = tomllib.loads(text)
        entries = document.get("data")
        teelab = tomllib.loads(str(entries[TEELAB_INIT_DATA])) if isinstance(entries, dict) else {}
        algorithm = str(document.get("algorithm"))
        controller = bytes.fromhex(str(teelab.get("controller", "")))
        policy_digest = str(teelab.get("policy_digest", ""))
    except (ValueError, KeyError, zlib.error, tomllib.TOMLDecodeError, RecursionError):
        raise HandshakeError("the init-data is not gzip+base64 TOML with teelab's entry") from None
    if document.get("version") != INIT_DATA_VERSION or algorithm not in DIGESTS or len(controller) != 32:
        raise HandshakeError(
            f"the init-data is not teelab's: version {INIT_DATA_VERSION}, algorithm one of "
            f"{', '.join(DIGESTS)} and a 32-byte controller"
        )
    return InitData(text, algorithm, controller, policy_digest)
