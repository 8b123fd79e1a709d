"""The teelab provisioner's settings: what a server operator configures as ``c.TeeProvisioner.*``.

They live apart from :class:`teelab.kernel.provisioner.TeeProvisioner` (which inherits them) so that the
provisioner reads as its lifecycle only. The policy settings feed :mod:`teelab.kernel.policy_files`; the key
broker settings feed the default :class:`~teelab.kernel.session_grants.GrantIssuer`.
"""

from __future__ import annotations

from pathlib import Path

from traitlets import Bool, Callable, Float, Unicode
from traitlets.config import LoggingConfigurable

from teelab.gateway.identity import GatewayIdentity
from teelab.kernel.policy_files import PolicySettings
from teelab.kernel.session_grants import GrantIssuer, KeyBrokerGrants


def _optional(help: str) -> Unicode[str | None, str | bytes | None]:
    return Unicode(None, allow_none=True, config=True, help=help)


class ProvisionerSettings(LoggingConfigurable):
    """The teelab provisioner's server configuration (``c.TeeProvisioner.*``); kernelspecs set only ``backend``."""

    backend = Unicode("sim", config=True, help="The TEE backend that runs the kernel (sim, gramine, ...).")
    policy_file = _optional(
        "The appraisal policy for every teelab kernel of this server (default: the policy installed for the "
        "kernelspec by `teelab kernel install`). Server configuration only, never a kernelspec."
    )
    allow_user_policies = Bool(
        True,
        config=True,
        help="Look for policies in the user's configuration folder too (off on shared servers).",
    )
    image_path = _optional("The enclave image folder to launch.")
    launch_timeout = Float(
        120.0, config=True, help="Seconds to wait for the kernel's evidence and readiness."
    )
    response_host = Unicode("127.0.0.1", config=True, help="Where the kernel boot answers the gateway.")
    kbs_address = _optional(
        "The key broker (HOST:PORT, or grpcs://HOST:PORT for TLS) that releases dataset keys to this server's "
        "kernels (default: $TEELAB_KBS, or the local broker started by `teelab kbs serve`)."
    )
    kbs_token_file = _optional(
        "This user's key broker token file (default: $TEELAB_KBS_TOKEN_FILE, else the local broker's "
        "users/<login>.token, else this server's JupyterHub token). It can ask grants only for this user."
    )
    kbs_ca_file = _optional(
        "PEM CA certificate of a key broker at grpcs://HOST:PORT with a private CA (default: $TEELAB_KBS_CA; "
        "else the system's roots). The kernel receives it in its sealed session bundle."
    )
    dataset_store = _optional("Where sealed datasets are (an fsspec URL; default: local).")
    kbs_user = _optional(
        "Whom the session grants name (default: $JUPYTERHUB_USER under JupyterHub, else the login name)."
    )
    grant_issuer = Callable(
        None,
        allow_none=True,
        config=True,
        help="A GrantIssuer (teelab.kernel.session_grants): async (enclave_key, controller) -> KeyBrokerSection "
        "| None, "
        "called after the evidence was accepted (default: the key broker of the kbs_* settings).",
    )

    identity_file = _optional(
        "The gateway identity key G (Ed25519 PEM, 0600; created on first use; default: "
        "<teelab data folder>/gateway-identity.pem). Kernels obey only the gateway that launched them: give each "
        "single-user server its own (JupyterHub) — every gateway sharing a key can control the others' kernels."
    )

    def gateway_identity(self) -> GatewayIdentity:
        return GatewayIdentity.load_or_create(Path(self.identity_file) if self.identity_file else None)

    def policy_settings(self) -> PolicySettings:
        return PolicySettings(self.policy_file, self.allow_user_policies)

    def session_grants(self) -> GrantIssuer:
        if self.grant_issuer is not None:
            return self.grant_issuer  # type: ignore[no-any-return]
        path = lambda value: Path(value) if value else None  # noqa: E731
        return KeyBrokerGrants(
            self.kbs_address,
            path(self.kbs_token_file),
            path(self.kbs_ca_file),
            self.dataset_store,
            self.kbs_user,
        )
