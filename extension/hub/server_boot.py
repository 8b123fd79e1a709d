"""The single-user server's boot: the first code in the server's TEE (``python -s -m
teelab.extension.hub.server_boot``, the entrypoint of the measured image ``teelab-hub-server``).

1. Read the boot request the spawner passed through the host (nonce, answer address, ``G_s.pub``, the server's
   name, where to answer re-challenges; nothing secret) and refuse one naming another controller than the
   platform was launched for.
2. Make the ephemeral X25519 key ``E`` and the server's TLS key ``T`` (P-256), both inside; ask the TEE for
   evidence over :func:`~.spawner_protocol.hello_report_data`; start answering re-challenges; send the hello.
3. Receive the bundle sealed to ``E.pub`` and signed by ``G_s`` — it only comes if the spawner accepted the
   evidence. A bundle ``G_s`` did not sign is refused unread, and the boot exits with status 1.
4. Set the server's environment and its secrets (the hub API token, …) in this process's memory only — the
   host's view of the process (``/proc/<pid>/environ``, its argv) never holds them — confirm, and run
   ``jupyterhub-singleuser`` in this process.

What it writes to stderr is read by the host: it says what step failed, never a key or a message.
"""

from __future__ import annotations

import hmac
import json
import os
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from teelab.errors import TeelabError
from teelab.extension.hub import spawner_protocol as protocol
from teelab.extension.hub.spawner_protocol import (
    ChallengeAnswer,
    ServerBootRequest,
    ServerBundle,
    ServerHello,
)
from teelab.kernel.attested_module import CONTROLLER_ENV, Evidence, TeeRuntime, current_runtime
from teelab.protocols.session import (
    HandshakeError,
    Ready,
    Refused,
    SealedBundle,
    controller_hash,
    decode_one_of,
    recv_frame,
    send_frame,
)

HANDSHAKE_TIMEOUT = 300.0  # the spawner holds the real deadline
ATTEST_PATH = "/teelab/hub-server/attest"


def check_launch_controller(runtime: TeeRuntime, request: ServerBootRequest, env: Mapping[str, str]) -> None:
    """Obey only the controller the platform names (its launch-time field, or the measured image's pin)."""
    expected = controller_hash(request.controller_key)
    for source, value in (
        ("the platform's launch-time field", runtime.controller()),
        ("the measured image", env.get(CONTROLLER_ENV)),
    ):
        if isinstance(value, str):
            try:
                value = bytes.fromhex(value)
            except ValueError:
                value = b"?"
        if isinstance(value, bytes) and any(value) and not hmac.compare_digest(value, expected):
            raise HandshakeError(
                f"the boot request names another controller than {source} this server was launched with"
            )


