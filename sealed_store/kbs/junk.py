"""Junk costs a counter: requests that fail authentication or framing, counted and rate-limited per peer.

Such a request proves nothing about who sent it, so it must not cost the broker a signed, durable audit entry
(300 junk releases once made 300 entries in 0.2 s). Each peer (its IP address: the port changes per
connection) has a token bucket: ``burst`` junk requests at once, then ``per_second``. A peer over its budget is
answered ``resource_exhausted`` before any work — authenticated requests from it included, until the bucket
refills. The counts are for operators (``JunkMeter.counts``), never for the log.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from datetime import datetime


class JunkMeter:
    def __init__(
        self, *, burst: int, per_second: float, clock: Callable[[], datetime], max_peers: int = 65536
    ) -> None:
        self.burst = float(burst)
        self.per_second = per_second
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # peer -> (tokens, at)
        self._max_peers = max_peers
        self._lock = threading.Lock()

    def limited(self, peer: str) -> bool:
        """Whether ``peer`` has spent its junk budget (a cheap check made before any work)."""
        with self._lock:
            return self._tokens(_host(peer)) < 1.0

    def charge(self, peer: str) -> None:
        """Count one junk request against ``peer``."""
        host = _host(peer)
        with self._lock:
            self.counts[host] += 1
            tokens = self._tokens(host)
            self._buckets[host] = (max(tokens - 1.0, 0.0), self.clock().timestamp())
            self._buckets.move_to_end(host)
            while len(self._buckets) > self._max_peers:
                self._buckets.popitem(last=False)

    def _tokens(self, host: str) -> float:
        state = self._buckets.get(host)
        if state is None:
            return self.burst
        tokens, at = state
        elapsed = max(self.clock().timestamp() - at, 0.0)
        return min(self.burst, tokens + elapsed * self.per_second)


def _host(peer: str) -> str:
    """``ipv4:127.0.0.1:5555`` -> ``ipv4:127.0.0.1``; ``ipv6:[::1]:5555`` -> ``ipv6:[::1]``."""
    head, sep, tail = peer.rpartition(":")
    return head if sep and tail.isdigit() else peer
