"""How often the front door makes evidence, and for whom (docs/hosted-hub.md, "The front door").

The attestation endpoint answers anyone, and each answer is a fresh quote: on hardware a costly call into the
platform (a TDX/SGX quoting enclave, the SEV-SNP firmware). One client must not exhaust it for the others, so
evidence is limited twice:

- per client address, a token bucket (``burst`` answers at once, then ``refill_per_second``); an IPv6 client
  is its /64, since one host usually holds a whole /64 and could otherwise draw a fresh bucket per address;
- overall, at most ``concurrent`` evidence generations at a time, whoever asks.

Over a limit the endpoint answers 429 with ``Retry-After`` and makes no evidence; the connection stays open and
every other request is proxied as before. The table of buckets is bounded (``max_clients``, least recently seen
dropped first): a client whose bucket was dropped starts full again, which the global cap still bounds.
The clock is a parameter so that tests advance it instead of sleeping.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from teelab.extension.hub.front_door_protocol import FrontDoorError

PER_CLIENT = "per-client"
CONCURRENT = "concurrent"


@dataclass(frozen=True)
class EvidenceLimits:
    burst: int = 10
    refill_per_second: float = 2.0
    concurrent: int = 4
    max_clients: int = 4096

    def __post_init__(self) -> None:
        # The host sets these (it can deny service anyway); the checks keep a typo from disabling the endpoint.
        if not 1 <= self.burst <= 100_000 or not 1 <= self.concurrent <= 1024:
            raise FrontDoorError("evidence limits: burst is 1 to 100000 and concurrent 1 to 1024")
        if not (math.isfinite(self.refill_per_second) and 0 < self.refill_per_second <= 100_000):
            raise FrontDoorError("evidence limits: refill_per_second is above 0 and at most 100000")
        if not 1 <= self.max_clients <= 1_000_000:
            raise FrontDoorError("evidence limits: max_clients is 1 to 1000000")

    @classmethod
    def from_data(cls, data: object) -> EvidenceLimits:
        """Limits from the host's request (untrusted JSON): missing keys keep their defaults."""
        if data is None:
            return cls()
        if not isinstance(data, dict) or not set(data) <= {"burst", "refill_per_second", "concurrent"}:
            raise FrontDoorError("evidence limits: an object with burst, refill_per_second, concurrent")
        defaults = cls()
        try:
            return cls(
                burst=_integer(data.get("burst", defaults.burst)),
                refill_per_second=float(data.get("refill_per_second", defaults.refill_per_second)),
                concurrent=_integer(data.get("concurrent", defaults.concurrent)),
            )
        except (TypeError, ValueError, OverflowError) as error:
            raise FrontDoorError(f"evidence limits: {error}") from None

    def to_json(self) -> dict[str, object]:
        return {
            "burst": self.burst,
            "refill_per_second": self.refill_per_second,
            "concurrent": self.concurrent,
        }


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value


@dataclass(frozen=True)
class Refusal:
    """Why no evidence now: which limit, and whole seconds until asking again may succeed."""

    limit: str
    retry_after: int
    message: str


def client_key(host: str) -> str:
    """The bucket a peer address draws from: the IPv4 address, or the IPv6 /64."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host  # not an IP (a Unix socket's name): one bucket for it
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class EvidenceLimiter:
    """Token buckets per client and a cap on generations in flight; one event loop thread calls it."""

    def __init__(self, limits: EvidenceLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self.in_flight = 0

    def acquire(self, host: str) -> Refusal | None:
        """None: make evidence now (and call :meth:`release` after); else the refusal to send."""
        limits, now, key = self.limits, self._clock(), client_key(host)
        tokens, at = self._buckets.pop(key, (float(limits.burst), now))
        tokens = min(float(limits.burst), tokens + max(0.0, now - at) * limits.refill_per_second)
        self._buckets[key] = (tokens, now)  # most recently seen last
        while len(self._buckets) > limits.max_clients:
            self._buckets.popitem(last=False)
        if tokens < 1.0:
            wait = math.ceil((1.0 - tokens) / limits.refill_per_second)
            return Refusal(
                PER_CLIENT,
                max(1, wait),
                f"rate limited: at most {limits.burst} evidence requests at once per client, then "
                f"{limits.refill_per_second:g} per second",
            )
        if self.in_flight >= limits.concurrent:
            # Not charged to the client: it asked within its own limit.
            return Refusal(
                CONCURRENT, 1, f"busy: the front door makes at most {limits.concurrent} evidence at a time"
            )
        self._buckets[key] = (tokens - 1.0, now)
        self.in_flight += 1
        return None

    def release(self) -> None:
        self.in_flight -= 1


__all__ = ["CONCURRENT", "PER_CLIENT", "EvidenceLimiter", "EvidenceLimits", "Refusal", "client_key"]
