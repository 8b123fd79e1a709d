"""The kernel boot: the first code that runs inside the TEE (``python -s -m teelab.kernel.boot``).

1. Read the boot request the gateway passed through the host (a nonce, where to answer, and ``G.pub``, the
   launching gateway's identity — its controller; nothing secret). Refuse a request naming another controller
   than the one the platform was launched for, where the runtime can tell.
2. Make an ephemeral X25519 key E; ask the TEE for evidence over SHA-512("teelab/session/v1" ‖ E.pub ‖ N).
3. Send {E.pub, evidence}; receive the session bundle sealed to E.pub (HPKE) and signed by G — it only comes
   if the gateway accepted the evidence. A bundle G did not sign is refused unread, and the boot exits.
4. In a confidential VM, fork a root agent that alone keeps the attestation device and drop to an unprivileged
   user (user code's evidence then comes from the agent, over SHA-512("teelab/user/v1" ‖ data) only).
5. Start ipykernel with the bundle's HMAC key, CURVE keypair and ports, CURVE on every socket, a ZAP
   allow-list of exactly the provisioned key, and no connection file; then confirm readiness with an HMAC
   only a holder of the bundle can compute.

The messages are :mod:`teelab.protocols.session`'s; the boot imports no verifier code. What it writes to
stderr is read by the host: it says what step failed, never a key or a message.
"""

from __future__ import annotations

import atexit
import contextlib
import hmac
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from teelab.enclave_runtime.backend import Evidence, TeeRuntime
from teelab.enclave_runtime.controller import CONTROLLER_ENV
from teelab.enclave_runtime.runtime import current_runtime
from teelab.errors import TeelabError
from teelab.protocols.session import (
    BOOT_REQUEST_ENV,
    ENTRY_DASK_NODE,
    PORT_NAMES,
    BootRequest,
    Failed,
    HandshakeError,
    Hello,
    Ready,
    Refused,
    SealedBundle,
    SessionBundle,
    check_bundle_signature,
    controller_hash,
    decode_one_of,
    decrypt_bundle,
    parse_bundle,
    ready_confirmation,
    recv_frame,
    requested_entry,
    send_frame,
    session_report_data,
)
from teelab.sealed_store.notebook import ReaderSession, install_key_release

HANDSHAKE_TIMEOUT = 300.0  # the gateway answers after verification; it holds the real deadline
_PRIVATE_DIRS = ("HOME", "IPYTHONDIR", "JUPYTER_RUNTIME_DIR", "MPLCONFIGDIR")


def _kernel_config(bundle: SessionBundle) -> Any:
    from traitlets.config import Config

    config = Config()
    config.IPKernelApp.ip = bundle.ip
    config.IPKernelApp.transport = bundle.transport
    for name, port in zip(PORT_NAMES, bundle.ports, strict=True):
        setattr(config.IPKernelApp, name, port)
    config.IPKernelApp.quiet = True
    # IPython would write every cell's code to history.sqlite; keep it in memory, off any disk.
    config.HistoryManager.hist_file = ":memory:"
    config.IPKernelApp.log_level = "ERROR"
    config.Session.key = bundle.key
    config.Session.signature_scheme = bundle.signature_scheme
    config.Session.session = bundle.session_id
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
    for name in _PRIVATE_DIRS:
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


def _check_launch_controller(
    runtime: TeeRuntime, request: BootRequest, env: Mapping[str, str] | None = None
) -> None:
    """Obey only the controller the platform names: the one bound into this TEE's evidence at launch.

    Otherwise a host could launch the image bound to a victim's controller while the boot request names the
    host's own key, and run code in a kernel whose evidence carries the victim's controller. The controller
    comes from the runtime's launch-time field (:meth:`TeeRuntime.controller`; None: none bound, and the
    gateway's controller check refuses this kernel's evidence) and, for images that pin it ("measurement"
    binding), from the measured environment. Either can only make the boot refuse.
    """
    expected = controller_hash(request.controller_key)
    bound = runtime.controller()
    pinned = (os.environ if env is None else env).get(CONTROLLER_ENV)
    for source, value in (("the platform's launch-time field", bound), ("the measured image", pinned)):
        if isinstance(value, str):
            value = bytes.fromhex(value) if _is_hex(value) else b"?"
        if isinstance(value, bytes) and any(value) and not hmac.compare_digest(value, expected):
            raise HandshakeError(
                f"the boot request names another controller than {source} this kernel was launched with"
            )


def _confine_kernel(runtime: TeeRuntime) -> Callable[[bytes], Evidence] | None:
    """Where the TEE's attestation interface would be in user code's reach (a confidential VM's guest device,
    root's), keep it for a privileged agent and run the kernel unprivileged, its private folders its own
    (:meth:`TeeRuntime.confine`). The function returned is user code's only way to evidence then."""
    folders = {os.environ.get(name) for name in _PRIVATE_DIRS} | {_scratch()}
    return runtime.confine(sorted(folder for folder in folders if folder))


def _is_hex(value: str) -> bool:
    return len(value) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in value)


def boot() -> Any:
    """Run the handshake and return the initialised kernel app (not yet started)."""
    _make_private_dirs()
    preload = _preload_kernel()
    request = BootRequest.from_env(os.environ.get(BOOT_REQUEST_ENV))
    runtime = current_runtime()
    _check_launch_controller(runtime, request)
    secret = X25519PrivateKey.generate()
    enclave_key = secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    evidence = runtime.evidence(session_report_data(enclave_key, request.nonce))

    with socket.create_connection((request.host, request.port), timeout=HANDSHAKE_TIMEOUT) as channel:
        send_frame(channel, Hello(enclave_key, evidence.to_json()))
        reply = decode_one_of(recv_frame(channel), Refused, SealedBundle)
        if isinstance(reply, Refused):
            raise HandshakeError(f"the gateway refused this kernel: {reply.reason}")
        assert isinstance(reply, SealedBundle)
        plaintext = decrypt_bundle(secret, request.nonce, reply.sealed)  # made for this E and N, by someone
        # Only the controller may run code here: a bundle anyone else sealed to E.pub is refused unread.
        check_bundle_signature(
            request.controller_key, reply.signature, reply.sealed, request.nonce, enclave_key
        )
        bundle = parse_bundle(plaintext)
        config = _kernel_config(bundle)

        import teelab.session

        preload.join()  # no import in flight when a confidential VM's boot forks its agent
        user_evidence = _confine_kernel(runtime)  # in a confidential VM: unprivileged from here on
        from teelab.kernel.kernelapp import TeeKernelApp

        teelab.session.install(
            attestation=bundle.attestation,
            key_broker=bundle.key_broker,
            attest=runtime.evidence,
            user_evidence=user_evidence,
        )
        # E's secret and the raw evidence function go to the dataset reader only, never to teelab.session.
        install_key_release(ReaderSession(bundle.key_broker, secret, runtime.evidence))
        try:
            app = TeeKernelApp.instance(config=config)
            # Not configurable traits upstream (they normally come from the connection file).
            app.curve_publickey = bundle.curve_publickey
            app.curve_secretkey = bundle.curve_secretkey
            app.initialize([])
        except BaseException as error:
            send_frame(channel, Failed(type(error).__name__))
            raise
        send_frame(channel, Ready(ready_confirmation(bundle.key, request.nonce, enclave_key)))
    return app


def main() -> int:
    if requested_entry(os.environ.get(BOOT_REQUEST_ENV)) == ENTRY_DASK_NODE:
        # The same measured image boots a Dask node of an attested cluster (teelab.dask, issue 16).
        from teelab.dask.boot import main as dask_node_main

        return dask_node_main()
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
