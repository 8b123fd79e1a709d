"""The hub-server handshake ``teelab/hub-server/v1``: how TeeSpawner attests a single-user server's boot.

Both ends import this module (the spawner in the hub, :mod:`~teelab.extension.hub.server_boot` in the TEE) and
nothing of each other. It is the kernel handshake (:mod:`teelab.protocols.session`: framing, ``refused``,
``bundle``, ``failed``, the controller's signature) with the server's own messages:

- :class:`ServerBootRequest` (host → TEE, environment, nothing secret): nonce, answer address, ``G_s.pub``, the
  server's name, where to listen for re-challenges;
- :class:`ServerHello` (TEE → hub): ``E.pub``, the SPKI of the TLS key ``T`` made inside, and evidence over
  :func:`hello_report_data`;
- :class:`ServerBundle` (hub → TEE, sealed to ``E.pub`` and signed by ``G_s``): the server's environment,
  argv and folder, and — typed, never in ``env`` — its secrets (the hub API token, which is also the OAuth client
  secret, a key broker credential, the TLS certificate for ``T``);
- :class:`ChallengeAnswer` (TEE → hub, on re-challenge): evidence over :func:`challenge_report_data`.

Everything decoded here crossed the untrusted host: every decoder fails only with :class:`HandshakeError`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from teelab.protocols.session import CONTROLLER_KEY_SIZE, X25519_KEY_SIZE, HandshakeError, Message
from teelab.protocols.session import NONCE_SIZE as NONCE_SIZE  # the spawner and the boot use these from here
from teelab.protocols.session import b64 as b64
from teelab.protocols.session import unb64 as unb64

PROTOCOL = "teelab/hub-server/v1"
REQUEST_ENV = "TEELAB_HUB_SERVER_REQUEST"
CONFIRM_KEY_SIZE = 32
MAX_SPKI = 1024  # a P-256 SPKI is 91 bytes; nothing legitimate is larger than an RSA-4096 one (~550)
MAX_ENV = 512
MAX_ARGV = 256
MAX_VALUE = 64 * 1024
MAX_INIT_DATA = 96 * 1024  # gzip+base64 of the init-data: teelab's values and a Kata agent policy (Rego)
# Never in ServerBundle.env: they travel in its typed secrets section only (and never in the host's view).
SECRET_ENV = frozenset(
    {
        "JUPYTERHUB_API_TOKEN",
        "JPY_API_TOKEN",
        "TEELAB_KBS_TOKEN",
        "JUPYTERHUB_SSL_KEYFILE",
        "JUPYTERHUB_SSL_CERTFILE",
        "JUPYTERHUB_SSL_CLIENT_CA",
    }
)
_HELLO_LABEL = PROTOCOL.encode() + b"/hello"
_CHALLENGE_LABEL = PROTOCOL.encode() + b"/challenge"
_BUNDLE_INFO = PROTOCOL.encode() + b"/bundle"
_CONTROLLER_LABEL = PROTOCOL.encode() + b"/controller"
_READY_LABEL = PROTOCOL.encode() + b"/ready"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_SERVER = re.compile(r"[A-Za-z0-9._@+-]{1,255}/[A-Za-z0-9._@+-]{0,255}")
_ADDRESS = re.compile(r"([A-Za-z0-9.:\[\]-]{1,255}):([0-9]{1,5})")


def _str(data: Mapping[str, object], key: str, what: str, *, limit: int = MAX_VALUE) -> str:
    value = data.get(key)
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise HandshakeError(f"{what}: {key} is missing, not a string, too long or holds a NUL")
    return value


def _optional(data: Mapping[str, object], key: str, what: str) -> str | None:
    return None if data.get(key) is None else _str(data, key, what)


def _hex(data: Mapping[str, object], key: str, what: str, size: int) -> bytes:
    text = _str(data, key, what, limit=2 * size)
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise HandshakeError(f"{what}: {key} is not hex") from None
    if len(value) != size:
        raise HandshakeError(f"{what}: {key} must be {size} bytes, not {len(value)}")
    return value


def _flag(data: Mapping[str, object], key: str, what: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise HandshakeError(f"{what}: {key} is not true or false")
    return value


def _address(value: str, what: str) -> tuple[str, int]:
    match = _ADDRESS.fullmatch(value)
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise HandshakeError(f"{what}: {value[:60]!r} is not HOST:PORT")
    return match.group(1), int(match.group(2))


def server_id(user: str, server_name: str) -> str:
    """``user/server_name`` (the default server: ``user/``), the name the evidence binds."""
    value = f"{user}/{server_name}"
    if not _SERVER.fullmatch(value):
        raise HandshakeError(f"cannot bind the server name {value[:80]!r}")
    return value


# -- the bytes both ends compute -------------------------------------------------------------------------


def _binding(label: bytes, enclave_key: bytes, tls_spki: bytes, nonce: bytes, server: str) -> bytes:
    # Fixed-size fields only (32 bytes each): the encoding is unambiguous.
    parts = (enclave_key, hashlib.sha256(tls_spki).digest(), nonce, hashlib.sha256(server.encode()).digest())
    return hashlib.sha512(label + b"".join(parts)).digest()


def hello_report_data(enclave_key: bytes, tls_spki: bytes, nonce: bytes, server: str) -> bytes:
    """``SHA-512("teelab/hub-server/v1/hello" ‖ E.pub ‖ SHA-256(T.spki) ‖ N ‖ SHA-256(user/server))``."""
    return _binding(_HELLO_LABEL, enclave_key, tls_spki, nonce, server)


def challenge_report_data(enclave_key: bytes, tls_spki: bytes, nonce: bytes, server: str) -> bytes:
    """As :func:`hello_report_data` under ``.../challenge``: a re-challenge answer is never a hello."""
    return _binding(_CHALLENGE_LABEL, enclave_key, tls_spki, nonce, server)


def seal(enclave_key: bytes, nonce: bytes, bundle: ServerBundle) -> bytes:
    public = X25519PublicKey.from_public_bytes(enclave_key)
    return _SUITE.encrypt(json.dumps(bundle.to_json()).encode(), public, info=_BUNDLE_INFO + nonce)


def unseal(secret: X25519PrivateKey, nonce: bytes, sealed: bytes) -> bytes:
    try:
        return _SUITE.decrypt(sealed, secret, info=_BUNDLE_INFO + nonce)
    except (InvalidTag, ValueError):
        raise HandshakeError("the server bundle does not open with this enclave's key") from None


def _signed(sealed: bytes, nonce: bytes, enclave_key: bytes) -> bytes:
    return _CONTROLLER_LABEL + nonce + enclave_key + sealed


def sign(controller: Ed25519PrivateKey, sealed: bytes, nonce: bytes, enclave_key: bytes) -> bytes:
    """``G_s``'s signature over the sealed bundle for this nonce and enclave key (a label of its own: a kernel
    session bundle's signature never verifies here, nor the other way round)."""
    return controller.sign(_signed(sealed, nonce, enclave_key))


