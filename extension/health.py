"""``/teelab/api/health``: the teelab version, which TEE backends this machine can run, and whether the key
broker this server's kernels get session grants from answers."""

from __future__ import annotations

import asyncio
import dataclasses

from jupyter_server.auth.decorator import authorized
from tornado import web

import teelab
from teelab.extension.base import TeelabAPIHandler
from teelab.kernel.doctor import backend_statuses


def key_broker_json(configured: str | None = None) -> dict[str, object]:
    from teelab.errors import KeyBrokerError
    from teelab.sealed_store import services
    from teelab.sealed_store.kbs.client import KbsClient

    address = services.kbs_address(configured)
    try:
        with KbsClient(address, timeout=3) as client:
            info = client.info()
    except KeyBrokerError as error:
        return {"address": address, "reachable": False, "detail": error.message, "hint": error.hint}
    return {
        "address": address,
        "reachable": True,
        "detail": f"protocol {info.protocol}, HPKE {info.hpke_suite}",
        "signing_key_id": info.signing_key_id,
    }


def health_json(kbs_address: str | None = None) -> dict[str, object]:
    return {
        "version": teelab.__version__,
        "backends": [dataclasses.asdict(status) for status in backend_statuses()],
        "key_broker": key_broker_json(kbs_address),
    }


class HealthHandler(TeelabAPIHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        # The probes read /proc, device nodes and configuration files: keep them off the event loop.
        provisioner = self.config.get("TeeProvisioner", {}) if self.config else {}
        configured = provisioner.get("kbs_address") if hasattr(provisioner, "get") else None
        address = configured if isinstance(configured, str) else None
        self.reply(await asyncio.get_running_loop().run_in_executor(None, health_json, address))
