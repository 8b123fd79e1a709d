"""The hub-managed service ``teelab-kbs``: the key broker, and the operators' view of every kernel's verdict.

The hub starts this process (``configure_hub`` registers it) and stops it with SIGTERM. It

1. writes the broker's ``kbs.toml`` (users authenticate with their hub tokens; the hub's operators are the
   broker's admins) and runs ``teelab kbs serve`` on the configured gRPC address as its child;
2. serves, at ``/services/teelab-kbs/``, a page and ``api/kernels``: for each user's running server, the
   attestation verdict of each of its teelab kernels (the badge, TEE, policy — never data, never a
   dataset name), asked from the server's ``/teelab/api/kernels`` with this service's hub token.

Only a hub user holding ``custom:teelab:kbs:operate`` sees the verdicts; anyone else is refused with 403.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from teelab.extension.hub.scopes import KBS_OPERATE

KBS_START_SECONDS = 60.0
PER_SERVER_SECONDS = 10.0
# What of a server's kernel summary an operator sees: the verdict, never anything the kernel computed.
SUMMARY_FIELDS = ("kernel_id", "kernel_name", "backend", "started_at", "running", "ok", "simulated", "badge")


def kbs_toml(hub_api_url: str, admins: dict[str, list[str]]) -> str:
    return (
        "# Written by the teelab-kbs hub service at each start.\n[auth]\n"
        'providers = ["jupyterhub"]\n'
        f"admin_users = {json.dumps(admins.get('users', []))}\n"
        f"admin_groups = {json.dumps(admins.get('groups', []))}\n\n"
        f"[auth.jupyterhub]\napi_url = {json.dumps(hub_api_url)}\ncache_seconds = 30\n"
    )


def start_broker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``teelab kbs serve`` as a child, ready (its endpoint file written) when this returns."""
    state = Path(env["TEELAB_HUB_KBS_STATE"])
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = state / "kbs.toml"
    admins = json.loads(env.get("TEELAB_HUB_KBS_ADMINS", "{}"))
    config.write_text(kbs_toml(env["JUPYTERHUB_API_URL"], admins))
    options: dict[str, str] = json.loads(env.get("TEELAB_HUB_KBS_OPTIONS", "{}"))
    argv = [
        sys.executable,
        "-m",
        "teelab.sealed_store.kbs",
        "kbs",
        "serve",
        "--listen",
        env["TEELAB_HUB_KBS_LISTEN"],
    ]
    argv += ["--state", str(state), "--config", str(config)]
    for name, flag in (("db", "--db"), ("tls_cert", "--tls-cert"), ("tls_key", "--tls-key")):
        if options.get(name):
            argv += [flag, options[name]]
    argv += ["--collateral", options.get("collateral", "sim")]
    endpoint = state / "endpoint"
    endpoint.unlink(missing_ok=True)
    # The hub's token stays with this process: the broker asks the hub as each user's own token.
    child_env = {k: v for k, v in env.items() if k != "JUPYTERHUB_API_TOKEN"}
    broker = subprocess.Popen(argv, env=child_env)
    deadline = time.monotonic() + KBS_START_SECONDS
    while not endpoint.exists():
        if broker.poll() is not None or time.monotonic() > deadline:
            broker.kill()
            raise SystemExit(f"teelab-kbs: the key broker did not start (exit status {broker.poll()})")
        time.sleep(0.1)
    return broker


class OperatorHandler(HubOAuthenticated, web.RequestHandler):  # type: ignore[misc]
    """Requires a hub user with ``custom:teelab:kbs:operate``."""

    def operator(self) -> dict[str, Any]:
        user: dict[str, Any] | None = self.get_current_user()
        if user is None:
            raise web.HTTPError(403)
        if not self.hub_auth.check_scopes({KBS_OPERATE}, user):
            raise web.HTTPError(
                403,
                f"{user.get('name')} lacks {KBS_OPERATE}: only the broker's operators see "
                "the kernels' verdicts",
            )
        return user

    async def verdicts(self) -> list[dict[str, Any]]:
        return await collect_verdicts(
            os.environ["JUPYTERHUB_API_URL"],
            os.environ["JUPYTERHUB_API_TOKEN"],
            os.environ["TEELAB_HUB_PUBLIC_URL"],
        )


class KernelsApi(OperatorHandler):
    @web.authenticated
    async def get(self) -> None:
        self.operator()
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"servers": await self.verdicts()}))


