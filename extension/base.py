"""What every teelab REST handler shares: the ``teelab`` auth resource and JSON in, JSON out.

Subclasses decorate each method with ``@web.authenticated`` and ``@authorized``; ``authorized`` checks
``auth_resource`` with the server's :class:`~jupyter_server.auth.Authorizer` (read for GET, write for
POST/PUT/PATCH/DELETE). Errors are raised as :class:`tornado.web.HTTPError` with a message, which
:class:`~jupyter_server.base.handlers.APIHandler` turns into ``{"message": ..., "reason": ...}``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

if TYPE_CHECKING:
    from teelab.extension.app import TeelabExtensionApp

AUTH_RESOURCE = "teelab"


class TeelabAPIHandler(ExtensionHandlerMixin, APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def teelab_app(self) -> TeelabExtensionApp:
        from teelab.extension.app import TeelabExtensionApp

        app = self.extensionapp
        if not isinstance(app, TeelabExtensionApp):
            raise web.HTTPError(500, "the teelab server extension is not loaded")
        return app

    def reply(self, body: object, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


def bad_request(message: str) -> web.HTTPError:
    return web.HTTPError(400, message)


def not_found(message: str) -> web.HTTPError:
    return web.HTTPError(404, message)
