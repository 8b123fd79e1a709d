"""Reason codes: the stable, public vocabulary of the key broker's refusals.

A caller learns *which* rule refused it (so a notebook can say "your access was revoked" instead of "error"),
never the detail behind it: the detail — which check of which policy failed — goes to the audit log only,
because a dataset's release policy belongs to its owner, not to whoever asks. Codes are part of the wire
protocol (trailing metadata ``teelab-reason``); never rename one, only add.
"""

from __future__ import annotations

from enum import StrEnum

import grpc

from teelab.errors import KeyBrokerError

REASON_METADATA_KEY = "teelab-reason"


class Reason(StrEnum):
    # Request shape and authentication.
    INVALID_ARGUMENT = "invalid_argument"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    # Key release: the checks, in the order the KBS makes them (docs/protocols/kbs.md §5).
    NONCE_INVALID = "nonce_invalid"
    NONCE_EXPIRED = "nonce_expired"
    GRANT_INVALID = "grant_invalid"
    GRANT_EXPIRED = "grant_expired"
    NOT_GRANTED = "not_granted"
    DATASET_UNKNOWN = "dataset_unknown"
    VERSION_UNKNOWN = "version_unknown"
    RELEASE_EXPIRED = "release_expired"
    EVIDENCE_REJECTED = "evidence_rejected"
    # Administration.
    POLICY_INVALID = "policy_invalid"
    DEK_INVALID = "dek_invalid"
    VERSION_EXISTS = "version_exists"
    VERSION_NOT_NEWER = "version_not_newer"
    OWNER_MISMATCH = "owner_mismatch"
    # Transport and server (the client raises these too).
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    INTERNAL = "internal"
    PROTOCOL_ERROR = "protocol_error"


STATUS: dict[Reason, grpc.StatusCode] = {
    Reason.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Reason.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    Reason.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.NONCE_INVALID: grpc.StatusCode.PERMISSION_DENIED,
    Reason.NONCE_EXPIRED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.GRANT_INVALID: grpc.StatusCode.PERMISSION_DENIED,
    Reason.GRANT_EXPIRED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.NOT_GRANTED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.DATASET_UNKNOWN: grpc.StatusCode.NOT_FOUND,
    Reason.VERSION_UNKNOWN: grpc.StatusCode.NOT_FOUND,
    Reason.RELEASE_EXPIRED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.EVIDENCE_REJECTED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.POLICY_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.DEK_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.VERSION_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Reason.VERSION_NOT_NEWER: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.OWNER_MISMATCH: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Reason.INTERNAL: grpc.StatusCode.INTERNAL,
    Reason.PROTOCOL_ERROR: grpc.StatusCode.INTERNAL,
}

# What a caller is told for a release denial: the rule, in words, with nothing from the policy itself.
PUBLIC_MESSAGE: dict[Reason, str] = {
    Reason.INVALID_ARGUMENT: "the request is malformed",
    Reason.UNAUTHENTICATED: "a valid credential is required (authorization: Bearer ...)",
    Reason.FORBIDDEN: "this caller may not make this call",
    Reason.RATE_LIMITED: "too many unauthenticated or malformed requests from this address; slow down",
    Reason.NONCE_INVALID: "the nonce was not issued by this key broker or was already used",
    Reason.NONCE_EXPIRED: "the nonce has expired; ask for a new challenge",
    Reason.GRANT_INVALID: "the session grant is not valid for this session",
    Reason.GRANT_EXPIRED: "the session grant has expired; restart the kernel for a new session",
    Reason.NOT_GRANTED: "this user has no current grant on the dataset",
    Reason.DATASET_UNKNOWN: "no such dataset",
    Reason.VERSION_UNKNOWN: "no such version of the dataset",
    Reason.RELEASE_EXPIRED: "the dataset's release period has ended",
    Reason.EVIDENCE_REJECTED: "the kernel's evidence does not satisfy the dataset's release policy",
    Reason.INTERNAL: "the key broker failed; the incident is logged",
}

HINTS: dict[Reason, str] = {
    Reason.NOT_GRANTED: "ask the dataset's owner for a grant (teelab dataset grant)",
    Reason.GRANT_EXPIRED: "restart the kernel to attest a new session",
    Reason.EVIDENCE_REJECTED: "the dataset's owner decides which kernels may read it; ask which image to use",
    Reason.UNAVAILABLE: "check that the key broker is running (teelab kbs serve) and its address",
    Reason.UNAUTHENTICATED: "pass your user token (users/<you>.token in the KBS state folder on one machine), "
    "your hub or OIDC token, or the operator's admin-token",
}


def denied(reason: Reason, message: str | None = None) -> KeyBrokerError:
    """The typed error for ``reason``, with the public message unless a specific one is given."""
    return KeyBrokerError(
        reason.value, message or PUBLIC_MESSAGE.get(reason, reason.value), hint=HINTS.get(reason)
    )


class Denied(Exception):
    """A refusal inside the key broker: ``reason`` goes to the caller, ``detail`` only to the audit log."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail

    def public(self) -> KeyBrokerError:
        return denied(self.reason)


class Junk(Exception):
    """A request no one authenticated (its credential or grant does not verify, or it does not parse): it is
    answered with ``error``, counted against its peer and rate-limited, and never written to the audit log."""

    def __init__(self, error: KeyBrokerError) -> None:
        super().__init__(error.message)
        self.error = error
