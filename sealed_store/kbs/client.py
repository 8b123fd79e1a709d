"""``KbsClient``: typed calls to a key broker; every failure is a ``KeyBrokerError(reason, message)``.

    kbs = KbsClient("127.0.0.1:7443", token=olivias_token)   # a credential naming the user (docs/protocols/kbs.md §1)
    kbs.register_dataset("sales", 1, manifest_sha256=..., dek=dek, release_policy_toml=...)  # owned by olivia
    kbs.grant("sales", "group:analysts", expires_at=...)

A gateway, for the user whose server it runs in (the grant names that user, never another)::

    grant = KbsClient(address, token=user_credential).issue_session_grant(enclave_key=E_pub, controller=ctl)

Inside an attested kernel (no token; the session grant authorizes)::

    key = KbsClient(address).fetch_key("sales", enclave_secret=E, grant=grant, attest=runtime.evidence)
    key.dek  # 32 bytes, only ever in this enclave's memory

The data key never crosses the wire in the clear in either direction: ``register_dataset`` seals it to the
KBS's HPKE key (pin it with ``kbs_public_key`` when the connection is not authenticated), and a release
returns it sealed to the enclave's key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from google.protobuf.message import Message

from teelab.errors import ConfigError, KeyBrokerError
from teelab.sealed_store.kbs.audit import AuditRecord, SignedHead
from teelab.sealed_store.kbs.auth import read_token
from teelab.sealed_store.kbs.model import (
    UNSET,
    Challenge,
    DatasetInfo,
    GrantInfo,
    GroupInfo,
    IssuedGrant,
    KbsInfo,
    ReleasedKey,
    Unset,
    VersionInfo,
)
from teelab.sealed_store.kbs.protocol import (
    SERVICE_NAME,
    delegation_report_data,
    delegation_request_digest,
    enclave_key_sha256,
    open_delegated_grant,
    open_released_dek,
    release_report_data,
    seal_dek_for_kbs,
    seal_grant_for_kbs,
)
from teelab.sealed_store.kbs.reasons import HINTS, REASON_METADATA_KEY, Reason
from teelab.sealed_store.kbs.transport import KbsTarget, ca_from_environment
from teelab.sealed_store.kbs.v1 import kbs_pb2 as pb

DEFAULT_TIMEOUT = 30.0
_MAX_MESSAGE = 8 * 1024 * 1024
R = TypeVar("R", bound=Message)


class EvidenceLike(Protocol):
    """What a TEE runtime's ``evidence(report_data)`` returns (``enclave_runtime.backend.Evidence``)."""

    @property
    def blob(self) -> bytes: ...

    @property
    def certificates(self) -> bytes | None: ...


@dataclass(frozen=True)
class SealedRelease:
    dataset: str
    version: int
    manifest_sha256: str
    sealed_dek: bytes = field(repr=False)


@dataclass(frozen=True)
class DelegatedGrant:
    """A child session grant, opened inside the parent session: ``token`` goes into the child's bundle."""

    token: str = field(repr=False)
    grant_id: str
    expires_at: datetime


@dataclass(frozen=True)
class AuditPage:
    records: tuple[AuditRecord, ...]
    head_seq: int
    head_hash: bytes
    head: SignedHead | None = None


_CODE_REASONS = {
    grpc.StatusCode.UNAVAILABLE: Reason.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Reason.TIMEOUT,
    grpc.StatusCode.UNAUTHENTICATED: Reason.UNAUTHENTICATED,
    grpc.StatusCode.INVALID_ARGUMENT: Reason.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED: Reason.PROTOCOL_ERROR,
}


