"""``/teelab/api/kernels``: what the gateway verified about each kernel this server started."""

from __future__ import annotations

import uuid

from jupyter_server.auth.decorator import authorized
from tornado import web

from teelab.extension.base import TeelabAPIHandler, bad_request, not_found
from teelab.extension.records import record_json, summary_json
from teelab.kernel.registry import REGISTRY


def _kernel_id(text: str) -> str:
    # jupyter_server names kernels by UUID; anything else cannot be one of ours and is a malformed request.
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise bad_request(f"malformed kernel id {text[:80]!r}: expected a UUID") from None


class KernelsHandler(TeelabAPIHandler):
    """``GET``: the badge of every running kernel that went through the teelab gateway."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        running = set(self.kernel_manager.list_kernel_ids())
        records = sorted(
            (record for record in REGISTRY.all() if record.kernel_id in running),
            key=lambda record: record.started_at,
        )
        self.reply({"kernels": [summary_json(record, running=True) for record in records]})


class KernelAttestationHandler(TeelabAPIHandler):
    """``GET``: one kernel's full record: every check, the claims, the policy and the time."""

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        kernel_id = _kernel_id(kernel_id)
        record = REGISTRY.get(kernel_id)
        if record is None:
            raise not_found(
                f"no attestation record for kernel {kernel_id}: not a teelab kernel of this server"
            )
        running = kernel_id in set(self.kernel_manager.list_kernel_ids())
        self.reply(record_json(record, running=running))
