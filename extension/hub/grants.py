"""Session grants under JupyterHub: the gateway asks the key broker with its user's own hub token.

The server's ``$JUPYTERHUB_API_TOKEN`` belongs to the server's user; the broker's ``jupyterhub`` identity
provider asks the hub whose it is, so the grant can only name that user (the broker refuses any other).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from teelab.errors import TeelabError
from teelab.protocols.session import KeyBrokerSection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubGrants:
    """A :class:`~teelab.kernel.session_grants.GrantIssuer` for single-user servers (set by the hub's
    system configuration, :mod:`~teelab.extension.hub.singleuser_config`)."""

    address: str
    user: str
    ca_file: str | None = None
    store: str | None = None

    async def __call__(self, enclave_key: bytes, controller: bytes | None = None) -> KeyBrokerSection | None:
        from teelab.sealed_store import services

        store = services.store_url(self.store)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, self._issue, enclave_key, controller
            )
        except (TeelabError, OSError) as error:
            # The kernel still starts; reading a dataset then says why not.
            log.warning("teelab: no session grant from the key broker at %s: %s", self.address, error)
            return KeyBrokerSection(address=self.address, store=store, user=self.user)

    def _issue(self, enclave_key: bytes, controller: bytes | None) -> KeyBrokerSection:
        from pathlib import Path

        from teelab.extension.hub.server_token import hub_token
        from teelab.sealed_store import services
        from teelab.sealed_store.kbs.client import KbsClient
        from teelab.sealed_store.kbs.transport import ca_from_environment, read_ca

        token = hub_token()  # a TeeSpawner server's is in no environment
        ca = read_ca(Path(self.ca_file)) if self.ca_file else ca_from_environment()
        with KbsClient(self.address, token, timeout=10, tls_ca=ca) as client:
            grant = client.issue_session_grant(self.user, enclave_key=enclave_key, controller=controller)
            kbs_key = client.kbs_public_key()
            tls = client.target.tls
        return KeyBrokerSection(
            address=self.address,
            store=services.store_url(self.store),
            user=self.user,
            kbs_key=kbs_key,
            kbs_ca=ca.decode("ascii") if ca is not None and tls else None,
            grant=grant.token,
            grant_expires_at=grant.expires_at,
        )
