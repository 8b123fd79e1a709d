"""The attested kernel: IPython's kernel without a debugger, with a shell that copes without a pty."""

from __future__ import annotations

from typing import Any

from ipykernel.ipkernel import IPythonKernel

from teelab.kernel.no_debugger import debug_refusal
from teelab.kernel.shell import TeeShell


class TeeKernel(IPythonKernel):  # type: ignore[misc]
    # Plain class attributes, not configurable traits: no configuration may swap them back.
    shell_class = TeeShell

    def __init__(self, **kwargs: Any) -> None:
        # The app makes a ZMQStream over an (unconnected) debugpy STREAM socket; nothing will ever use it.
        stream = kwargs.pop("debugpy_stream", None)
        if stream is not None:
            stream.close()
        super().__init__(debugpy_stream=None, **kwargs)  # type: ignore[no-untyped-call]

    async def do_debug_request(self, msg: dict[str, Any]) -> dict[str, Any]:
        return debug_refusal(msg if isinstance(msg, dict) else {})

    def dispatch_debugpy(self, msg: Any) -> None:
        """No debugpy adapter is ever connected."""

    @property
    def kernel_info(self) -> dict[str, Any]:
        info: dict[str, Any] = super().kernel_info
        features = info.get("supported_features", [])
        info["supported_features"] = [feature for feature in features if feature != "debugger"]
        return info
