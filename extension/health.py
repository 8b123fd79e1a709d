"""``/teelab/api/health``: the teelab version and which TEE backends this machine can run."""

from __future__ import annotations

import asyncio
import dataclasses

from jupyter_server.auth.decorator import authorized
from tornado import web

import teelab
from teelab.enclave_runtime.doctor import all_statuses
from teelab.extension.base import TeelabAPIHandler


def health_json() -> dict[str, object]:
    return {
        "version": teelab.__version__,
        "backends": [dataclasses.asdict(status) for status in all_statuses()],
        # Filled in when the key broker client lands: {"url": ..., "reachable": bool, "detail": ...}.
        "key_broker": None,
    }


class HealthHandler(TeelabAPIHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        # The probes read /proc, device nodes and configuration files: keep them off the event loop.
        self.reply(await asyncio.get_running_loop().run_in_executor(None, health_json))
