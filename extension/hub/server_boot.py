"""The single-user server's boot: the first code in the server's TEE (``python -s -m
teelab.extension.hub.server_boot``, the entrypoint of the measured image ``teelab-hub-server``).

1. Read the boot request the spawner passed through the host (nonce, answer address, ``G_s.pub``, the server's
   name, where to answer re-challenges; nothing secret) and refuse one naming another controller than the
   platform was launched for. In a confidential pod the platform's launch field is the digest of the pod's
   Kata init-data, which the request carries and which must name ``G_s``.
2. Make the ephemeral X25519 key ``E`` and the server's TLS key ``T`` (P-256), both inside; ask the TEE for
   evidence over :func:`~.spawner_protocol.hello_report_data`; start answering re-challenges; send the hello.
3. Receive the bundle sealed to ``E.pub`` and signed by ``G_s`` — it only comes if the spawner accepted the
   evidence. A bundle ``G_s`` did not sign is refused unread: a connecting boot exits with status 1; a
   listening one (a pod) closes that connection and hears the others, until its overall deadline.
4. Set the server's environment in this process's memory only — the host's view of the process
   (``/proc/<pid>/environ``, its argv) never holds it — confirm, and run ``jupyterhub-singleuser`` in this
   process. The hub API token is in no environment at all: jupyter-server gets it as configuration
   (``HubAuth.api_token``) and in-process code from :mod:`~teelab.extension.hub.server_token`, so a kernel or a
   terminal the server starts (both inherit ``os.environ``) never sees it.

What it writes to stderr is read by the host: it says what step failed, never a key or a message.
"""

from __future__ import annotations

import datetime
import hmac
import json
import os
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID

from teelab.errors import TeelabError
from teelab.extension.hub import server_token
from teelab.extension.hub import spawner_protocol as protocol
from teelab.extension.hub.boot_listener import ListenLimits, hear_spawner
from teelab.extension.hub.kubernetes import launch_value, read_init_data
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
    encode_frame,
    recv_frame,
    send_frame,
)

HANDSHAKE_TIMEOUT = 300.0  # the spawner holds the real deadline
ATTEST_PATH = "/teelab/hub-server/attest"
# The hub token's names: never in this process's environment (kernels and terminals inherit it).
TOKEN_ENV = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN")


