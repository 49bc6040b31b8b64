"""Token buckets for ``POST /login``, per client address and overall, in the daemon's memory.

Each login costs an argon2 check (~0.1 s of one core). Without a bound, sixty concurrent
wrong logins take both cores and the thread pool the staff pages share. A bucket refused is
answered at once with 429 and ``Retry-After``, before any database work or argon2.

The buckets live in one process. The daemon serves the web app from its own process, so one
set of buckets sees every login. Run several daemons (several mailbox leases, or replicas
behind a balancer) and each has its own buckets: the allowed rate is then that many times
the configured one. The progressive delay per name and address (``triage.desk.logins``)
is in the database and holds across processes either way; the buckets only cap the CPU one
process spends on login attempts.

Behind a reverse proxy every client has the proxy's address unless uvicorn trusts its
``X-Forwarded-For`` (``forwarded_allow_ips``); the per-address bucket then acts as a second
overall one, which is safe but coarse.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    burst: float  # attempts allowed at once
    per_second: float  # refill


@dataclass(frozen=True)
class LoginLimits:
    # An office behind one address: ten logins at once, then one every five seconds.
    per_client: Rate = Rate(burst=10, per_second=0.2)
    # Every client together: what the daemon spends on argon2 at most, about a third of a core.
    overall: Rate = Rate(burst=20, per_second=3)
    clients: int = 10_000  # addresses remembered; the least recently seen is forgotten first


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens, self.at = tokens, at

    def refill(self, rate: Rate, now: float) -> None:
        self.tokens = min(rate.burst, self.tokens + (now - self.at) * rate.per_second)
        self.at = now

    def wait(self, rate: Rate) -> float:
        """Seconds until one token is there (0: there is one now)."""
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / rate.per_second


class LoginBuckets:
    """``take(address)``: 0 when the attempt may go ahead (a token taken from both buckets),
    else the seconds to wait (nothing taken). Thread-safe."""

    def __init__(self, limits: LoginLimits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or LoginLimits()
        self._clock = clock
        self._lock = threading.Lock()
        self._overall = _Bucket(self.limits.overall.burst, clock())
        self._clients: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, address: str) -> tuple[float, str]:
        """(seconds to wait, which bucket refused: "client" | "overall" | "")."""
        lim = self.limits
        with self._lock:
            now = self._clock()
            client = self._clients.get(address)
            if client is None:
                client = self._clients[address] = _Bucket(lim.per_client.burst, now)
                while len(self._clients) > lim.clients:
                    self._clients.popitem(last=False)
            else:
                self._clients.move_to_end(address)
            client.refill(lim.per_client, now)
            self._overall.refill(lim.overall, now)
            wait = client.wait(lim.per_client)
            if wait:
                return wait, "client"
            wait = self._overall.wait(lim.overall)
            if wait:
                return wait, "overall"
            client.tokens -= 1
            self._overall.tokens -= 1
            return 0.0, ""


__all__ = ["LoginBuckets", "LoginLimits", "Rate"]