def check_signature(
    controller_key: bytes, signature: bytes, sealed: bytes, nonce: bytes, enclave_key: bytes
) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(controller_key).verify(
            signature, _signed(sealed, nonce, enclave_key)
        )
    except (InvalidSignature, ValueError):
        raise HandshakeError(
            "the server bundle was not authenticated by this server's controller (the spawner that launched it)"
        ) from None


def ready_confirmation(confirm_key: bytes, nonce: bytes, enclave_key: bytes) -> bytes:
    return hmac.new(confirm_key, _READY_LABEL + nonce + enclave_key, hashlib.sha256).digest()


def check_ready(confirm_key: bytes, nonce: bytes, enclave_key: bytes, confirmation: bytes) -> bool:
    return hmac.compare_digest(ready_confirmation(confirm_key, nonce, enclave_key), confirmation)


# -- the boot request (hub → TEE through the host, in the environment) ---------------------------------


@dataclass(frozen=True)
class ServerBootRequest:
    """Nothing secret: the host sees and may change all of it. A changed nonce or server name fails the
    evidence's binding, a changed answer address reaches nobody who holds ``G_s``, a changed controller key
    makes the boot refuse (the platform names the controller it was launched for).

    ``listen``: the boot listens at ``respond_to`` and the spawner connects (a pod, which the hub reaches at its
    IP once Kubernetes reports it) instead of connecting to the spawner. Anyone on the pod network can connect
    as well, so there an unsigned ``refused`` is no one's word: the listening boot
    (:mod:`~teelab.extension.hub.boot_listener`) closes that connection only and proceeds on a bundle ``G_s``
    signed alone, until its overall deadline. ``init_data``: the Kata/CoCo init-data
    annotation (gzip+base64 TOML, public) whose digest the platform put in the launch field; it names the
    controller (:mod:`~teelab.extension.hub.kubernetes`)."""

    nonce: bytes
    respond_to: tuple[str, int]
    controller_key: bytes
    server: str  # user/server_name
    attest_listen: tuple[str, int]  # where the boot answers re-challenges
    listen: bool = False
    init_data: str | None = None

    def to_env(self) -> str:
        return json.dumps(
            {
                "protocol": PROTOCOL,
                "nonce": self.nonce.hex(),
                "respond_to": f"{self.respond_to[0]}:{self.respond_to[1]}",
                "controller_key": self.controller_key.hex(),
                "server": self.server,
                "attest_listen": f"{self.attest_listen[0]}:{self.attest_listen[1]}",
                **({"listen": True} if self.listen else {}),
                **({"init_data": self.init_data} if self.init_data is not None else {}),
            }
        )

    @classmethod
    def from_env(cls, value: str | None) -> ServerBootRequest:
        what = "the server boot request"
        if not value:
            raise HandshakeError(f"no boot request: {REQUEST_ENV} is not set")
        try:
            data = json.loads(value)
        except (ValueError, RecursionError):
            raise HandshakeError(f"{what} is not JSON") from None
        if not isinstance(data, dict) or data.get("protocol") != PROTOCOL:
            raise HandshakeError(f"{what} is not a {PROTOCOL} request")
        server = _str(data, "server", what, limit=512)
        if not _SERVER.fullmatch(server):
            raise HandshakeError(f"{what}: malformed server name")
        return cls(
            nonce=_hex(data, "nonce", what, NONCE_SIZE),
            respond_to=_address(_str(data, "respond_to", what, limit=300), what),
            controller_key=_hex(data, "controller_key", what, CONTROLLER_KEY_SIZE),
            server=server,
            attest_listen=_address(_str(data, "attest_listen", what, limit=300), what),
            listen=_flag(data, "listen", what),
            init_data=None
            if data.get("init_data") is None
            else _str(data, "init_data", what, limit=MAX_INIT_DATA),
        )