class Page(OperatorHandler):
    @web.authenticated
    async def get(self) -> None:
        operator = self.operator()
        rows = []
        for server in await self.verdicts():
            for kernel in server["kernels"]:
                badge = kernel.get("badge", {})
                rows.append(
                    "<tr>"
                    + "".join(
                        f"<td>{html.escape(str(value))}</td>"
                        for value in (
                            server["user"],
                            kernel.get("kernel_name"),
                            kernel.get("kernel_id"),
                            badge.get("level"),
                            badge.get("text"),
                            kernel.get("started_at"),
                        )
                    )
                    + "</tr>"
                )
            if server.get("error"):
                rows.append(
                    f"<tr><td>{html.escape(server['user'])}</td><td colspan=5>"
                    f"{html.escape(server['error'])}</td></tr>"
                )
        self.finish(
            "<!doctype html><title>teelab: kernels</title><h1>Attestation of every teelab kernel</h1>"
            f"<p>Signed in as {html.escape(operator['name'])}. Verdicts only: no kernel's data is shown here.</p>"
            "<table border=1><tr><th>user</th><th>kernel</th><th>id</th><th>verdict</th><th>detail</th>"
            "<th>started</th></tr>" + "".join(rows) + "</table>" + await self.servers_section()
        )

    async def servers_section(self) -> str:
        """TeeSpawner's verdicts on the single-user servers themselves (none without TeeSpawner)."""
        from teelab.extension.hub.spawner_service import all_verdicts, render

        verdicts = await all_verdicts()
        return render(verdicts) if verdicts else ""


async def _get_json(url: str, token: str) -> Any:
    request = HTTPRequest(
        url, headers={"Authorization": f"token {token}"}, request_timeout=PER_SERVER_SECONDS
    )
    response = await AsyncHTTPClient().fetch(request)
    return json.loads(response.body)


async def collect_verdicts(hub_api: str, token: str, public_url: str) -> list[dict[str, Any]]:
    """Each ready server's teelab kernels, as its own API reports them (one entry per user with a server)."""
    users = await _get_json(url_path_join(hub_api, "users?state=ready"), token)
    if isinstance(users, dict):  # paginated answer
        users = users.get("items", [])
    servers: list[tuple[str, str]] = []
    for user in users:
        for name, server in (user.get("servers") or {}).items():
            if server.get("ready") and server.get("url"):
                servers.append((user["name"] if not name else f"{user['name']}/{name}", server["url"]))

    async def one(owner: str, path: str) -> dict[str, Any]:
        url = public_url.rstrip("/") + url_path_join(path, "teelab/api/kernels")
        try:
            answer = await _get_json(url, token)
        except (HTTPClientError, OSError, ValueError) as error:
            return {"user": owner, "kernels": [], "error": f"cannot ask the server: {error}"}
        kernels = [{k: kernel.get(k) for k in SUMMARY_FIELDS} for kernel in answer.get("kernels", [])]
        return {"user": owner, "kernels": kernels}

    return list(await asyncio.gather(*(one(owner, path) for owner, path in servers)))


def make_app() -> web.Application:
    from teelab.extension.hub.spawner_service import ServerApi, ServersApi, ServersPage

    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/teelab-kbs/")
    return web.Application(
        [
            (prefix, Page),
            (url_path_join(prefix, "api/kernels"), KernelsApi),
            (url_path_join(prefix, "api/servers"), ServersApi),
            (url_path_join(prefix, r"api/servers/([^/]+)"), ServerApi),
            (url_path_join(prefix, "servers"), ServersPage),
            (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
        ],
        cookie_secret=os.urandom(32),
    )


async def serve() -> None:
    from urllib.parse import urlsplit

    broker = start_broker(dict(os.environ))
    url = urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"])
    app = make_app()
    server = app.listen(url.port or 80, url.hostname or "127.0.0.1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set() and broker.poll() is None:
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
    finally:
        server.stop()
        if broker.poll() is None:
            broker.terminate()
            try:
                broker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                broker.kill()
    if broker.returncode not in (0, -signal.SIGTERM, None) and not stop.is_set():
        raise SystemExit(f"teelab-kbs: the key broker exited with status {broker.returncode}")


def main() -> None:
    asyncio.run(serve())


if __name__ == "__main__":
    main()
