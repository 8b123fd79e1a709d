"""The teelab-kbs service's view of TeeSpawner verdicts (docs/hosted-hub.md).

- ``GET api/servers``: every user's server verdicts — operators (``custom:teelab:kbs:operate``) only;
- ``GET api/servers/<user>``: that user's server verdicts — the user themself, or an operator;
- ``GET servers``: the same as a page (a user sees their own, an operator everyone's).

The verdicts are the spawners' state (``teelab_attestation``), read from the hub's REST API with this
service's token, which holds ``admin:server_state`` (``configure_tee_spawner`` grants it). They are public
material — keys, evidence, the hub's conclusion — never a secret: the spawner keeps no secret in its state.
"""

from __future__ import annotations

import html
import json
import os
from typing import Any
from urllib.parse import quote

from jupyterhub.services.auth import HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from teelab.extension.hub.scopes import KBS_OPERATE
from teelab.extension.hub.spawner_verdict import STATE_KEY

HUB_SECONDS = 30.0


async def _hub(path: str) -> Any:
    request = HTTPRequest(
        url_path_join(os.environ["JUPYTERHUB_API_URL"], path),
        headers={"Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}"},
        request_timeout=HUB_SECONDS,
    )
    return json.loads((await AsyncHTTPClient().fetch(request)).body)


def server_verdicts(user: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per server of ``user`` (a hub user model with server state) that has a verdict."""
    found = []
    for name, server in sorted((user.get("servers") or {}).items()):
        verdict = (server.get("state") or {}).get(STATE_KEY)
        if isinstance(verdict, dict):
            entry = {k: v for k, v in verdict.items() if k != "attest_port"}
            found.append(
                {
                    **entry,
                    "server_name": name,
                    "ready": bool(server.get("ready")),
                    "stopped": bool(server.get("stopped")),
                }
            )
    return found


async def verdicts_of(user: str) -> list[dict[str, Any]]:
    try:
        model = await _hub(f"users/{quote(user, safe='')}?include_stopped_servers=1")
    except HTTPClientError as error:
        if error.code == 404:
            raise web.HTTPError(404, f"no hub user {user}") from None
        raise
    return server_verdicts(model)


async def all_verdicts() -> dict[str, list[dict[str, Any]]]:
    users = await _hub("users?include_stopped_servers=1")
    if isinstance(users, dict):  # paginated answer
        users = users.get("items", [])
    return {user["name"]: server_verdicts(user) for user in users if server_verdicts(user)}


class _Handler(HubOAuthenticated, web.RequestHandler):  # type: ignore[misc]
    def signed_in(self) -> tuple[dict[str, Any], bool]:
        user: dict[str, Any] | None = self.get_current_user()
        if user is None:
            raise web.HTTPError(403)
        return user, bool(self.hub_auth.check_scopes({KBS_OPERATE}, user))

    def json(self, value: object) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value))


class ServersApi(_Handler):
    @web.authenticated
    async def get(self) -> None:
        user, operator = self.signed_in()
        if not operator:
            raise web.HTTPError(403, f"{user.get('name')} lacks {KBS_OPERATE}: ask for api/servers/<you>")
        self.json({"users": await all_verdicts()})


class ServerApi(_Handler):
    @web.authenticated
    async def get(self, name: str) -> None:
        user, operator = self.signed_in()
        if user.get("name") != name and not operator:
            raise web.HTTPError(403, "a user sees only their own server's verdict")
        self.json({"user": name, "servers": await verdicts_of(name)})


def render(verdicts: dict[str, list[dict[str, Any]]]) -> str:
    rows = []
    for owner, servers in sorted(verdicts.items()):
        for v in servers:
            measurement = v.get("measurement") or {}
            made = [c for c in v.get("checks", []) if isinstance(c, dict)]
            failed = [str(c.get("name")) for c in made if not c.get("passed")]
            checks = f"{len(made) - len(failed)} passed" + (
                f"; failed: {', '.join(failed)}" if failed else ""
            )
            cells = (
                owner,
                v.get("server_name") or "(default)",
                v.get("status"),
                "simulated — not confidential" if v.get("simulated") else v.get("verdict"),
                (v.get("policy") or {}).get("id"),
                f"{measurement.get('label', '')} {measurement.get('value', '')}",
                v.get("tls_spki_sha256"),
                v.get("attested_at"),
                v.get("reason") or "",
                checks,
            )
            rows.append(
                "<tr class='teelab-server'>"
                + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
                + "</tr>"
            )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "user",
            "server",
            "status",
            "verdict",
            "policy",
            "measurement",
            "TLS key SHA-256",
            "attested",
            "reason",
            "checks",
        )
    )
    return (
        "<h2>Single-user servers: attestation verdicts</h2>"
        "<p>Each server's TEE as the hub's spawner verified it before routing to it "
        "(<code>api/servers/&lt;user&gt;</code> has the evidence to re-verify).</p>"
        f"<table border=1 id='teelab-servers'><tr>{head}</tr>{''.join(rows)}</table>"
    )


class ServersPage(_Handler):
    @web.authenticated
    async def get(self) -> None:
        user, operator = self.signed_in()
        verdicts = await all_verdicts() if operator else {user["name"]: await verdicts_of(user["name"])}
        self.finish(
            "<!doctype html><title>teelab: servers</title>"
            f"<p>Signed in as {html.escape(user['name'])}.</p>" + render(verdicts)
        )