# -- messages ----------------------------------------------------------------------------------------------


def _evidence(message: Mapping[str, object]) -> dict[str, object]:
    evidence = message.get("evidence")
    if not isinstance(evidence, dict):
        raise HandshakeError("evidence is missing or not an object")
    return evidence


def _keys(message: Mapping[str, object]) -> tuple[bytes, bytes]:
    key = unb64(message.get("enclave_key"), "enclave_key")
    if len(key) != X25519_KEY_SIZE:
        raise HandshakeError(f"enclave_key must be {X25519_KEY_SIZE} bytes, not {len(key)}")
    spki = unb64(message.get("tls_spki"), "tls_spki")
    if not 0 < len(spki) <= MAX_SPKI:
        raise HandshakeError(f"tls_spki must be 1 to {MAX_SPKI} bytes of DER")
    return key, spki


@dataclass(frozen=True)
class ServerHello(Message):
    """TEE → hub: ``E.pub``, the in-TEE TLS key's SPKI (DER) and evidence over :func:`hello_report_data`."""

    kind: ClassVar[str] = "server-hello"
    enclave_key: bytes
    tls_spki: bytes
    evidence: Mapping[str, object]

    def to_json(self) -> dict[str, object]:
        return {
            "type": self.kind,
            "enclave_key": b64(self.enclave_key),
            "tls_spki": b64(self.tls_spki),
            "evidence": dict(self.evidence),
        }

    @classmethod
    def _decode(cls, message: Mapping[str, object]) -> ServerHello:
        key, spki = _keys(message)
        return cls(key, spki, _evidence(message))


@dataclass(frozen=True)
class ChallengeAnswer(Message):
    """TEE → hub on re-challenge: the same fields as the hello, evidence over :func:`challenge_report_data`."""

    kind: ClassVar[str] = "challenge-answer"
    enclave_key: bytes
    tls_spki: bytes
    evidence: Mapping[str, object]

    def to_json(self) -> dict[str, object]:
        return {
            "type": self.kind,
            "enclave_key": b64(self.enclave_key),
            "tls_spki": b64(self.tls_spki),
            "evidence": dict(self.evidence),
        }

    @classmethod
    def _decode(cls, message: Mapping[str, object]) -> ChallengeAnswer:
        key, spki = _keys(message)
        return cls(key, spki, _evidence(message))


