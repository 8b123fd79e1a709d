"""Every teelab endpoint needs an authenticated user the Authorizer allows on the resource "teelab"."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from jupyter_server.auth import Authorizer
from jupyter_server.auth.identity import User
from jupyter_server.base.handlers import JupyterHandler
from tornado.httpclient import HTTPClientError

from teelab.extension.handlers import routes

from .conftest import server_config

KERNEL_ID = str(uuid.uuid4())
# One request per route (GET; the dataset routes bring their own tests); the path parts after the base URL.
ENDPOINTS: list[tuple[str, ...]] = [
    ("teelab", "api", "kernels"),
    ("teelab", "api", "kernels", KERNEL_ID, "attestation"),
    ("teelab", "api", "policy"),
    ("teelab", "api", "health"),
]


def test_every_route_is_covered() -> None:
    patterns = {route[0] for route in routes() if not route[0].startswith("/teelab/api/datasets")}
    assert len(patterns) == len(ENDPOINTS)


class DenyTeelab(Authorizer):  # type: ignore[misc]
    """Allows everything except the "teelab" resource."""

    seen: list[tuple[str, str]] = []

    def is_authorized(self, handler: JupyterHandler, user: User, action: str, resource: str) -> bool:
        DenyTeelab.seen.append((action, resource))
        return resource != "teelab"


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids="/".join)
@pytest.mark.parametrize("authorization", ["", "token not-the-token"], ids=["no-token", "wrong-token"])
async def test_unauthenticated_requests_are_refused(
    jp_fetch: Any, endpoint: tuple[str, ...], authorization: str
) -> None:
    with pytest.raises(HTTPClientError) as failed:
        await jp_fetch(*endpoint, headers={"Authorization": authorization})
    assert failed.value.code in (401, 403)
    assert failed.value.response is not None
    assert b"Simulated" not in failed.value.response.body and b"backends" not in failed.value.response.body


@pytest.mark.parametrize("jp_server_config", [server_config(authorizer_class=DenyTeelab)])
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids="/".join)
async def test_an_authorizer_that_denies_teelab_gets_403_everywhere(
    jp_fetch: Any, endpoint: tuple[str, ...]
) -> None:
    DenyTeelab.seen.clear()
    with pytest.raises(HTTPClientError) as failed:
        await jp_fetch(*endpoint)
    assert failed.value.code == 403 and failed.value.response is not None
    message = json.loads(failed.value.response.body)["message"]
    assert message == "User is not authorized to read on resource: teelab."
    assert ("read", "teelab") in DenyTeelab.seen
    # The same user may still use what the authorizer allows.
    assert (await jp_fetch("api", "status")).code == 200


async def test_an_authenticated_user_gets_through(jp_fetch: Any) -> None:
    assert (await jp_fetch("teelab", "api", "health")).code == 200