def _error(error: grpc.RpcError) -> KeyBrokerError:
    reason: str | None = None
    try:
        for key, value in error.trailing_metadata() or ():
            if key == REASON_METADATA_KEY:
                reason = value if isinstance(value, str) else value.decode("ascii", "replace")
    except Exception:
        reason = None
    code = error.code() if hasattr(error, "code") else None
    if reason is None:
        reason = _CODE_REASONS.get(code, Reason.INTERNAL).value if code is not None else Reason.INTERNAL.value
    details = error.details() if hasattr(error, "details") else None
    message = details or (f"the key broker answered {code.name}" if code is not None else "the call failed")
    try:
        hint = HINTS.get(Reason(reason))
    except ValueError:
        hint = None
    return KeyBrokerError(reason, message, hint=hint)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _dt(message: Message, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    value: Any = getattr(message, name)
    result: datetime = value.ToDatetime(tzinfo=UTC)
    return result


def _required_dt(message: Message, name: str) -> datetime:
    value = _dt(message, name)
    if value is None:
        raise KeyBrokerError(Reason.PROTOCOL_ERROR.value, f"the key broker's answer lacks {name}")
    return value


def _ts(at: datetime) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime((at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC))
    return stamp


def _grant_in(message: pb.GrantInfo) -> GrantInfo:
    return GrantInfo(
        dataset=message.dataset,
        principal=message.principal,
        granted_at=_required_dt(message, "granted_at"),
        expires_at=_dt(message, "expires_at"),
    )


def _dataset_in(message: pb.DatasetInfo, policy: str | None = None) -> DatasetInfo:
    return DatasetInfo(
        name=message.name,
        owner=message.owner,
        current_version=message.current_version or None,
        versions=tuple(
            VersionInfo(
                version=v.version,
                manifest_sha256=v.manifest_sha256,
                registered_at=_required_dt(v, "registered_at"),
                deleted_at=_dt(v, "deleted_at"),
            )
            for v in message.versions
        ),
        policy_id=message.policy_id,
        policy_sha256=message.policy_sha256,
        created_at=_required_dt(message, "created_at"),
        release_expires_at=_dt(message, "release_expires_at"),
        grants=tuple(_grant_in(g) for g in message.grants),
        release_policy_toml=policy,
    )


class KbsClient:
    """``address``: ``HOST:PORT`` (plaintext) or ``grpcs://HOST:PORT`` (TLS; ``tls_ca`` or ``$TEELAB_KBS_CA``
    names a private CA, else the system's roots are trusted). A token is never sent in plaintext beyond
    loopback."""

    def __init__(
        self,
        address: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        kbs_public_key: bytes | None = None,
        tls_ca: bytes | None = None,
    ) -> None:
        target = KbsTarget.parse(address)
        if token and not target.tls and not target.loopback:
            raise ConfigError(
                f"refusing to send a key broker token in plaintext to {target.address}",
                hint="serve the broker with TLS (`teelab kbs serve --tls-cert PEM --tls-key PEM`) and "
                f"address it as grpcs://{target.address}",
            )
        self.address = address
        self.target = target
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._kbs_public_key = kbs_public_key
        self._stubs: dict[str, Callable[..., Any]] = {}
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
        ]
        if target.tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca or ca_from_environment())
            self._channel = grpc.secure_channel(target.address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target.address, options=options)

    @classmethod
    def with_token_file(cls, address: str, token_file: Path, **kwargs: Any) -> KbsClient:
        return cls(address, read_token(token_file), **kwargs)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> KbsClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: str, request: Message, response_type: type[R]) -> R:
        call: Callable[..., R] | None = self._stubs.get(method)
        if call is None:
            call = self._channel.unary_unary(
                f"/{SERVICE_NAME}/{method}",
                request_serializer=_serialize,
                response_deserializer=response_type.FromString,
            )
            self._stubs[method] = call
        try:
            return call(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise _error(error) from None

    # -- public --------------------------------------------------------------------------------------

    def info(self) -> KbsInfo:
        response = self._call("GetInfo", pb.GetInfoRequest(), pb.GetInfoResponse)
        return KbsInfo(
            protocol=response.protocol,
            hpke_public_key=response.hpke_public_key,
            hpke_suite=response.hpke_suite,
            signing_public_key=response.signing_public_key,
            signing_key_id=response.signing_key_id,
            server_time=_dt(response, "server_time"),
        )

    def challenge(self) -> Challenge:
        response = self._call("Challenge", pb.ChallengeRequest(), pb.ChallengeResponse)
        return Challenge(bytes(response.nonce), _required_dt(response, "expires_at"))

    def release(
        self,
        *,
        nonce: bytes,
        dataset: str,
        enclave_key: bytes,
        grant: str,
        evidence: bytes,
        version: int | None = None,
        certificates: bytes | None = None,
        collateral: bytes | None = None,
    ) -> SealedRelease:
        request = pb.ReleaseRequest(
            nonce=nonce,
            dataset=dataset,
            enclave_key=enclave_key,
            # The grant crosses the TEE host: sealed to the broker (whose key the gateway pinned for us).
            sealed_grant=seal_grant_for_kbs(self.kbs_public_key(), nonce, grant),
            evidence=evidence,
            certificates=certificates or b"",
            collateral=collateral or b"",
        )
        if version is not None:
            request.version = version
        response = self._call("Release", request, pb.ReleaseResponse)
        return SealedRelease(
            response.dataset, response.version, response.manifest_sha256, bytes(response.sealed_dek)
        )

    def fetch_key(
        self,
        dataset: str,
        *,
        enclave_secret: X25519PrivateKey,
        grant: str,
        attest: Callable[[bytes], EvidenceLike],
        version: int | None = None,
        collateral: bytes | None = None,
    ) -> ReleasedKey:
        """The whole release from inside the TEE: challenge, evidence over the binding, release, open."""
        enclave_key = enclave_secret.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        challenge = self.challenge()
        evidence = attest(
            release_report_data(
                challenge.nonce, enclave_key, grant.encode(), dataset=dataset, version=version
            )
        )
        sealed = self.release(
            nonce=challenge.nonce,
            dataset=dataset,
            version=version,
            enclave_key=enclave_key,
            grant=grant,
            evidence=evidence.blob,
            certificates=evidence.certificates,
            collateral=collateral,
        )
        if sealed.dataset != dataset or (version is not None and sealed.version != version):
            # Asked for v2, answered v1: a rollback attempt (or a broken broker); never read it.
            raise KeyBrokerError(
                Reason.PROTOCOL_ERROR.value,
                f"asked for {dataset} {'v' + str(version) if version else '(current)'}, the answer is for "
                f"{sealed.dataset} v{sealed.version}: refused",
            )
        # The answer (version, manifest digest) is bound into the sealed key's HPKE info: rewritten, it
        # does not open.
        dek = open_released_dek(
            enclave_secret,
            challenge.nonce,
            sealed.sealed_dek,
            dataset=sealed.dataset,
            version=sealed.version,
            manifest_sha256=sealed.manifest_sha256,
        )
        return ReleasedKey(sealed.dataset, sealed.version, sealed.manifest_sha256, dek)

    def delegate_grant(
        self,
        *,
        enclave_secret: X25519PrivateKey,
        grant: str,
        attest: Callable[[bytes], EvidenceLike],
        child_enclave_key: bytes,
        child_controller: bytes,
        datasets: Sequence[str] | None = None,
        ttl: timedelta | None = None,
        collateral: bytes | None = None,
    ) -> DelegatedGrant:
        """From inside an attested session: a child of its session ``grant`` for the enclave whose key is
        ``child_enclave_key`` (32 bytes), launched by ``child_controller`` (32-byte controller hash), no
        wider than ``grant`` (optionally only ``datasets``; ``ttl`` at most until ``grant`` expires)."""
        if len(child_enclave_key) != 32 or len(child_controller) != 32:
            raise ValueError("the child's enclave key and controller hash are 32 bytes each")
        enclave_key = enclave_secret.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        names = tuple(datasets or ())
        ttl_seconds = int(ttl.total_seconds()) if ttl is not None else 0
        child_ekh = enclave_key_sha256(child_enclave_key)
        challenge = self.challenge()
        digest = delegation_request_digest(child_ekh, child_controller.hex(), names, ttl_seconds)
        evidence = attest(delegation_report_data(challenge.nonce, enclave_key, grant.encode(), digest))
        request = pb.DelegateGrantRequest(
            nonce=challenge.nonce,
            enclave_key=enclave_key,
            sealed_grant=seal_grant_for_kbs(self.kbs_public_key(), challenge.nonce, grant),
            child_enclave_key_sha256=child_ekh,
            child_controller_sha256=child_controller.hex(),
            datasets=list(names),
            evidence=evidence.blob,
            certificates=evidence.certificates or b"",
            collateral=collateral or b"",
        )
        if ttl is not None:
            request.ttl_seconds = ttl_seconds
        response = self._call("DelegateGrant", request, pb.DelegateGrantResponse)
        token = open_delegated_grant(enclave_secret, challenge.nonce, bytes(response.sealed_grant))
        return DelegatedGrant(token, response.grant_id, _required_dt(response, "expires_at"))

    # -- gateway ------------------------------------------------------------------------------------

    def issue_session_grant(
        self,
        user: str | None = None,
        *,
        enclave_key: bytes | None = None,
        enclave_key_hash: str | None = None,
        controller: bytes | None = None,
        ttl: timedelta | None = None,
    ) -> IssuedGrant:
        """A session grant for the user this client authenticates as, bound to the attested session's E.pub
        (or its SHA-256 hex) and, given ``controller`` (SHA-256 of the launching gateway's identity key, 32
        bytes), to the kernels that gateway launched. ``user``, if given, must be that same user: the broker
        refuses a grant for anyone else."""
        if (enclave_key is None) == (enclave_key_hash is None):
            raise ValueError("give exactly one of enclave_key and enclave_key_hash")
        if controller is not None and len(controller) != 32:
            raise ValueError("controller is the 32-byte SHA-256 of the gateway's identity public key")
        ekh = enclave_key_hash if enclave_key_hash is not None else enclave_key_sha256(enclave_key or b"")
        request = pb.IssueSessionGrantRequest(
            user=user or "", enclave_key_sha256=ekh, controller_sha256=controller.hex() if controller else ""
        )
        if ttl is not None:
            request.ttl_seconds = int(ttl.total_seconds())
        response = self._call("IssueSessionGrant", request, pb.IssueSessionGrantResponse)
        expires_at = _required_dt(response, "expires_at")
        return IssuedGrant(
            token=response.grant,
            grant_id=response.grant_id,
            user=user or "",
            enclave_key_sha256=ekh,
            issued_at=datetime.now(UTC),
            expires_at=expires_at,
        )

    # -- datasets -----------------------------------------------------------------------------------

    def kbs_public_key(self) -> bytes:
        if self._kbs_public_key is None:
            self._kbs_public_key = self.info().hpke_public_key
        return self._kbs_public_key

    def register_dataset(
        self,
        dataset: str,
        version: int,
        *,
        manifest_sha256: str,
        dek: bytes,
        release_policy_toml: str,
        owner: str | None = None,
        release_expires_at: datetime | Unset | None = UNSET,
    ) -> DatasetInfo:
        """Register a version; the data key is sealed to the KBS here, before it leaves this process.
        ``owner`` (a user or ``group:NAME``) defaults to the authenticated caller."""
        try:
            sealed = seal_dek_for_kbs(self.kbs_public_key(), dataset, version, dek)
        except ValueError as error:
            raise KeyBrokerError(
                Reason.INVALID_ARGUMENT.value, f"cannot seal the data key: {error}"
            ) from None
        request = pb.RegisterDatasetRequest(
            dataset=dataset,
            version=version,
            manifest_sha256=manifest_sha256,
            sealed_dek=sealed,
            release_policy_toml=release_policy_toml,
            owner=owner or "",
        )
        if isinstance(release_expires_at, datetime):
            request.release_expires_at.CopyFrom(_ts(release_expires_at))
        return _dataset_in(self._call("RegisterDataset", request, pb.RegisterDatasetResponse).dataset)

    def set_release_policy(
        self,
        dataset: str,
        *,
        release_policy_toml: str | None = None,
        release_expires_at: datetime | Unset | None = UNSET,
    ) -> DatasetInfo:
        """Replace the policy text and/or the release expiry (``None`` clears it; omitted: unchanged)."""
        request = pb.SetReleasePolicyRequest(dataset=dataset)
        if release_policy_toml is not None:
            request.release_policy_toml = release_policy_toml
        if release_expires_at is None:
            request.clear_release_expiry = True
        elif isinstance(release_expires_at, datetime):
            request.release_expires_at.CopyFrom(_ts(release_expires_at))
        return _dataset_in(self._call("SetReleasePolicy", request, pb.SetReleasePolicyResponse).dataset)

    def get_dataset(self, dataset: str) -> DatasetInfo:
        response = self._call("GetDataset", pb.GetDatasetRequest(dataset=dataset), pb.GetDatasetResponse)
        return _dataset_in(response.dataset, response.release_policy_toml)

    def list_datasets(self, user: str | None = None) -> list[DatasetInfo]:
        """A user: the datasets it administers and those it may receive. An admin: every dataset (or those
        ``user`` may receive)."""
        response = self._call(
            "ListDatasets", pb.ListDatasetsRequest(user=user or ""), pb.ListDatasetsResponse
        )
        return [_dataset_in(message) for message in response.datasets]

    def delete_dataset(self, dataset: str, version: int | None = None) -> list[int]:
        request = pb.DeleteDatasetRequest(dataset=dataset)
        if version is not None:
            request.version = version
        return list(self._call("DeleteDataset", request, pb.DeleteDatasetResponse).deleted_versions)

    # -- grants and groups --------------------------------------------------------------------------

    def grant(self, dataset: str, principal: str, *, expires_at: datetime | None = None) -> GrantInfo:
        request = pb.GrantRequest(dataset=dataset, principal=principal)
        if expires_at is not None:
            request.expires_at.CopyFrom(_ts(expires_at))
        return _grant_in(self._call("Grant", request, pb.GrantResponse).grant)

    def revoke(self, dataset: str, principal: str) -> bool:
        request = pb.RevokeRequest(dataset=dataset, principal=principal)
        return self._call("Revoke", request, pb.RevokeResponse).revoked

    def add_member(self, group: str, user: str) -> bool:
        return self._call(
            "AddMember", pb.AddMemberRequest(group=group, user=user), pb.AddMemberResponse
        ).added

    def remove_member(self, group: str, user: str) -> bool:
        request = pb.RemoveMemberRequest(group=group, user=user)
        return self._call("RemoveMember", request, pb.RemoveMemberResponse).removed

    def list_groups(self, group: str | None = None) -> list[GroupInfo]:
        response = self._call("ListGroups", pb.ListGroupsRequest(group=group or ""), pb.ListGroupsResponse)
        return [GroupInfo(g.name, tuple(g.members)) for g in response.groups]

    # -- audit --------------------------------------------------------------------------------------

    def audit(self, *, since_seq: int = 0, limit: int = 0, dataset: str | None = None) -> AuditPage:
        """A page of entries and the signed head. A KBS admin reads everything; a dataset's owner only
        that dataset's entries (``dataset``)."""
        request = pb.GetAuditRequest(since_seq=since_seq, limit=limit, dataset=dataset or "")
        response = self._call("GetAudit", request, pb.GetAuditResponse)
        records = tuple(
            AuditRecord(int(e.seq), e.body, bytes(e.hash), bytes(e.signature)) for e in response.entries
        )
        head = SignedHead(
            int(response.head_seq), bytes(response.head_hash), bytes(response.head_signature) or None
        )
        return AuditPage(records, head.seq, head.hash, head)

    def iter_audit(self, *, since_seq: int = 0, dataset: str | None = None) -> Iterator[AuditRecord]:
        """Every entry after ``since_seq`` (of ``dataset`` only, if given), in order, a page at a time."""
        since = since_seq
        while True:
            page = self.audit(since_seq=since, dataset=dataset)
            yield from page.records
            if not page.records:
                return
            since = page.records[-1].seq