@dataclass(frozen=True)
class ServerSecrets:
    """What must never be in the host's view of the server: set in the boot's own process memory only."""

    api_token: str  # JUPYTERHUB_API_TOKEN: the server's hub token, and its OAuth client secret
    kbs_token: str | None = None  # a key broker credential other than the hub token, if configured
    tls_cert_pem: str | None = None  # the certificate for the in-TEE key T (internal_ssl)
    tls_ca_pem: str | None = None  # the CA whose clients (the proxy, the hub) the server accepts

    def to_json(self) -> dict[str, object]:
        return {
            "api_token": self.api_token,
            "kbs_token": self.kbs_token,
            "tls_cert_pem": self.tls_cert_pem,
            "tls_ca_pem": self.tls_ca_pem,
        }

    def __repr__(self) -> str:  # never in a log or a traceback
        return "ServerSecrets(…)"

    @classmethod
    def from_json(cls, data: object) -> ServerSecrets:
        what = "the server bundle's secrets"
        if not isinstance(data, dict):
            raise HandshakeError(f"{what} is not an object")
        token = _str(data, "api_token", what, limit=4096)
        if not token:
            raise HandshakeError(f"{what}: api_token is empty")
        return cls(
            api_token=token,
            kbs_token=_optional(data, "kbs_token", what),
            tls_cert_pem=_optional(data, "tls_cert_pem", what),
            tls_ca_pem=_optional(data, "tls_ca_pem", what),
        )


@dataclass(frozen=True)
class ServerBundle:
    """The sealed plaintext: how to run the server, and its secrets in their own section."""

    server: str
    env: Mapping[str, str]
    argv: tuple[str, ...]
    cwd: str
    confirm_key: bytes
    secrets: ServerSecrets
    verdict: Mapping[str, object] = field(default_factory=dict)  # the hub's verdict, for the server to show

    def to_json(self) -> dict[str, object]:
        return {
            "protocol": PROTOCOL,
            "server": self.server,
            "env": dict(self.env),
            "argv": list(self.argv),
            "cwd": self.cwd,
            "confirm_key": self.confirm_key.hex(),
            "secrets": self.secrets.to_json(),
            "verdict": dict(self.verdict),
        }

    def __repr__(self) -> str:
        return f"ServerBundle(server={self.server!r}, …)"

    @classmethod
    def from_json(cls, data: object) -> ServerBundle:
        what = "the server bundle"
        if not isinstance(data, dict) or data.get("protocol") != PROTOCOL:
            raise HandshakeError(f"{what} is not a {PROTOCOL} bundle")
        env = data.get("env")
        if not isinstance(env, dict) or len(env) > MAX_ENV:
            raise HandshakeError(f"{what}: env is not an object of at most {MAX_ENV} entries")
        for name in env:
            if not _ENV_NAME.fullmatch(name):
                raise HandshakeError(f"{what}: {name[:60]!r} is not an environment variable name")
            if name in SECRET_ENV:
                raise HandshakeError(f"{what}: {name} belongs in the secrets section, not env")
            _str(env, name, what)
        argv = data.get("argv")
        if not isinstance(argv, list) or len(argv) > MAX_ARGV:
            raise HandshakeError(f"{what}: argv is not a list of at most {MAX_ARGV} strings")
        args = tuple(_str({"arg": a}, "arg", what, limit=4096) for a in argv)
        cwd = _str(data, "cwd", what, limit=4096)
        if not cwd.startswith("/"):
            raise HandshakeError(f"{what}: cwd is not an absolute path")
        verdict = data.get("verdict", {})
        if not isinstance(verdict, dict):
            raise HandshakeError(f"{what}: verdict is not an object")
        server = _str(data, "server", what, limit=512)
        return cls(
            server=server,
            env=dict(env),
            argv=args,
            cwd=cwd,
            confirm_key=_hex(data, "confirm_key", what, CONFIRM_KEY_SIZE),
            secrets=ServerSecrets.from_json(data.get("secrets")),
            verdict=verdict,
        )


def parse_bundle(plaintext: bytes) -> ServerBundle:
    try:
        data: Any = json.loads(plaintext)
    except (ValueError, RecursionError):
        raise HandshakeError("the server bundle is not JSON") from None
    return ServerBundle.from_json(data)
