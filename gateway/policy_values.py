"""Checked values of an appraisal policy: each reader takes a value from a policy file or from code and returns
it normalised, or raises :class:`Invalid` naming the key and what is wrong (turned into a ConfigError naming the
file by :func:`errors_from`). No reader guesses: a typo or a wrong type never becomes a default.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from teelab.errors import ConfigError
from teelab.gateway.verified import TCB_STATUSES

ACCEPT_ANY_ADVISORY = "*"
# Collateral older than this is meaningless to accept, and the cap keeps timedelta arithmetic in range.
MAX_COLLATERAL_AGE_CAP = timedelta(days=3650)

# Statuses the verifier itself treats as failures (Intel's QVL does too): no policy can accept them.
NEVER_ACCEPTED = {
    "Revoked": "the platform's keys are known to be compromised",
    "TcbLevelNotFound": (
        "no TCB level covers this platform, so nothing is known about its TCB (Intel: TCB not supported)"
    ),
}
DURATION = re.compile(r"(\d+)([wdhms])")
DURATION_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
ADVISORY_ID = re.compile(r"[A-Z0-9][A-Z0-9._-]{0,63}")
POLICY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,159}")
# How a TEE's evidence names the gateway that controls it (ARCHITECTURE §3, the controller rule):
# "platform" — a launch-time field (SGX CONFIGID, TDX MRCONFIGID, SEV-SNP HOST_DATA) carries the controller
# hash; "measurement" — the measured image pins the controller, so only a pinned identity binds it.
CONTROLLER_BINDINGS = ("platform", "measurement")


class Invalid(Exception):
    """A value that cannot be policy; turned into a ConfigError naming where the value came from."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@contextmanager
def errors_from(source: str) -> Iterator[None]:
    try:
        yield
    except Invalid as error:
        raise ConfigError(
            f"{source}: key '{error.key}': {error.problem}",
            hint="see docs/policy.md for every key, its type and an example",
        ) from None


def hex_values(key: str, values: object, nbytes: int) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise Invalid(key, f"expected a list of {2 * nbytes}-digit hex strings, got {describe(values)}")
    return tuple(hex_text(key, value, nbytes, exact=True) for value in values)


def hex_text(key: str, value: object, nbytes: int, *, exact: bool) -> str:
    if not isinstance(value, str):
        raise Invalid(key, f"expected a hex string, got {describe(value)}")
    text = value.strip().lower().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-f]*", text) or len(text) % 2:
        raise Invalid(key, f"{clip(value)!r} is not hex (an even number of the digits 0-9a-f)")
    size = len(text) // 2
    if exact and size != nbytes:
        raise Invalid(
            key, f"{clip(value)!r} is {size} bytes; this value is {nbytes} bytes ({2 * nbytes} digits)"
        )
    if not exact and not 1 <= size <= nbytes:
        raise Invalid(key, f"{clip(value)!r} is {size} bytes; expected 1 to {nbytes} bytes")
    return text


def uint(key: str, value: object, bits: int) -> int:
    # bool is an int in Python; `isv_prod_id = true` is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(key, f"expected an integer, got {describe(value)}")
    if not 0 <= value < 1 << bits:
        raise Invalid(key, f"{value} is out of range (0 to {(1 << bits) - 1})")
    return value


def flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise Invalid(key, f"expected true or false, got {describe(value)}")
    return value


def duration(key: str, value: object) -> timedelta:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and re.fullmatch(r"(\d+[wdhms])+", value.strip().lower()):
        seconds = sum(int(n) * DURATION_UNITS[u] for n, u in DURATION.findall(value.strip().lower()))
    else:
        raise Invalid(
            key,
            f'expected seconds (an integer) or a duration like "30d", "12h", "1d12h"; got {describe(value)}',
        )
    if seconds <= 0:
        raise Invalid(key, "must be longer than zero")
    if seconds > MAX_COLLATERAL_AGE_CAP.total_seconds():
        raise Invalid(key, f"must be at most {MAX_COLLATERAL_AGE_CAP.days} days")
    return timedelta(seconds=seconds)


def tcb_statuses(key: str, values: object) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise Invalid(key, f"expected a list of TCB status names, got {describe(values)}")
    if not values:
        raise Invalid(key, 'an empty list accepts no Intel evidence at all; list at least "UpToDate"')
    canonical = {name.lower(): name for name in TCB_STATUSES}
    statuses: list[str] = []
    for value in values:
        name = canonical.get(value.lower()) if isinstance(value, str) else None
        if name is None:
            raise Invalid(key, f"{clip(value)!r} is not a TCB status{suggest(value, TCB_STATUSES)}")
        if name in NEVER_ACCEPTED:
            raise Invalid(key, f'"{name}" cannot be accepted: {NEVER_ACCEPTED[name]}')
        statuses.append(name)
    return tuple(dict.fromkeys(statuses))


def advisories(key: str, values: object) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise Invalid(key, f'expected a list of advisory ids like "INTEL-SA-00615", got {describe(values)}')
    ids: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise Invalid(key, f"expected advisory id strings, got {describe(value)}")
        text = value.strip().upper()
        if text != ACCEPT_ANY_ADVISORY and not ADVISORY_ID.fullmatch(text):
            raise Invalid(key, f'{clip(value)!r} is not an advisory id like "INTEL-SA-00615"')
        ids.append(text)
    if ACCEPT_ANY_ADVISORY in ids and len(ids) > 1:
        raise Invalid(key, '"*" accepts every advisory and must be the only entry')
    return tuple(dict.fromkeys(ids))


def binding(key: str, value: object, *, pinned: bool, pins: str) -> str:
    if value not in CONTROLLER_BINDINGS:
        raise Invalid(key, f'expected "platform" or "measurement", got {describe(value)}')
    if value == "measurement" and not pinned:
        raise Invalid(
            key,
            f'"measurement" means the measured image pins the controller, so the policy must pin the image '
            f'identity ({pins}); pin it with `teelab enclave measure`, or use "platform"',
        )
    return str(value)


def policy_id(key: str, value: object) -> str:
    if not isinstance(value, str) or not POLICY_ID.fullmatch(value):
        raise Invalid(
            key, f"expected a name of letters, digits and ._:/@+- (at most 160), got {describe(value)}"
        )
    return value


def describe(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(clip(value))
    if isinstance(value, int | float):
        return clip(str(value))
    return f"a {type(value).__name__}" if not isinstance(value, dict) else "a table"


def clip(value: object, limit: int = 40) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def suggest(word: object, choices: tuple[str, ...] | list[str]) -> str:
    if not isinstance(word, str):
        return ""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


@contextmanager
def built_in_code(name: str) -> Iterator[None]:
    with errors_from(f"{name}(...)"):
        yield


def set_field(obj: object, name: str, value: object) -> None:
    # Frozen dataclasses normalise their own fields once, at construction.
    object.__setattr__(obj, name, value)
