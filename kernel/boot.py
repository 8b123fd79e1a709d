"""The kernel boot: the first code that runs inside the TEE (``python -s -m teelab.kernel.boot``).

1. Read the boot request the gateway passed through the host (a nonce and where to answer; nothing secret).
2. Make an ephemeral X25519 key E; ask the TEE for evidence over SHA-512("teelab/session/v1" ‖ E.pub ‖ N).
3. Send {E.pub, evidence}; receive the session bundle sealed to E.pub (HPKE) — it only comes if the gateway
   accepted the evidence.
4. Start ipykernel with the bundle's HMAC key, CURVE keypair and ports, CURVE on every socket, a ZAP
   allow-list of exactly the provisioned key, and no connection file; then confirm readiness with an HMAC
   only a holder of the bundle can compute.

What the boot writes to stderr is read by the host: it says what step failed, never a key or a message.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import sys
import threading
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from teelab.enclave_runtime.runtime import current_runtime
from teelab.errors import TeelabError
from teelab.gateway.handshake import (
    BootRequest,
    b64,
    open_bundle,
    ready_confirmation,
    session_report_data,
    unb64,
)
from teelab.gateway.wire import HandshakeError, recv_frame, send_frame

HANDSHAKE_TIMEOUT = 300.0  # the gateway answers after verification; it holds the real deadline
_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


def _kernel_config(bundle: dict[str, Any]) -> Any:
    from traitlets.config import Config

    try:
        config = Config()
        config.IPKernelApp.ip = str(bundle["ip"])
        config.IPKernelApp.transport = "tcp"
        for name in _PORTS:
            setattr(config.IPKernelApp, name, int(bundle[name]))
        config.IPKernelApp.quiet = True
        # IPython would write every cell's code to history.sqlite; keep it in memory, off any disk.
        config.HistoryManager.hist_file = ":memory:"
        config.IPKernelApp.log_level = "ERROR"
        config.Session.key = str(bundle["key"]).encode()
        config.Session.signature_scheme = str(bundle.get("signature_scheme", "hmac-sha256"))
        config.Session.session = str(bundle["session_id"])
    except (KeyError, TypeError, ValueError) as error:
        raise HandshakeError(f"the session bundle lacks a field: {error}") from None
    return config


def _preload_kernel() -> threading.Thread:
    """Import ipykernel while the main thread waits for the loader and the gateway (both release the GIL)."""

    def load() -> None:
        with contextlib.suppress(Exception):
            import teelab.kernel.kernelapp  # noqa: F401

    thread = threading.Thread(target=load, name="teelab-preload", daemon=True)
    thread.start()
    return thread


def _make_private_dirs() -> None:
    """HOME, IPYTHONDIR, … point into the TEE's scratch space (a tmpfs that starts empty on hardware)."""
    for name in ("HOME", "IPYTHONDIR", "JUPYTER_RUNTIME_DIR", "MPLCONFIGDIR"):
        folder = os.environ.get(name)
        if folder:
            with contextlib.suppress(OSError):
                os.makedirs(folder, mode=0o700, exist_ok=True)


def _scratch() -> str | None:
    """The TEE's own scratch space (``{tee_tmp}``), when this process was launched into one."""
    folder = os.environ.get("TMPDIR", "")
    return folder if os.path.basename(folder).startswith(("teelab-tee-", "teelab-cvm-")) else None


def _clean_up_scratch() -> None:
    folder = _scratch()
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def _end_with_the_launcher() -> None:
    """Stop when the process that launched this kernel is gone.

    A kernel whose gateway died would otherwise keep its keys, and whatever data it decrypted, in memory
    with nobody able to reach it. On hardware the launcher is the gateway's process or the LibOS loader;
    either way a new parent means the session is over.
    """
    launcher = os.getppid()
    if launcher == 1:
        return

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(1.0)
        _clean_up_scratch()
        os._exit(1)

    threading.Thread(target=watch, name="teelab-launcher-watch", daemon=True).start()


def _exit_cleanly_on_sigterm() -> None:
    def stop(signum: int, frame: object) -> None:
        _clean_up_scratch()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)


def boot() -> Any:
    """Run the handshake and return the initialised kernel app (not yet started)."""
    _make_private_dirs()
    preload = _preload_kernel()
    request = BootRequest.from_env(os.environ.get("TEELAB_BOOT_REQUEST"))
    runtime = current_runtime()
    secret = X25519PrivateKey.generate()
    enclave_key = secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    evidence = runtime.evidence(session_report_data(enclave_key, request.nonce))

    with socket.create_connection((request.host, request.port), timeout=HANDSHAKE_TIMEOUT) as channel:
        send_frame(
            channel, {"type": "hello", "enclave_key": b64(enclave_key), "evidence": evidence.to_json()}
        )
        reply = recv_frame(channel)
        if reply.get("type") == "refused":
            raise HandshakeError(f"the gateway refused this kernel: {str(reply.get('reason'))[:500]}")
        if reply.get("type") != "bundle":
            raise HandshakeError(f"expected the session bundle, got {reply.get('type')!r}")
        bundle = open_bundle(secret, request.nonce, unb64(reply.get("sealed"), "sealed"))
        config = _kernel_config(bundle)

        import teelab.session

        preload.join()
        from teelab.kernel.kernelapp import TeeKernelApp

        attestation, extras = bundle.get("attestation"), bundle.get("extras")
        if not isinstance(attestation, dict) or not isinstance(extras, dict):
            raise HandshakeError("the session bundle lacks the attestation result")
        teelab.session.install(
            attestation=attestation, enclave_key=secret, extras=extras, attest=runtime.evidence
        )
        try:
            app = TeeKernelApp.instance(config=config)
            # Not configurable traits upstream (they normally come from the connection file).
            app.curve_publickey = str(bundle["curve_publickey"]).encode()
            app.curve_secretkey = str(bundle["curve_secretkey"]).encode()
            app.initialize([])
        except BaseException as error:
            send_frame(channel, {"type": "failed", "reason": type(error).__name__})
            raise
        confirm = ready_confirmation(str(bundle["key"]).encode(), request.nonce, enclave_key)
        send_frame(channel, {"type": "ready", "confirm": b64(confirm)})
    return app


def main() -> int:
    atexit.register(_clean_up_scratch)
    _exit_cleanly_on_sigterm()
    _end_with_the_launcher()
    try:
        app = boot()
    except TeelabError as error:
        print(f"teelab boot: {error.message}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"teelab boot: the handshake channel failed: {error.strerror or error}", file=sys.stderr)
        return 1
    app.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
