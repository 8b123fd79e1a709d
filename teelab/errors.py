"""Error types shared by every part of teelab.

Every error teelab raises on purpose derives from :class:`TeelabError`. The command line turns them into a
message, an optional hint on what to do next, and an exit code; nothing else escapes as a stack trace.
Parts subclass these for their own failures (``teelab.gateway`` raises :class:`VerificationError`
subclasses, ``teelab.sealed_store`` raises :class:`SealedDataError` subclasses, and so on).
"""

from __future__ import annotations


class TeelabError(Exception):
    """Base of every error raised on purpose.

    ``hint`` is one sentence telling the user what to do about it; the CLI prints it under the message.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        # Notebooks and tracebacks show str(error); the hint belongs there too. The CLI prints .message and
        # .hint on lines of their own.
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class UsageError(TeelabError):
    """A command was called with arguments that cannot work (exit code 2)."""

    exit_code = 2


class ConfigError(TeelabError):
    """A configuration or policy file is missing or malformed (exit code 2)."""

    exit_code = 2


class PlatformError(TeelabError):
    """The TEE platform (hardware, runtime, or the simulated platform's files) cannot be used."""


class EnclaveError(TeelabError):
    """Building, measuring or launching an enclave image failed."""


class EvidenceError(TeelabError):
    """The TEE could not produce evidence or a sealing key."""


class VerificationError(TeelabError):
    """Evidence was rejected. ``check`` names the check that failed (e.g. ``pck_chain``)."""

    def __init__(self, check: str, detail: str, *, hint: str | None = None) -> None:
        super().__init__(f"{check}: {detail}", hint=hint)
        self.check = check
        self.detail = detail


class AttestationFailed(TeelabError):
    """A kernel's attestation handshake failed; ``check`` names what failed."""

    def __init__(self, check: str, detail: str, *, hint: str | None = None) -> None:
        super().__init__(f"attestation failed at {check}: {detail}", hint=hint)
        self.check = check
        self.detail = detail


class SealedDataError(TeelabError):
    """A sealed dataset is missing, malformed or has been tampered with."""


class KeyBrokerError(TeelabError):
    """The key broker refused a request or could not be reached. ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        # Raised in a Dask worker's sealed read, it travels to the client pickled: keep the reason.
        return (type(self), (self.reason, self.message), self.__dict__)
