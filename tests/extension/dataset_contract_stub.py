"""An in-memory stand-in for the dataset REST contract (documented in extension/handlers.py).

A jupyter_server extension loaded only by test_browser.py, to test the browser's half of the contract until
the real handlers (extension/datasets.py) exist. It keeps what it was sent so the test can check it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.serverapp import ServerApp
from jupyter_server.utils import url_path_join
from tornado import web

NOW = datetime(2025, 7, 1, tzinfo=UTC).isoformat()
DATASETS: dict[str, dict[str, Any]] = {
    "seed": {
        "name": "seed",
        "current_version": 2,
        "versions": [1, 2],
        "owner": "user:owner",
        "created_at": NOW,
        "can_read": True,
        "can_admin": True,
        "grants": [],
    }
}
UPLOADS: list[dict[str, Any]] = []


class _Handler(APIHandler):
    def reply(self, body: object, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class Datasets(_Handler):
    @web.authenticated
    def get(self) -> None:
        self.reply({"datasets": list(DATASETS.values())})

    @web.authenticated
    def post(self) -> None:
        name = self.get_query_argument("name", "")
        if not name:
            raise web.HTTPError(400, "missing query parameter 'name'")
        if name.startswith("too"):
            raise web.HTTPError(413, "over the size limit (1 KiB in this stub)")
        body = self.request.body
        UPLOADS.append(
            {"name": name, "content_type": self.request.headers.get("Content-Type"), "bytes": len(body)}
        )
        previous = DATASETS.get(name)
        version = previous["current_version"] + 1 if previous else 1
        DATASETS[name] = {
            "name": name,
            "current_version": version,
            "versions": [*(previous["versions"] if previous else []), version],
            "owner": "user:owner",
            "created_at": NOW,
            "can_read": True,
            "can_admin": True,
            "grants": previous["grants"] if previous else [],
        }
        rows = body.count(b"\n") - 1
        self.reply({"name": name, "version": version, "manifest_sha256": "00" * 32, "rows": rows}, 201)


class Grants(_Handler):
    @web.authenticated
    def post(self, name: str) -> None:
        grant = self.get_json_body()
        if not isinstance(grant, dict) or "principal" not in grant:
            raise web.HTTPError(400, "expected {principal, expires_at}")
        entry = {"principal": grant["principal"], "expires_at": grant.get("expires_at")}
        DATASETS[name]["grants"].append(entry)
        self.reply(entry, 201)


class Grant(_Handler):
    @web.authenticated
    def delete(self, name: str, principal: str) -> None:
        grants = DATASETS[name]["grants"]
        grants[:] = [g for g in grants if g["principal"] != principal]
        self.set_status(204)
        self.finish()


class Uploads(_Handler):
    @web.authenticated
    def get(self) -> None:
        self.reply(UPLOADS)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "dataset_contract_stub"}]


def _load_jupyter_server_extension(serverapp: ServerApp) -> None:
    base = url_path_join(serverapp.web_app.settings["base_url"], "teelab", "api")
    serverapp.web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "datasets"), Datasets),
            (url_path_join(base, "datasets", "([^/]+)", "grants"), Grants),
            (url_path_join(base, "datasets", "([^/]+)", "grants", "([^/]+)"), Grant),
            (url_path_join(base, "stub", "uploads"), Uploads),
        ],
    )
