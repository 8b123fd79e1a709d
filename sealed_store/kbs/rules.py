"""Who may change what: the key broker's rules about a dataset, applied to the state the store reports.

Each rule is called by the store inside the transaction that would make the change (``admin_store.Admit``), so
the decision and the change see the same rows. A dataset is administered — new versions, release policy,
grants, revocations, deletion, its audit entries — by its owner: a user (``alice``), or the members of an
owning group (``group:analysts``); and by any caller with the KBS admin role.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from teelab.sealed_store.kbs.admin_store import DatasetState
from teelab.sealed_store.kbs.identity import Identity
from teelab.sealed_store.kbs.reasons import Denied, Reason

GROUP_PREFIX = "group:"


@dataclass(frozen=True)
class Caller:
    """An authenticated identity together with the KBS's own group memberships of its user."""

    identity: Identity
    kbs_groups: frozenset[str] = frozenset()

    @property
    def actor(self) -> str:
        return self.identity.actor

    @property
    def groups(self) -> frozenset[str]:
        return self.identity.groups | self.kbs_groups

    def owns(self, owner: str) -> bool:
        """Whether ``owner`` (a dataset's owner field) names this caller or a group it is in."""
        if owner.startswith(GROUP_PREFIX):
            return owner.removeprefix(GROUP_PREFIX) in self.groups
        return self.identity.user is not None and owner == self.identity.user

    def administers(self, owner: str) -> bool:
        return self.identity.admin or self.owns(owner)


def live(state: DatasetState) -> None:
    if not state.live:
        raise Denied(Reason.DATASET_UNKNOWN, f"no dataset named {state.name}")


def administered_by(caller: Caller, *, must_be_live: bool = True) -> Callable[[DatasetState], None]:
    """Changes to an existing dataset: only by whoever administers it (checked before existence is told)."""

    def admit(state: DatasetState) -> None:
        if state.owner is not None and state.live and not caller.administers(state.owner):
            raise Denied(
                Reason.FORBIDDEN,
                f"only the owner of dataset {state.name} (or a KBS admin) may change it; {caller.actor} does not "
                "own it",
            )
        if must_be_live:
            live(state)
        elif state.owner is None or not state.live:
            # Revoking on an unknown dataset: only an admin learns "nothing there".
            if not caller.identity.admin:
                raise Denied(Reason.DATASET_UNKNOWN, f"no dataset named {state.name}")

    return admit


def may_register(caller: Caller, version: int, owner: str) -> Callable[[DatasetState], None]:
    """A new version: by whoever administers the dataset (a deleted dataset's name is free), with a number
    never used before; a new dataset's owner must be the caller or a group it is in (or any, for an admin)."""

    def admit(state: DatasetState) -> None:
        if state.live and state.owner is not None:
            if not caller.administers(state.owner):
                raise Denied(
                    Reason.FORBIDDEN,
                    f"{caller.actor} does not own dataset {state.name}: it may not add versions",
                )
            if state.owner != owner:
                raise Denied(
                    Reason.OWNER_MISMATCH, f"dataset {state.name} is owned by {state.owner!r}, not {owner!r}"
                )
        elif not caller.administers(owner):
            raise Denied(Reason.FORBIDDEN, f"{caller.actor} may not register a dataset owned by {owner!r}")
        newest = state.newest_version
        if version in state.versions:
            raise Denied(
                Reason.VERSION_EXISTS,
                f"{state.name} version {version} is already registered (versions are never reused)",
            )
        if newest is not None and version <= newest:
            raise Denied(
                Reason.VERSION_NOT_NEWER,
                f"{state.name} already has version {newest}; a new version must be higher",
            )

    return admit
