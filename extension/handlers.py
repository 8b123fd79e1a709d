"""The teelab REST API: every route under ``/teelab/api/``.

The dataset routes live in :mod:`teelab.extension.datasets`, which provides ``ROUTES``: a list of
``(pattern relative to /teelab/api, handler class[, kwargs])``, its handlers subclassing
:class:`~teelab.extension.base.TeelabAPIHandler`. The JupyterLab front end already speaks this contract:

- ``GET  /datasets`` → ``{"datasets": [{"name", "current_version", "versions", "owner", "created_at",
  "can_read", "can_admin", "grants" (when can_admin)}]}``
- ``POST /datasets?name=<name>``, the raw CSV or Parquet file as the body → 201
  ``{"name", "version", "manifest_sha256", "rows"}`` (413 when over ``TeelabExtensionApp.max_upload_bytes``)
- ``POST /datasets/<name>/grants`` ``{"principal", "expires_at"}`` → 201 grant JSON
- ``DELETE /datasets/<name>/grants/<principal>`` → 204
"""

from __future__ import annotations

import importlib
from typing import Any

from tornado.web import RequestHandler

from teelab.extension.health import HealthHandler
from teelab.extension.kernels import KernelAttestationHandler, KernelsHandler
from teelab.extension.policy import PolicyHandler

API = "/teelab/api"
DATASETS_MODULE = "teelab.extension.datasets"

Route = tuple[str, type[RequestHandler]] | tuple[str, type[RequestHandler], dict[str, Any]]

ROUTES: list[Route] = [
    (r"/kernels", KernelsHandler),
    (r"/kernels/(?P<kernel_id>[^/]+)/attestation", KernelAttestationHandler),
    (r"/policy", PolicyHandler),
    (r"/health", HealthHandler),
]


def dataset_routes() -> list[Route]:
    try:
        module = importlib.import_module(DATASETS_MODULE)
    except ModuleNotFoundError as error:
        if error.name != DATASETS_MODULE:
            raise  # the module exists but something it imports does not: that is a bug to see
        return []
    return list(module.ROUTES)


def _under_api(route: Route) -> Route:
    if len(route) == 2:
        return (API + route[0], route[1])
    return (API + route[0], route[1], route[2])


def routes() -> list[Route]:
    """Every route with its full path (jupyter_server prefixes the base URL)."""
    return [_under_api(route) for route in [*ROUTES, *dataset_routes()]]
