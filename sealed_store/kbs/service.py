"""The gRPC face of the key broker: decode, authorize, call :class:`KeyBroker`, encode, map errors.

Every request is hostile until checked. Bytes that do not decode as the method's message are answered with
INVALID_ARGUMENT (the deserializer never raises into gRPC, which would turn them into INTERNAL); every field
is checked for shape and size before anything reads it; errors leave as a gRPC status plus the reason code
in the trailing metadata ``teelab-reason``. An unexpected exception is logged here and answered with
INTERNAL — the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from teelab.errors import KeyBrokerError
from teelab.gateway.verifier import MAX_EVIDENCE_BYTES
from teelab.sealed_store.kbs import validation
from teelab.sealed_store.kbs.broker import KeyBroker
from teelab.sealed_store.kbs.delegation import DelegateInput
from teelab.sealed_store.kbs.grants import MAX_GRANT_CHARS
from teelab.sealed_store.kbs.identity import Identity
from teelab.sealed_store.kbs.junk import JunkMeter
from teelab.sealed_store.kbs.model import UNSET, DatasetInfo, GrantInfo, VersionInfo
from teelab.sealed_store.kbs.protocol import NONCE_SIZE, SERVICE_NAME
from teelab.sealed_store.kbs.reasons import REASON_METADATA_KEY, STATUS, Junk, Reason, denied
from teelab.sealed_store.kbs.release import ReleaseInput
from teelab.sealed_store.kbs.v1 import kbs_pb2 as pb

log = logging.getLogger("teelab.kbs")

MAX_CERTIFICATES_BYTES = 256 * 1024
MAX_COLLATERAL_BYTES = MAX_EVIDENCE_BYTES
MAX_SEALED_DEK_BYTES = 1024
MAX_POLICY_CHARS = 64 * 1024
BUSY_MESSAGE = "the key broker is verifying as much evidence as it can; retry the release shortly"


class Access(Enum):
    PUBLIC = "public"  # the kernel's calls: a release is authorized by its session grant
    AUTHENTICATED = "authenticated"  # any authenticated identity; what it may do is the broker's decision


class _Malformed:
    """Stands in for a request whose bytes did not decode."""

    def __init__(self, error: str) -> None:
        self.error = error


@dataclass(frozen=True)
class _Method:
    request: type[Message]
    response: type[Message]
    access: Access
    # Judges evidence (the slow, attacker-sized part): runs in the evidence lane, never on the event loop.
    verifies_evidence: bool = False


METHODS: dict[str, _Method] = {
    "GetInfo": _Method(pb.GetInfoRequest, pb.GetInfoResponse, Access.PUBLIC),
    "Challenge": _Method(pb.ChallengeRequest, pb.ChallengeResponse, Access.PUBLIC),
    "Release": _Method(pb.ReleaseRequest, pb.ReleaseResponse, Access.PUBLIC, verifies_evidence=True),
    "DelegateGrant": _Method(
        pb.DelegateGrantRequest, pb.DelegateGrantResponse, Access.PUBLIC, verifies_evidence=True
    ),
    "IssueSessionGrant": _Method(
        pb.IssueSessionGrantRequest, pb.IssueSessionGrantResponse, Access.AUTHENTICATED
    ),
    "RegisterDataset": _Method(pb.RegisterDatasetRequest, pb.RegisterDatasetResponse, Access.AUTHENTICATED),
    "SetReleasePolicy": _Method(
        pb.SetReleasePolicyRequest, pb.SetReleasePolicyResponse, Access.AUTHENTICATED
    ),
    "GetDataset": _Method(pb.GetDatasetRequest, pb.GetDatasetResponse, Access.AUTHENTICATED),
    "ListDatasets": _Method(pb.ListDatasetsRequest, pb.ListDatasetsResponse, Access.AUTHENTICATED),
    "DeleteDataset": _Method(pb.DeleteDatasetRequest, pb.DeleteDatasetResponse, Access.AUTHENTICATED),
    "Grant": _Method(pb.GrantRequest, pb.GrantResponse, Access.AUTHENTICATED),
    "Revoke": _Method(pb.RevokeRequest, pb.RevokeResponse, Access.AUTHENTICATED),
    "AddMember": _Method(pb.AddMemberRequest, pb.AddMemberResponse, Access.AUTHENTICATED),
    "RemoveMember": _Method(pb.RemoveMemberRequest, pb.RemoveMemberResponse, Access.AUTHENTICATED),
    "ListGroups": _Method(pb.ListGroupsRequest, pb.ListGroupsResponse, Access.AUTHENTICATED),
    "GetAudit": _Method(pb.GetAuditRequest, pb.GetAuditResponse, Access.AUTHENTICATED),
}


def _lenient(cls: type[Message]) -> Callable[[bytes], Message | _Malformed]:
    def parse(data: bytes) -> Message | _Malformed:
        try:
            return cls.FromString(data)
        except Exception as error:
            return _Malformed(f"not a valid {cls.DESCRIPTOR.name}: {type(error).__name__}")

    return parse


# -- values in and out -------------------------------------------------------------------------------


def ts_in(message: Message, name: str) -> datetime | None:
    """An optional Timestamp field as an aware datetime, range-checked."""
    if not message.HasField(name):
        return None
    value: Timestamp = getattr(message, name)
    try:
        at = value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise validation.invalid(name, "is not a valid time") from None
    return validation.timestamp(at, name)


def ts_out(target: Timestamp, at: datetime) -> None:
    target.FromDatetime(at.astimezone(UTC))


def _version_out(message: pb.VersionInfo, info: VersionInfo) -> None:
    message.version = info.version
    message.manifest_sha256 = info.manifest_sha256
    ts_out(message.registered_at, info.registered_at)
    if info.deleted_at is not None:
        ts_out(message.deleted_at, info.deleted_at)


def _grant_out(message: pb.GrantInfo, info: GrantInfo) -> None:
    message.dataset = info.dataset
    message.principal = info.principal
    ts_out(message.granted_at, info.granted_at)
    if info.expires_at is not None:
        ts_out(message.expires_at, info.expires_at)


def _dataset_out(message: pb.DatasetInfo, info: DatasetInfo) -> None:
    message.name = info.name
    message.owner = info.owner
    message.current_version = info.current_version or 0
    message.policy_id = info.policy_id
    message.policy_sha256 = info.policy_sha256
    ts_out(message.created_at, info.created_at)
    if info.release_expires_at is not None:
        ts_out(message.release_expires_at, info.release_expires_at)
    for version in info.versions:
        _version_out(message.versions.add(), version)
    for grant in info.grants:
        _grant_out(message.grants.add(), grant)


def _optional_uint(message: Message, name: str) -> int | None:
    return int(getattr(message, name)) if message.HasField(name) else None


# -- the service -------------------------------------------------------------------------------------


# Evidence-verifying calls admitted at once (running or queued for the evidence lane); beyond it a release is
# answered ``rate_limited`` at once, so a flood of them cannot take every slot gRPC allows the server.
DEFAULT_MAX_PENDING_EVIDENCE = 256


class KbsService:
    """The broker's methods as grpc.aio handlers, in two lanes.

    Evidence lane: a call that verifies evidence (``Release``) runs on ``evidence_executor`` (the loop's
    default executor when None), never on the event loop: its evidence is attacker-sized and can be slow to
    judge, and on the loop it would stall every other call. At most ``max_pending_evidence`` such calls are
    admitted at once; more are refused (``rate_limited``) before any work. Other calls: with ``executor``
    None on the event loop (cheap CPU work: the fastest there); with an executor, in its threads, so
    database round trips overlap — a flood of releases queues in the evidence lane, never in front of them.
    """

    def __init__(
        self,
        broker: KeyBroker,
        executor: Executor | None = None,
        *,
        evidence_executor: Executor | None = None,
        max_pending_evidence: int = DEFAULT_MAX_PENDING_EVIDENCE,
    ) -> None:
        if max_pending_evidence < 1:
            raise ValueError("max_pending_evidence must be at least 1")
        self.broker = broker
        self.executor = executor
        self.evidence_executor = evidence_executor
        self.max_pending_evidence = max_pending_evidence
        # Only the event loop's thread reads and writes it (admission and completion happen there).
        self.pending_evidence = 0
        auth = broker.config.auth
        self.junk = JunkMeter(burst=auth.junk_burst, per_second=auth.junk_per_second, clock=broker.clock)

    def handler(self) -> grpc.GenericRpcHandler:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._behaviour(name, method),
                request_deserializer=_lenient(method.request),
                response_serializer=lambda message: message.SerializeToString(),
            )
            for name, method in METHODS.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    def _behaviour(
        self, name: str, method: _Method
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]]:
        implementation: Callable[[Any, Identity | None], Message] = getattr(self, f"_{name}")

        async def behaviour(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
            error: KeyBrokerError
            peer = context.peer() or "unknown"
            try:
                if self.junk.limited(peer):
                    raise denied(Reason.RATE_LIMITED)
                arguments = (name, implementation, request, method.access, context)
                if method.verifies_evidence:
                    return await self._in_evidence_lane(*arguments)
                if self.executor is None:
                    return self._call(*arguments)
                return await asyncio.get_running_loop().run_in_executor(self.executor, self._call, *arguments)
            except Junk as junk:
                self.junk.charge(peer)
                error = junk.error
            except KeyBrokerError as raised:
                error = raised
            except Exception:
                log.exception("KBS %s failed", name)
                error = denied(Reason.INTERNAL)
            code = _status(error.reason)
            context.set_trailing_metadata(((REASON_METADATA_KEY, str(error.reason)),))
            await context.abort(code, error.message)
            raise AssertionError("context.abort returns only by raising")

        return behaviour

    async def _in_evidence_lane(
        self,
        name: str,
        implementation: Callable[[Any, Identity | None], Message],
        request: Any,
        access: Access,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Message:
        if self.pending_evidence >= self.max_pending_evidence:
            raise denied(Reason.RATE_LIMITED, BUSY_MESSAGE)
        self.pending_evidence += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.evidence_executor, self._call, name, implementation, request, access, context
            )
        finally:
            self.pending_evidence -= 1

    def _call(
        self,
        name: str,
        implementation: Callable[[Any, Identity | None], Message],
        request: Any,
        access: Access,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Message:
        identity = self._authenticate(access, context)
        if isinstance(request, _Malformed):
            raise Junk(validation.invalid("request", request.error))
        return implementation(request, identity)

    def _authenticate(self, access: Access, context: grpc.aio.ServicerContext[Any, Any]) -> Identity | None:
        if access is Access.PUBLIC:
            return None
        metadata = [(str(m.key), m.value) for m in context.invocation_metadata() or ()]
        identity = self.broker.identify(metadata)
        if identity is None:
            raise Junk(denied(Reason.UNAUTHENTICATED))
        return identity

    # -- public -------------------------------------------------------------------------------------

    def _GetInfo(self, request: pb.GetInfoRequest, caller: Identity | None) -> pb.GetInfoResponse:
        info = self.broker.info()
        response = pb.GetInfoResponse(
            protocol=info.protocol,
            hpke_public_key=info.hpke_public_key,
            hpke_suite=info.hpke_suite,
            signing_public_key=info.signing_public_key,
            signing_key_id=info.signing_key_id,
        )
        if info.server_time is not None:
            ts_out(response.server_time, info.server_time)
        return response

    def _Challenge(self, request: pb.ChallengeRequest, caller: Identity | None) -> pb.ChallengeResponse:
        challenge = self.broker.challenge()
        response = pb.ChallengeResponse(nonce=challenge.nonce)
        ts_out(response.expires_at, challenge.expires_at)
        return response

    def _Release(self, request: pb.ReleaseRequest, caller: Identity | None) -> pb.ReleaseResponse:
        try:
            parsed = release_input(request, self.broker.open_sealed_grant)
        except KeyBrokerError as error:
            self.broker.spend_junk_nonce(bytes(request.nonce))
            raise Junk(error) from None
        output = self.broker.release(parsed)
        return pb.ReleaseResponse(
            dataset=output.dataset,
            version=output.version,
            manifest_sha256=output.manifest_sha256,
            sealed_dek=output.sealed_dek,
        )

    def _DelegateGrant(
        self, request: pb.DelegateGrantRequest, caller: Identity | None
    ) -> pb.DelegateGrantResponse:
        try:
            parsed = delegate_input(request, self.broker.open_sealed_grant)
            longest = int(self.broker.config.max_session_grant_ttl.total_seconds())
            if parsed.ttl_seconds is not None and not 1 <= parsed.ttl_seconds <= longest:
                raise validation.invalid("ttl_seconds", f"must be 1 to {longest} seconds")
        except KeyBrokerError as error:
            self.broker.spend_junk_nonce(bytes(request.nonce))
            raise Junk(error) from None
        delegated = self.broker.delegate_grant(parsed)
        response = pb.DelegateGrantResponse(
            sealed_grant=delegated.sealed_grant, grant_id=delegated.issued.grant_id
        )
        ts_out(response.expires_at, delegated.issued.expires_at)
        return response

    # -- gateway ------------------------------------------------------------------------------------

    def _IssueSessionGrant(
        self, request: pb.IssueSessionGrantRequest, caller: Identity | None
    ) -> pb.IssueSessionGrantResponse:
        ttl = _optional_uint(request, "ttl_seconds")
        issued = self.broker.issue_session_grant(
            caller=_identity(caller),
            user=request.user or None,
            enclave_key_sha256=request.enclave_key_sha256,
            controller_sha256=request.controller_sha256 or None,
            ttl=None if ttl is None else timedelta(seconds=ttl),
        )
        response = pb.IssueSessionGrantResponse(grant=issued.token, grant_id=issued.grant_id)
        ts_out(response.expires_at, issued.expires_at)
        return response

    # -- datasets -----------------------------------------------------------------------------------

    def _RegisterDataset(
        self, request: pb.RegisterDatasetRequest, caller: Identity | None
    ) -> pb.RegisterDatasetResponse:
        info = self.broker.register_dataset(
            dataset=request.dataset,
            version=request.version,
            manifest_sha256=request.manifest_sha256,
            sealed_dek=validation.bounded_bytes(request.sealed_dek, MAX_SEALED_DEK_BYTES, "sealed_dek"),
            release_policy_toml=validation.bounded_text(
                request.release_policy_toml, MAX_POLICY_CHARS, "release_policy_toml", required=False
            ),
            owner=request.owner or None,
            release_expires_at=ts_in(request, "release_expires_at")
            if request.HasField("release_expires_at")
            else UNSET,
            caller=_identity(caller),
        )
        response = pb.RegisterDatasetResponse()
        _dataset_out(response.dataset, info)
        return response

    def _SetReleasePolicy(
        self, request: pb.SetReleasePolicyRequest, caller: Identity | None
    ) -> pb.SetReleasePolicyResponse:
        if request.clear_release_expiry and request.HasField("release_expires_at"):
            raise validation.invalid("clear_release_expiry", "cannot be combined with release_expires_at")
        expiry = (
            None
            if request.clear_release_expiry
            else ts_in(request, "release_expires_at")
            if request.HasField("release_expires_at")
            else UNSET
        )
        text = (
            validation.bounded_text(
                request.release_policy_toml, MAX_POLICY_CHARS, "release_policy_toml", required=False
            )
            if request.HasField("release_policy_toml")
            else None
        )
        info = self.broker.set_release_policy(
            dataset=request.dataset,
            release_policy_toml=text,
            release_expires_at=expiry,
            caller=_identity(caller),
        )
        response = pb.SetReleasePolicyResponse()
        _dataset_out(response.dataset, info)
        return response

    def _GetDataset(self, request: pb.GetDatasetRequest, caller: Identity | None) -> pb.GetDatasetResponse:
        info = self.broker.get_dataset(request.dataset, caller=_identity(caller))
        response = pb.GetDatasetResponse(release_policy_toml=info.release_policy_toml or "")
        _dataset_out(response.dataset, info)
        return response

    def _ListDatasets(
        self, request: pb.ListDatasetsRequest, caller: Identity | None
    ) -> pb.ListDatasetsResponse:
        found = self.broker.list_datasets(request.user or None, caller=_identity(caller))
        response = pb.ListDatasetsResponse()
        for info in found:
            _dataset_out(response.datasets.add(), info)
        return response

    def _DeleteDataset(
        self, request: pb.DeleteDatasetRequest, caller: Identity | None
    ) -> pb.DeleteDatasetResponse:
        deleted = self.broker.delete_dataset(
            request.dataset, _optional_uint(request, "version"), caller=_identity(caller)
        )
        return pb.DeleteDatasetResponse(deleted_versions=deleted)

    # -- grants and groups --------------------------------------------------------------------------

    def _Grant(self, request: pb.GrantRequest, caller: Identity | None) -> pb.GrantResponse:
        info = self.broker.grant(
            request.dataset,
            request.principal,
            expires_at=ts_in(request, "expires_at"),
            caller=_identity(caller),
        )
        response = pb.GrantResponse()
        _grant_out(response.grant, info)
        return response

    def _Revoke(self, request: pb.RevokeRequest, caller: Identity | None) -> pb.RevokeResponse:
        return pb.RevokeResponse(
            revoked=self.broker.revoke(request.dataset, request.principal, caller=_identity(caller))
        )

    def _AddMember(self, request: pb.AddMemberRequest, caller: Identity | None) -> pb.AddMemberResponse:
        added = self.broker.add_member(request.group, request.user, caller=_identity(caller))
        return pb.AddMemberResponse(added=added)

    def _RemoveMember(
        self, request: pb.RemoveMemberRequest, caller: Identity | None
    ) -> pb.RemoveMemberResponse:
        return pb.RemoveMemberResponse(
            removed=self.broker.remove_member(request.group, request.user, caller=_identity(caller))
        )

    def _ListGroups(self, request: pb.ListGroupsRequest, caller: Identity | None) -> pb.ListGroupsResponse:
        response = pb.ListGroupsResponse()
        for group in self.broker.list_groups(request.group or None, caller=_identity(caller)):
            response.groups.add(name=group.name, members=list(group.members))
        return response

    # -- audit --------------------------------------------------------------------------------------

    def _GetAudit(self, request: pb.GetAuditRequest, caller: Identity | None) -> pb.GetAuditResponse:
        records, head = self.broker.audit(
            since_seq=request.since_seq,
            limit=request.limit,
            dataset=request.dataset or None,
            caller=_identity(caller),
        )
        response = pb.GetAuditResponse(
            head_seq=head.seq, head_hash=head.hash, head_signature=head.signature or b""
        )
        for record in records:
            response.entries.add(
                seq=record.seq, body=record.body, hash=record.hash, signature=record.signature
            )
        return response


# A sealed grant: the JWT plus HPKE's encapsulated key (32) and tag (16).
MAX_SEALED_GRANT_BYTES = 4 * MAX_GRANT_CHARS + 64


def release_input(request: pb.ReleaseRequest, open_grant: Callable[[bytes, bytes], str]) -> ReleaseInput:
    """Shape checks for a release request, and the sealed grant opened; ``invalid_argument`` names the field."""
    version = _optional_uint(request, "version")
    nonce = validation.exact_bytes(bytes(request.nonce), NONCE_SIZE, "nonce")
    sealed_grant = validation.bounded_bytes(
        bytes(request.sealed_grant), MAX_SEALED_GRANT_BYTES, "sealed_grant"
    )
    try:
        grant = open_grant(nonce, sealed_grant)
    except ValueError as error:
        raise validation.invalid("sealed_grant", str(error)) from None
    return ReleaseInput(
        nonce=nonce,
        dataset=validation.dataset_name(request.dataset),
        version=None if version is None else validation.version(version),
        enclave_key=validation.x25519_public_key(bytes(request.enclave_key)),
        grant=validation.bounded_text(grant, MAX_GRANT_CHARS, "grant"),
        evidence=validation.bounded_bytes(bytes(request.evidence), MAX_EVIDENCE_BYTES, "evidence"),
        certificates=validation.bounded_bytes(
            bytes(request.certificates), MAX_CERTIFICATES_BYTES, "certificates", required=False
        )
        or None,
        collateral=validation.bounded_bytes(
            bytes(request.collateral), MAX_COLLATERAL_BYTES, "collateral", required=False
        )
        or None,
    )


MAX_DELEGATED_DATASETS = 256


def delegate_input(
    request: pb.DelegateGrantRequest, open_grant: Callable[[bytes, bytes], str]
) -> DelegateInput:
    """Shape checks for a delegation request, and the sealed parent grant opened."""
    nonce = validation.exact_bytes(bytes(request.nonce), NONCE_SIZE, "nonce")
    sealed_grant = validation.bounded_bytes(
        bytes(request.sealed_grant), MAX_SEALED_GRANT_BYTES, "sealed_grant"
    )
    try:
        grant = open_grant(nonce, sealed_grant)
    except ValueError as error:
        raise validation.invalid("sealed_grant", str(error)) from None
    if len(request.datasets) > MAX_DELEGATED_DATASETS:
        raise validation.invalid("datasets", f"at most {MAX_DELEGATED_DATASETS} names")
    names = tuple(validation.dataset_name(name, "datasets") for name in request.datasets)
    if len(set(names)) != len(names):
        raise validation.invalid("datasets", "names a dataset twice")
    ttl = _optional_uint(request, "ttl_seconds")
    return DelegateInput(
        nonce=nonce,
        enclave_key=validation.x25519_public_key(bytes(request.enclave_key)),
        grant=validation.bounded_text(grant, MAX_GRANT_CHARS, "grant"),
        child_enclave_key_sha256=validation.sha256_hex(
            request.child_enclave_key_sha256, "child_enclave_key_sha256"
        ),
        child_controller_sha256=validation.sha256_hex(
            request.child_controller_sha256, "child_controller_sha256"
        ),
        datasets=names or None,
        ttl_seconds=ttl,
        evidence=validation.bounded_bytes(bytes(request.evidence), MAX_EVIDENCE_BYTES, "evidence"),
        certificates=validation.bounded_bytes(
            bytes(request.certificates), MAX_CERTIFICATES_BYTES, "certificates", required=False
        )
        or None,
        collateral=validation.bounded_bytes(
            bytes(request.collateral), MAX_COLLATERAL_BYTES, "collateral", required=False
        )
        or None,
    )


def _identity(caller: Identity | None) -> Identity:
    assert caller is not None, "an authenticated method ran without an identity"
    return caller


def _status(reason: str) -> grpc.StatusCode:
    try:
        return STATUS[Reason(reason)]
    except ValueError:
        return grpc.StatusCode.INTERNAL
