"""A hub user as a browser is one: signs in through the hub's login form, follows the OAuth redirects to their
single-user server, and drives it over REST (cookie + XSRF header) and the kernel websocket.

``teelab hub demo --check`` and the hub tests (tests/hub) use it; nothing here mints a token in the hub's
database: the session is the one the hub's login flow gives.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import requests
import websocket

from teelab.errors import ConfigError
from teelab.extension.hub.demo import HubProcess

SPAWN_SECONDS = 120.0
CELL_SECONDS = 120.0


@dataclass
class HubUser:
    hub: HubProcess
    name: str
    session: requests.Session = field(default_factory=requests.Session)

    def login(self, password: str | None = None) -> requests.Response:
        """POST /hub/login with the form and its XSRF token, as the login page's form does."""
        url = f"{self.hub.url}/hub/login"
        page = self.session.get(url, timeout=30)
        page.raise_for_status()
        xsrf = self.session.cookies.get("_xsrf", path="/hub/")
        if not xsrf:
            raise ConfigError(f"{url} set no XSRF cookie: is this a JupyterHub?")
        return self.session.post(
            url,
            data={"username": self.name, "password": password or self.hub.password, "_xsrf": xsrf},
            allow_redirects=False,
            timeout=30,
        )

    def spawn(self) -> None:
        """Start the server as the hub's home page does (GET /hub/spawn), wait for it, then open it: the
        OAuth redirects end with the server's own cookie in this session."""
        self.session.get(f"{self.hub.url}/hub/spawn", timeout=60)
        deadline = time.monotonic() + SPAWN_SECONDS
        while time.monotonic() < deadline:
            model = self.hub.api("GET", f"users/{self.name}")
            server = (model.get("servers") or {}).get("")
            if server and server.get("ready"):
                break
            time.sleep(0.5)
        else:
            raise ConfigError(f"{self.name}'s server did not become ready within {SPAWN_SECONDS:.0f} s")
        landing = self.session.get(self.server_url("lab"), timeout=60)
        landing.raise_for_status()

    def server_url(self, path: str, owner: str | None = None) -> str:
        return f"{self.hub.url}/user/{owner or self.name}/{path}"

    def _xsrf(self, owner: str) -> dict[str, str]:
        token = self.session.cookies.get("_xsrf", path=f"/user/{owner}/") or ""
        return {"X-XSRFToken": token} if token else {}

    def request(
        self, method: str, path: str, *, owner: str | None = None, **kwargs: Any
    ) -> requests.Response:
        owner = owner or self.name
        if method != "GET" and not self.session.cookies.get("_xsrf", path=f"/user/{owner}/"):
            self.session.get(self.server_url("lab", owner), timeout=60)  # the page sets the XSRF cookie
        headers = {**self._xsrf(owner), **kwargs.pop("headers", {})}
        return self.session.request(
            method,
            self.server_url(path, owner),
            headers=headers,
            timeout=kwargs.pop("timeout", 180),
            **kwargs,
        )

    def start_kernel(self, name: str = "teelab-sim") -> dict[str, Any]:
        answer = self.request("POST", "api/kernels", json={"name": name})
        if answer.status_code != 201:
            raise ConfigError(
                f"kernel {name} did not start (HTTP {answer.status_code}): {answer.text[:2000]}"
            )
        return dict(answer.json())

    def run_cell(self, kernel_id: str, code: str) -> tuple[str, dict[str, Any]]:
        """Execute ``code`` over the kernel's websocket; the stream output and the execute_reply content."""
        url = self.server_url(f"api/kernels/{kernel_id}/channels").replace("http://", "ws://")
        cookies = "; ".join(
            f"{c.name}={c.value}"
            for c in self.session.cookies
            if c.path.startswith(f"/user/{self.name}") or c.path == "/"
        )
        ws = websocket.create_connection(
            url,
            header=[f"Cookie: {cookies}", *[f"{k}: {v}" for k, v in self._xsrf(self.name).items()]],
            timeout=CELL_SECONDS,
        )
        try:
            msg_id = uuid.uuid4().hex
            ws.send(
                json.dumps(
                    {
                        "header": {
                            "msg_id": msg_id,
                            "username": self.name,
                            "session": uuid.uuid4().hex,
                            "msg_type": "execute_request",
                            "version": "5.3",
                        },
                        "parent_header": {},
                        "metadata": {},
                        "content": {
                            "code": code,
                            "silent": False,
                            "store_history": False,
                            "user_expressions": {},
                            "allow_stdin": False,
                        },
                        "channel": "shell",
                    }
                )
            )
            output: list[str] = []
            reply: dict[str, Any] | None = None
            idle = False
            deadline = time.monotonic() + CELL_SECONDS
            # The reply (shell) may overtake the cell's output (iopub): done at the reply and the kernel's
            # "idle" for this request, which iopub sends after the output.
            while time.monotonic() < deadline:
                message = json.loads(ws.recv())
                if message.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = message["msg_type"]
                if kind == "stream":
                    output.append(message["content"]["text"])
                elif kind == "error":
                    output.append("\n".join(message["content"]["traceback"]))
                elif kind == "execute_reply":
                    reply = dict(message["content"])
                elif kind == "status" and message["content"].get("execution_state") == "idle":
                    idle = True
                if reply is not None and idle:
                    return "".join(output), reply
            raise ConfigError(f"no answer from kernel {kernel_id} within {CELL_SECONDS:.0f} s")
        finally:
            ws.close()