def check_launch_controller(runtime: TeeRuntime, request: ServerBootRequest, env: Mapping[str, str]) -> None:
    """Obey only the controller the platform names (its launch-time field, or the measured image's pin).

    With init-data (a confidential pod) the launch field is the init-data's digest, not the controller hash:
    the boot recomputes the digest of the init-data its request carries, compares it with the field, and obeys
    the controller that init-data names."""
    expected = controller_hash(request.controller_key)
    launched = runtime.controller()
    if request.init_data is not None:
        init_data = read_init_data(request.init_data)
        if not hmac.compare_digest(init_data.controller, expected):
            raise HandshakeError("the boot request names another controller than its init-data")
        if launched is None or not hmac.compare_digest(
            launched, launch_value(init_data.digest(), len(launched))
        ):
            raise HandshakeError(
                "the platform was launched with another init-data than the boot request carries"
            )
        launched = None  # checked: the field holds the init-data's digest, which names the controller
    for source, value in (
        ("the platform's launch-time field", launched),
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

    def challenge_tls(self) -> ssl.SSLContext:
        """TLS for the re-challenge listener with ``T`` itself: the hub pins ``T.spki`` (the attested key), so a
        self-signed certificate made here is all it needs; the key reaches OpenSSL through a memory file."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "teelab hub server")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.tls_secret.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(self.tls_secret, hashes.SHA256())
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        fd = os.memfd_create("teelab-hub-server-challenge", os.MFD_CLOEXEC)
        try:
            os.write(fd, certificate.public_bytes(serialization.Encoding.PEM) + self.tls_key_pem())
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return context


def challenge_server(
    listen: tuple[str, int], keys: ServerKeys, server: str, evidence: Callable[[bytes], Evidence]
) -> ThreadingHTTPServer:
    """Answer ``GET /teelab/hub-server/attest?nonce=<64 hex>`` with fresh evidence over the same keys, over TLS
    with the attested key ``T`` (the hub pins it: an answer relayed by anyone else fails).

    Unauthenticated on purpose: it hands out nothing but public keys and evidence bound to the asker's nonce
    under a label no hello carries."""
    lock = threading.Lock()
    tls = keys.challenge_tls()

    class Handler(BaseHTTPRequestHandler):
        timeout = 30  # a client that stalls its handshake or request holds one thread, for this long

        def setup(self) -> None:
            # The handshake in this connection's own thread: a slow client never holds up the listener.
            self.request.settimeout(self.timeout)
            self.request = tls.wrap_socket(self.request, server_side=True)
            super().setup()

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

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            return None  # a failed handshake or a client gone: nothing the host should read about

    httpd = Server(listen, Handler)
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
    # one this process started with and stays as it was. The hub token goes to no environment: in-process
    # readers (the key broker client) ask server_token, jupyter-server gets it as configuration.
    server_token.keep(secrets.api_token)
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


def accept_bundle(
    channel: socket.socket, request: ServerBootRequest, keys: ServerKeys, reply: SealedBundle
) -> ServerBundle:
    """The bundle ``G_s`` signed for this nonce and E.pub, opened and applied, then the confirmation."""
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
    return bundle


def converse(
    channel: socket.socket, request: ServerBootRequest, keys: ServerKeys, hello: ServerHello
) -> ServerBundle:
    """A connecting boot: hello on the channel to the spawner's answer address, then its bundle or refusal
    (only the spawner holds that channel: its refusal ends the boot)."""
    send_frame(channel, hello)
    reply = decode_one_of(recv_frame(channel), Refused, SealedBundle)
    if isinstance(reply, Refused):
        raise HandshakeError(f"the spawner refused this server: {reply.reason}")
    assert isinstance(reply, SealedBundle)
    return accept_bundle(channel, request, keys, reply)


def signed_by_controller(request: ServerBootRequest, keys: ServerKeys) -> Callable[[SealedBundle], bool]:
    def signed(reply: SealedBundle) -> bool:
        try:
            protocol.check_signature(
                request.controller_key, reply.signature, reply.sealed, request.nonce, keys.enclave_key
            )
        except HandshakeError:
            return False
        return True

    return signed


def listen_for_spawner(
    request: ServerBootRequest, keys: ServerKeys, hello: ServerHello, *, limits: ListenLimits | None = None
) -> ServerBundle:
    """A pod's boot: the spawner connects (it learns the pod's IP from Kubernetes), and so may anyone on the
    pod network. Every connection is heard at once (:mod:`~teelab.extension.hub.boot_listener`); only the one
    that brings a bundle G_s signed proceeds, and whatever else a connection sends — garbage, an unsigned
    refusal, another key's bundle, nothing — closes that connection only. A signed bundle that then fails
    (another server's, not opening with E) ends the boot: it came from the controller. Without a signed
    bundle by the overall deadline the boot ends (:class:`~.boot_listener.NoSpawner`)."""
    channel, reply, report = hear_spawner(
        request.respond_to, encode_frame(hello), signed_by_controller(request, keys), limits=limits
    )
    if report.total():
        print(f"teelab server boot: {report.summary()}", file=sys.stderr)
    with channel:
        channel.settimeout(HANDSHAKE_TIMEOUT)
        return accept_bundle(channel, request, keys, reply)


def handshake(request: ServerBootRequest, runtime: TeeRuntime) -> tuple[ServerBundle, ServerKeys]:
    keys = ServerKeys()
    evidence = runtime.evidence(
        protocol.hello_report_data(keys.enclave_key, keys.tls_spki, request.nonce, request.server)
    )
    challenge_server(request.attest_listen, keys, request.server, runtime.evidence)
    hello = ServerHello(keys.enclave_key, keys.tls_spki, evidence.to_json())
    if request.listen:
        return listen_for_spawner(request, keys, hello), keys
    with socket.create_connection(request.respond_to, timeout=HANDSHAKE_TIMEOUT) as channel:
        return converse(channel, request, keys, hello), keys


def run_singleuser(argv: tuple[str, ...], token: str) -> None:
    """``jupyterhub-singleuser`` in this process, its hub token given as configuration, never as environment."""
    import jupyterhub.singleuser as singleuser
    from traitlets.config import Config

    sys.argv = ["jupyterhub-singleuser", *argv]
    if getattr(singleuser, "_as_extension", False):
        from jupyterhub.singleuser.extension import JupyterHubSingleUser

        # What JupyterHubSingleUser.launch_instance does, with the configuration ServerApp starts from: every
        # HubAuth (the identity provider's, the activity reporter's) takes its token from it.
        config = Config({"HubAuth": {"api_token": token}})
        server = JupyterHubSingleUser.initialize_server(argv=list(argv), config=config)
        server.start()
        return
    # Jupyter Server < 2 (the classic app) reads the token from the environment only.
    os.environ["JUPYTERHUB_API_TOKEN"] = token
    singleuser.main()


def main() -> int:
    for name in TOKEN_ENV:
        os.environ.pop(name, None)  # none is ours: the host's launch environment holds no token
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
    run_singleuser(bundle.argv, bundle.secrets.api_token)  # until it stops (a SystemExit carries its status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
