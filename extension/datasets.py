"""The dataset API under ``/teelab/api/datasets`` (the contract is in :mod:`teelab.extension.handlers`).

The Jupyter server is in its user's trust domain (ARCHITECTURE §1): an upload arrives here in the clear over
the user's own connection, is sealed in this process — its key goes straight to the key broker — and only
ciphertext reaches the store. The request body is streamed to a private temporary file and never held whole
in memory; an upload over ``max_upload_bytes`` is refused with 413 and leaves nothing behind.

Who acts: the signed-in user, as the key broker authenticates them — the user's own credential (the local
broker's ``users/<name>.token``, ``$TEELAB_KBS_TOKEN_FILE``, or under JupyterHub the server's hub token), never
the operator's admin token. Ownership is the key broker's to enforce: this API asks, and shows its refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from teelab.errors import KeyBrokerError, SealedDataError, TeelabError, UsageError
from teelab.extension.base import TeelabAPIHandler, bad_request
from teelab.paths import data_dir
from teelab.timeutil import parse_time

_FORMATS = {
    "text/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
}
_STATUS = {
    "unauthenticated": 403,
    "forbidden": 403,
    "not_granted": 403,
    "owner_mismatch": 403,
    "rate_limited": 429,
    "dataset_unknown": 404,
    "version_unknown": 404,
    "invalid_argument": 400,
    "policy_invalid": 400,
    "unavailable": 503,
    "timeout": 504,
}


def _user(handler: TeelabAPIHandler) -> str:
    from teelab.sealed_store.services import session_user

    configured = handler.settings.get("teelab_kbs_user") or _provisioner_setting(handler, "kbs_user")
    return session_user(configured)


def _provisioner_setting(handler: TeelabAPIHandler, name: str) -> Any:
    config = handler.config.get("TeeProvisioner", {}) if handler.config else {}
    value = config.get(name) if hasattr(config, "get") else None
    return value if isinstance(value, str) else None


def _owner(handler: TeelabAPIHandler) -> Any:
    from teelab.sealed_store.owner import DataOwner

    try:
        return DataOwner.connect(
            kbs=_provisioner_setting(handler, "kbs_address"),
            store=_provisioner_setting(handler, "dataset_store"),
            owner=_user(handler),
        )
    except UsageError as error:
        raise web.HTTPError(503, f"datasets are not available on this server: {error.message}") from None


def _http_error(error: TeelabError) -> web.HTTPError:
    # jupyter_server shows log_message as is; tornado's logging %-formats it, hence the doubled %.
    text = (f"{error.message} — {error.hint}" if error.hint else error.message).replace("%", "%%")
    if isinstance(error, KeyBrokerError):
        return web.HTTPError(_STATUS.get(error.reason, 502), text)
    if isinstance(error, UsageError):
        return web.HTTPError(400, text)
    if isinstance(error, SealedDataError):
        return web.HTTPError(422, text)
    return web.HTTPError(500, text)


def published_policies(handler: TeelabAPIHandler) -> dict[str, Path]:
    """The release policies the operator published, by name: the server's configured policy file, then the
    policy folders the provisioner searches (``<sys.prefix>/etc/teelab/policies``, the system folders, and the
    user's unless the operator turned user policies off). A browser upload must name one of them: nothing is released by omission."""
    from teelab.kernel.policy_files import PolicySettings, find_policy, policy_dirs

    settings = PolicySettings.from_config(handler.config)
    found: dict[str, Path] = {}
    # The server's own policy (c.TeeProvisioner.policy_file, as on a JupyterHub single-user server) first.
    if settings.policy_file and Path(settings.policy_file).is_file():
        own = Path(settings.policy_file)
        if _POLICY_NAME_RE.fullmatch(own.stem):
            found[own.stem] = own
    allow_user = settings.allow_user_policies
    for folder in policy_dirs(allow_user=allow_user):
        for candidate in sorted(folder.glob("*.toml")) if folder.is_dir() else ():
            name = candidate.stem
            path = find_policy(name, allow_user=allow_user)  # the first that applies, as kernels see it
            if name not in found and path is not None and _POLICY_NAME_RE.fullmatch(name):
                found[name] = path
    return found


def describe_policy(text: str) -> dict[str, Any]:
    """What a release policy admits, for a person choosing one: its id, whether simulated (non-confidential)
    kernels pass, and which values it pins per TEE."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        return {"id": None, "error": str(error)}
    pins = {
        tee: sorted(key for key, value in table.items() if value not in ([], "", None))
        for tee, table in data.items()
        if isinstance(table, dict)
    }
    return {
        "id": data.get("id"),
        "allow_simulation": bool(data.get("allow_simulation", False)),
        "allow_debug": bool(data.get("allow_debug", False)),
        "pins": pins,
        "pins_nothing": not any(pins.values()),
    }


def _chosen_policy(handler: TeelabAPIHandler, name: str) -> str:
    published = published_policies(handler)
    if not name:
        raise bad_request(
            "choose the release policy the dataset's key is released under: POST /teelab/api/datasets"
            f"?name=NAME&policy=POLICY, one of {sorted(published) or 'none (the operator published none)'}"
        )
    path = published.get(name)
    if path is None:
        raise bad_request(f"no published release policy {name!r}; choose one of {sorted(published)}")
    return path.read_text()


class PoliciesHandler(TeelabAPIHandler):
    """``GET /datasets/policies``: the policies an upload may choose, each with what it admits."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        policies = []
        for name, path in sorted(published_policies(self).items()):
            text = path.read_text()
            policies.append({"name": name, "text": text, **describe_policy(text)})
        self.reply({"policies": policies, "suggested": self.teelab_app.release_policy_kernel})


class DatasetsHandler(TeelabAPIHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        user = _user(self)
        owner = _owner(self)
        loop = asyncio.get_running_loop()
        try:
            views = await loop.run_in_executor(None, owner.list)
            # What this user may receive now, as the key broker judges it (its groups included).
            readable = {d.name for d in await loop.run_in_executor(None, owner.kbs.list_datasets, user)}
        except TeelabError as error:
            raise _http_error(error) from None
        finally:
            owner.close()
        datasets = []
        for view in views:
            data = view.to_json()
            # A hint for the page only; the key broker refuses what this user may not do.
            can_admin = data["name"] not in readable or data["owner"] in (user, *_owning_groups(data))
            entry = {
                "name": data["name"],
                "current_version": data["current_version"],
                "versions": [v["version"] for v in data["versions"] if not v["deleted"]],
                "owner": data["owner"],
                "created_at": data["created_at"],
                "policy_id": data["policy_id"],
                "can_read": data["name"] in readable,
                "can_admin": can_admin,
            }
            if can_admin:
                entry["grants"] = data["grants"]
            datasets.append(entry)
        self.reply({"datasets": datasets, "user": user})


def _owning_groups(data: dict[str, Any]) -> tuple[str, ...]:
    owner = str(data["owner"])
    return (owner,) if owner.startswith("group:") else ()


@web.stream_request_body
class DatasetCollectionHandler(DatasetsHandler):
    """``GET /datasets``, and ``POST /datasets?name=NAME`` with the file as the body, streamed to a private
    temporary file — only after the caller is authenticated and authorized to write."""

    async def prepare(self) -> None:  # type: ignore[override]
        self._spool: Any = None
        self._received = 0
        await super().prepare()
        if self.request.method != "POST":
            return
        user = self.current_user
        if not user:
            raise web.HTTPError(403, "log in to upload datasets")
        if not self.authorizer.is_authorized(self, user, "write", self.auth_resource):
            raise web.HTTPError(403, "you are not allowed to upload datasets on this server")
        limit = self.teelab_app.max_upload_bytes
        # Tornado buffers nothing for streaming handlers; its own limit must not be lower than ours.
        self.request.connection.set_max_body_size(limit + 1)  # type: ignore[union-attr]
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise web.HTTPError(413, f"the upload is {int(declared):,} bytes; this server accepts {limit:,}")
        # The plaintext waits in the user's private data folder (0700), never in a shared /tmp.
        staging = data_dir() / "staging" / "uploads"
        staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._spool = tempfile.NamedTemporaryFile(dir=staging, delete=False)  # created 0600

    def data_received(self, chunk: bytes) -> None:
        if self._spool is None:
            return
        self._received += len(chunk)
        if self._received > self.teelab_app.max_upload_bytes:
            self._discard()
            raise web.HTTPError(413, f"the upload exceeds {self.teelab_app.max_upload_bytes:,} bytes")
        self._spool.write(chunk)

    def on_finish(self) -> None:
        self._discard()

    def on_connection_close(self) -> None:
        self._discard()
        super().on_connection_close()

    def _discard(self) -> None:
        if self._spool is not None:
            with contextlib.suppress(OSError):
                self._spool.close()
                os.unlink(self._spool.name)
            self._spool = None

    @web.authenticated
    @authorized
    async def post(self) -> None:
        name = self.get_query_argument("name", default="").strip()
        if not name:
            raise bad_request("give the dataset a name: POST /teelab/api/datasets?name=NAME")
        if not _NAME_RE.fullmatch(name):
            raise bad_request(f"not a dataset name: {name!r} (letters, digits, '.', '_', '-'; at most 128)")
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        input_format = _FORMATS.get(content_type)
        if input_format is None:
            raise web.HTTPError(415, f"upload a CSV (text/csv) or Parquet file, not {content_type or 'this'}")
        if self._spool is None or self._received == 0:
            raise bad_request("the upload is empty")
        self._spool.close()
        source = Path(self._spool.name)
        policy = _chosen_policy(self, self.get_query_argument("policy", default="").strip())
        owner = _owner(self)

        def publish() -> Any:
            return owner.publish(
                source, name=name, policy_toml=policy, input_format=input_format, progress=False
            )

        try:
            published = await asyncio.get_running_loop().run_in_executor(None, publish)
        except TeelabError as error:
            raise _http_error(error) from None
        finally:
            owner.close()
        self.reply(
            {
                "name": published.name,
                "version": published.version,
                "policy": describe_policy(policy),
                "manifest_sha256": published.manifest_sha256,
                "rows": published.rows,
            },
            status=201,
        )


class GrantsHandler(TeelabAPIHandler):
    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        body = self.get_json_body()
        if not isinstance(body, dict) or not isinstance(body.get("principal"), str):
            raise bad_request('send {"principal": "user:NAME" | "group:NAME", "expires_at": ISO-8601 | null}')
        expires = body.get("expires_at")
        if expires is not None and not isinstance(expires, str):
            # A mistyped expiry must not quietly become a grant without one.
            raise bad_request("expires_at must be an ISO-8601 time or null")
        try:
            expires_at = parse_time(expires) if expires else None
        except UsageError as error:
            raise bad_request(error.message) from None
        owner = _owner(self)
        try:
            grant = await asyncio.get_running_loop().run_in_executor(
                None, lambda: owner.grant(name, body["principal"], expires_at=expires_at)
            )
        except TeelabError as error:
            raise _http_error(error) from None
        finally:
            owner.close()
        self.reply(
            {
                "dataset": grant.dataset,
                "principal": grant.principal,
                "granted_at": grant.granted_at.isoformat(),
                "expires_at": grant.expires_at.isoformat() if grant.expires_at else None,
            },
            status=201,
        )


class GrantHandler(GrantsHandler):
    @web.authenticated
    @authorized
    async def delete(self, name: str, principal: str) -> None:
        owner = _owner(self)
        try:
            await asyncio.get_running_loop().run_in_executor(None, owner.revoke, name, principal)
        except TeelabError as error:
            raise _http_error(error) from None
        finally:
            owner.close()
        self.set_status(204)
        self.finish()


_NAME = r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,127})"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_POLICY_NAME_RE = _NAME_RE
ROUTES = [
    (r"/datasets", DatasetCollectionHandler),
    (r"/datasets/policies", PoliciesHandler),
    (rf"/datasets/{_NAME}/grants", GrantsHandler),
    # Tornado matches the still-escaped path (clients send user%3Aalice) and unescapes the captured groups.
    (rf"/datasets/{_NAME}/grants/(?P<principal>(?:user|group)(?::|%3[Aa])[^/]+)", GrantHandler),
]