class ServerKeys:
    """``E`` and ``T``, made inside the TEE; their secrets never leave this process."""

    def __init__(self) -> None:
        self.enclave_secret = X25519PrivateKey.generate()
        self.enclave_key = self.enclave_secret.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.tls_secret = ec.generate_private_key(ec.SECP256R1())
        self.tls_spki = self.tls_secret.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def tls_key_pem(self) -> bytes:
        return self.tls_secret.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def challenge_server(
    listen: tuple[str, int], keys: ServerKeys, server: str, evidence: Callable[[bytes], Evidence]
) -> ThreadingHTTPServer:
    """Answer ``GET /teelab/hub-server/attest?nonce=<64 hex>`` with fresh evidence over the same keys.

    Unauthenticated on purpose: it hands out nothing but public keys and evidence bound to the asker's nonce
    under a label no hello carries."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            values = parse_qs(url.query).get("nonce", [])
            try:
                nonce = bytes.fromhex(values[0]) if url.path == ATTEST_PATH and len(values) == 1 else b""
            except ValueError:
                nonce = b""
            if len(nonce) != protocol.NONCE_SIZE:
                self.send_error(404 if url.path != ATTEST_PATH else 400)
                return
            report_data = protocol.challenge_report_data(keys.enclave_key, keys.tls_spki, nonce, server)
            with lock:
                answer = ChallengeAnswer(keys.enclave_key, keys.tls_spki, evidence(report_data).to_json())
            body = json.dumps(answer.to_json()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None  # the host reads stderr; nonces are not worth telling it

    httpd = ThreadingHTTPServer(listen, Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="teelab-attest", daemon=True).start()
    return httpd


def _private_folder() -> Path:
    """The TEE's scratch space (``{tee_tmp}``: a tmpfs inside a confidential VM), 0700."""
    folder = Path(os.environ.get("TMPDIR") or "/tmp") / "teelab-server"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def apply_bundle(bundle: ServerBundle, keys: ServerKeys) -> None:
    """The server's environment, then its secrets, into this process's memory; the TLS files into the TEE's
    own scratch space (only with a certificate for ``T``, i.e. under ``internal_ssl``)."""
    os.environ.update(bundle.env)
    secrets = bundle.secrets
    # os.environ writes the C environment with setenv: the block the host reads (/proc/<pid>/environ) is the
    # one this process started with and stays as it was.
    os.environ["JUPYTERHUB_API_TOKEN"] = secrets.api_token
    if secrets.kbs_token:
        # The key broker client reads its credential from a file: one in the TEE's own scratch space.
        token_file = _private_folder() / "kbs-token"
        token_file.touch(mode=0o600)
        token_file.write_text(secrets.kbs_token)
        os.environ["TEELAB_KBS_TOKEN_FILE"] = str(token_file)
    if secrets.tls_cert_pem:
        folder = _private_folder()
        files = {
            "JUPYTERHUB_SSL_KEYFILE": ("server.key", keys.tls_key_pem()),
            "JUPYTERHUB_SSL_CERTFILE": ("server.crt", secrets.tls_cert_pem.encode()),
            "JUPYTERHUB_SSL_CLIENT_CA": ("ca.crt", (secrets.tls_ca_pem or "").encode()),
        }
        for name, (filename, data) in files.items():
            path = folder / filename
            path.touch(mode=0o600)
            path.write_bytes(data)
            os.environ[name] = str(path)
    os.chdir(bundle.cwd)


def handshake(request: ServerBootRequest, runtime: TeeRuntime) -> tuple[ServerBundle, ServerKeys]:
    keys = ServerKeys()
    evidence = runtime.evidence(
        protocol.hello_report_data(keys.enclave_key, keys.tls_spki, request.nonce, request.server)
    )
    challenge_server(request.attest_listen, keys, request.server, runtime.evidence)
    with socket.create_connection(request.respond_to, timeout=HANDSHAKE_TIMEOUT) as channel:
        send_frame(channel, ServerHello(keys.enclave_key, keys.tls_spki, evidence.to_json()))
        reply = decode_one_of(recv_frame(channel), Refused, SealedBundle)
        if isinstance(reply, Refused):
            raise HandshakeError(f"the spawner refused this server: {reply.reason}")
        assert isinstance(reply, SealedBundle)
        # Only the controller may run this server: anything else sealed to E.pub is refused unread.
        protocol.check_signature(
            request.controller_key, reply.signature, reply.sealed, request.nonce, keys.enclave_key
        )
        bundle = protocol.parse_bundle(protocol.unseal(keys.enclave_secret, request.nonce, reply.sealed))
        if bundle.server != request.server:
            raise HandshakeError("the server bundle was made for another server")
        apply_bundle(bundle, keys)
        send_frame(
            channel, Ready(protocol.ready_confirmation(bundle.confirm_key, request.nonce, keys.enclave_key))
        )
    return bundle, keys


def main() -> int:
    try:
        request = ServerBootRequest.from_env(os.environ.pop(protocol.REQUEST_ENV, None))
        runtime = current_runtime()
        check_launch_controller(runtime, request, os.environ)
        bundle, _keys = handshake(request, runtime)
    except TeelabError as error:
        print(f"teelab server boot: {error.message}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"teelab server boot: the handshake failed: {error.strerror or error}", file=sys.stderr)
        return 1
    from jupyterhub.singleuser import main as singleuser

    sys.argv = ["jupyterhub-singleuser", *bundle.argv]
    singleuser()  # runs the server until it stops (its own exit status, if any, is a SystemExit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
