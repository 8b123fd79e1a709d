"""The attested kernel has no debugger: debugpy would talk in plaintext over the host's loopback.

Stock ipykernel answers a ``debug_request`` by running ``debugpy.listen(("127.0.0.1", port))`` in the kernel
(debugpy's adapter then listens there) and relaying every Debug Adapter Protocol message — source, variables,
evaluated expressions — over a plain TCP connection to it (ipykernel 7.4 ``kernelapp.py`` 399-406,
``debugger.py`` 205, 434). Under a LibOS that loopback is the host's network stack. ``"debugger": false`` in
the kernelspec only hides JupyterLab's panel; the kernel still honours the request.

So here:
- the kernel (``tee_kernel.TeeKernel``) answers every ``debug_request`` with :func:`debug_refusal`, a DAP
  error response saying why, advertises no ``debugger`` feature in ``kernel_info`` (JupyterLab then shows no
  debugger), and drops the debugpy sockets;
- :func:`refuse_debugpy` makes ``import debugpy`` (and its vendored pydevd) fail in the kernel process with
  the same reason, so neither ipykernel nor a library can start the adapter by accident.
User code that wants to step through code can use ``%debug`` / ``breakpoint()``: IPython's pdb talks over
the kernel's CURVE stdin channel.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

REFUSAL = (
    "the debugger is disabled in an attested teelab kernel: its adapter would talk in plaintext over the "
    "host's loopback"
)


def _blocked(name: str) -> bool:
    # debugpy and the pydevd it vendors (pydevd, pydevd_*, _pydevd_bundle, _pydev_bundle, …).
    top = name.partition(".")[0]
    return top == "debugpy" or top.startswith(("pydevd", "_pydevd", "pydev_", "_pydev_"))


class _RefuseDebugpy(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if _blocked(fullname):
            raise ModuleNotFoundError(f"{fullname}: {REFUSAL}", name=fullname)
        return None


def refuse_debugpy() -> None:
    """Make debugpy unimportable in this process (idempotent); call before ipykernel looks for it."""
    if not any(isinstance(finder, _RefuseDebugpy) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RefuseDebugpy())


def debug_refusal(request: dict[str, Any]) -> dict[str, Any]:
    """A Debug Adapter Protocol error response to ``request`` (the content of a ``debug_request``)."""
    seq = request.get("seq")
    command = request.get("command")
    return {
        "type": "response",
        "seq": 0,
        "request_seq": seq if isinstance(seq, int) else 0,
        "command": command[:100] if isinstance(command, str) else "",
        "success": False,
        "message": REFUSAL,
        "body": {"error": {"id": 1, "format": REFUSAL, "showUser": True}},
    }
