"""The key broker's part of a session: a session grant for the attested kernel, delivered in its sealed bundle.

The provisioner asks a :class:`GrantIssuer` only after the kernel's evidence was accepted, and puts what it
answers into the bundle's key-broker section. The default, :class:`KeyBrokerGrants`, asks the key broker the
server is configured with (``c.TeeProvisioner.kbs_*``); a deployment can configure any other issuer
(``c.TeeProvisioner.grant_issuer``). The grant names SHA-256(E.pub), so it is useless to any other enclave.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from teelab.errors import TeelabError
from teelab.protocols.session import KeyBrokerSection

log = logging.getLogger(__name__)


class GrantIssuer(Protocol):
    """Called once per accepted kernel with its attested E.pub and the controller hash its evidence carries
    (``SHA-256(G.pub)`` of this gateway); None: the session has no key broker."""

    async def __call__(self, enclave_key: bytes, controller: bytes) -> KeyBrokerSection | None: ...


@dataclass(frozen=True)
class KeyBrokerGrants:
    """Session grants from the key broker at ``address`` (default: $TEELAB_KBS, or the local broker)."""

    address: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = None
    store: str | None = None
    user: str | None = None

    async def __call__(self, enclave_key: bytes, controller: bytes) -> KeyBrokerSection | None:
        """Without a reachable broker the kernel still starts — reading datasets then says why not."""
        from teelab.sealed_store import services

        if not (self.address or os.environ.get("TEELAB_KBS") or services.local_kbs_running()):
            return None
        address = services.kbs_address(self.address)
        user = services.session_user(self.user)
        store = services.store_url(self.store)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, self._issue, address, user, enclave_key, controller
            )
        except (TeelabError, OSError) as error:
            log.warning("teelab: no session grant from the key broker at %s: %s", address, error)
            return KeyBrokerSection(address=address, store=store, user=user)

    def _issue(self, address: str, user: str, enclave_key: bytes, controller: bytes) -> KeyBrokerSection:
        from teelab.sealed_store import services
        from teelab.sealed_store.kbs.client import KbsClient
        from teelab.sealed_store.kbs.transport import ca_from_environment, read_ca

        # The user's own credential (token file, else this server's hub token): the broker mints a grant only
        # for the user it authenticates, so nothing here can act for another user.
        credential = services.user_credential(self.token_file)
        ca = read_ca(self.ca_file) if self.ca_file else ca_from_environment()
        with KbsClient(address, credential, timeout=10, tls_ca=ca) as client:
            # Bound to E.pub and to the controller: the broker releases keys only to evidence that carries the
            # same controller, so evidence from an oracle kernel (another controller) gets nothing.
            grant = client.issue_session_grant(user, enclave_key=enclave_key, controller=controller)
            kbs_key = client.kbs_public_key()
        return KeyBrokerSection(
            address=address,
            store=services.store_url(self.store),
            user=user,
            # Pinned for the kernel: it seals the grant to this key at every release, and its own connection
            # to the broker crosses the untrusted host.
            kbs_key=kbs_key,
            kbs_ca=ca.decode("ascii") if ca is not None and client.target.tls else None,
            grant=grant.token,
            grant_expires_at=grant.expires_at,
        )
