"""The provisioner's refusals, shaped so that stock jupyter_server shows them to the user.

jupyter_server turns any exception from starting a kernel into the JSON reply "Unhandled error" — unless
it is a ``tornado.web.HTTPError``, whose message reaches JupyterLab's dialog. These errors are both: a
teelab error for Python callers (``except AttestationFailed``) and an HTTP error for the server.
"""

from __future__ import annotations

from tornado.web import HTTPError

from teelab.errors import AttestationFailed, ConfigError


def _with_hint(message: str, hint: str | None) -> str:
    # jupyter_server puts ``log_message`` into the JSON reply as is, and tornado's logging %-formats it:
    # no arguments, and any literal % doubled.
    return (f"{message} — {hint}" if hint else message).replace("%", "%%")


class KernelRefused(AttestationFailed, HTTPError):
    """The kernel was not attested; nothing was sent to it and its process is gone (HTTP 403)."""

    def __init__(self, check: str, detail: str, *, hint: str | None = None) -> None:
        AttestationFailed.__init__(self, check, detail, hint=hint)
        HTTPError.__init__(self, 403, _with_hint(self.message, hint), reason="Kernel not attested")
        self.args = (self.message,)


class KernelMisconfigured(ConfigError, HTTPError):
    """The operator's teelab configuration cannot start this kernel (HTTP 500)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        ConfigError.__init__(self, message, hint=hint)
        HTTPError.__init__(self, 500, _with_hint(message, hint), reason="teelab configuration error")
        self.args = (message,)
