"""``/teelab/api/policy?kernel=<kernelspec>``: the appraisal policy the server enforces for that kernelspec."""

from __future__ import annotations

import re

from jupyter_client.kernelspec import NoSuchKernel
from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized
from tornado import web

from teelab.errors import ConfigError
from teelab.extension.base import TeelabAPIHandler, bad_request, not_found
from teelab.extension.policy_view import is_teelab_kernelspec, locate_policy, policy_json

# jupyter_client's own rule for kernelspec names.
_KERNEL_NAME = re.compile(r"[a-z0-9._-]{1,255}", re.IGNORECASE)


class PolicyHandler(TeelabAPIHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        name = self.get_query_argument("kernel", default=None)
        if not name:
            raise bad_request("missing query parameter 'kernel' (a kernelspec name, e.g. teelab-sim)")
        if not _KERNEL_NAME.fullmatch(name):
            raise bad_request(f"malformed kernelspec name {name[:80]!r}")
        try:
            spec = await ensure_async(self.kernel_spec_manager.get_kernel_spec(name))
        except NoSuchKernel:
            raise not_found(f"no kernelspec named {name!r}") from None
        if not is_teelab_kernelspec(spec):
            raise not_found(f"kernelspec {name!r} is not a teelab kernel: no attestation policy applies")
        location = locate_policy(name, self.serverapp.config)
        if location.path is None:
            searched = ", ".join(str(folder) for folder in location.searched)
            raise not_found(
                f"no attestation policy for kernel {name!r} (looked for {name}.toml in {searched})"
            )
        try:
            body = policy_json(location, name)
        except ConfigError as error:
            # The operator's file is broken: kernels of this kind are refused too. Not the request's fault.
            raise web.HTTPError(500, error.message) from None
        self.reply(body)
