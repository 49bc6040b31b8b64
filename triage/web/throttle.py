"""Token buckets for ``POST /login``, per client address and overall, in the daemon's memory.

Each login costs an argon2 check (~0.2 s of CPU, spread over the hash's four lanes, each
a thread). Without a bound, sixty concurrent wrong logins take both cores and the thread
pool the staff pages share. A refused attempt is answered at once with 429 and
``Retry-After`` by ``LoginThrottleMiddleware``, a plain ASGI layer in front of the app: no
routing, no form parsing, no template, no database, no argon2, so a flood of refused
attempts costs the event loop little. The throttled events are logged
at most once per ``LOG_EVERY`` seconds, with how many were not logged, so a flood does not
become a flood of log lines.

The buckets live in one process. The daemon serves the web app from its own process, so one
set of buckets sees every login. Run several daemons (several mailbox leases, or replicas
behind a balancer) and each has its own buckets: the allowed rate is then that many times
the configured one. The progressive delay per name and address (``triage.desk.logins``)
is in the database and holds across processes either way; the buckets only cap the CPU one
process spends on login attempts.

An address a staff member logged in from (in this process, the last ``clients`` of them)
skips the overall bucket, keeping only its own: a flood spread over many addresses empties
the overall bucket, and without this it would keep the staff out with it.

Behind a reverse proxy every client has the proxy's address unless uvicorn trusts its
``X-Forwarded-For`` (``forwarded_allow_ips``); the per-address bucket then acts as a second
overall one, which is safe but coarse.

The password checks themselves are bounded too: at most ``pending`` attempts are past this
layer at once (counting its database steps, the wait for the one argon2 thread and the
check); one more is answered 429 at once rather than queued, so a burst never builds a queue
of argon2 work or holds more than ``pending`` pooled connections for logins. The checks that
do run take CPU at a lower priority than the pages (``argon2_nice``, see
``triage.web.auth.throttle_logins``): a flood's checks use what the desk leaves idle.

What a refused attempt costs the server (``bench/bench_login_flood.py``'s table of costs,
figures in ``bench/results.md``) is less than a ``GET /healthz``: mostly uvicorn's HTTP
handling. Refusing connections or requests faster than that is a reverse proxy's job.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from triage import security
from triage.desk.logins import DEFAULT_DELAY, Delay
from triage.metrics import Metrics

if TYPE_CHECKING:
    from triage.config import Settings

LOG_EVERY = 10.0  # seconds between two login_throttled log lines
THROTTLED_PAGE = (
    "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Too many logins"
    "</title><link rel=\"stylesheet\" href=\"/static/app.css\"></head><body><main>"
    "<p class=\"flash error\" role=\"alert\">Too many logins at the moment: wait {seconds} s, "
    "then try again.</p><p><a href=\"/login\">Back to the login</a></p></main></body></html>")


@dataclass(frozen=True)
class Rate:
    burst: float  # attempts allowed at once
    per_second: float  # refill


@dataclass(frozen=True)
class LoginLimits:
    # An office behind one address: ten logins at once, then one every five seconds.
    per_client: Rate = Rate(burst=10, per_second=0.2)
    # Every client together: bounds the argon2 checks a second, so the CPU they take.
    overall: Rate = Rate(burst=20, per_second=3)
    clients: int = 10_000  # addresses remembered; the least recently seen is forgotten first
    # Attempts past the buckets at once (database steps, argon2 queue and check): argon2 has
    # one thread, so four is at most ~0.4 s of waiting on an idle core.
    pending: int = 4
    delay: Delay = DEFAULT_DELAY  # the progressive delay per name and address
    # How much nicer than the pages the argon2 thread and its lanes run (Linux; 0: the same
    # priority). The lanes are four threads against one page's: anything less than the
    # lowest priority still gives the checks most of a contended CPU.
    argon2_nice: int = 19

    @classmethod
    def from_settings(cls, settings: Settings) -> LoginLimits:
        """The ``TRIAGE_LOGIN_*`` settings."""
        return cls(
            per_client=Rate(settings.login_client_burst, settings.login_client_rate),
            overall=Rate(settings.login_overall_burst, settings.login_overall_rate),
            clients=settings.login_clients, pending=settings.login_pending,
            delay=Delay(free_attempts=settings.login_free_attempts,
                        name_free_attempts=settings.login_name_free_attempts,
                        first_delay=timedelta(seconds=settings.login_first_delay),
                        max_delay=timedelta(seconds=settings.login_max_delay)),
            argon2_nice=settings.login_argon2_nice)


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
        self._known: OrderedDict[str, None] = OrderedDict()

    def known_good(self, address: str) -> None:
        """A login succeeded from ``address``: from now on only its own bucket applies."""
        with self._lock:
            self._known[address] = None
            self._known.move_to_end(address)
            while len(self._known) > self.limits.clients:
                self._known.popitem(last=False)

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
            known = address in self._known
            wait = 0.0 if known else self._overall.wait(lim.overall)
            if wait:
                return wait, "overall"
            client.tokens -= 1
            if not known:
                self._overall.tokens -= 1
            return 0.0, ""


class LoginThrottleMiddleware:
    """429 for ``POST /login`` when a bucket is empty or ``pending`` attempts are already
    past this layer, before the app sees the request."""

    def __init__(self, app: ASGIApp, buckets: LoginBuckets, metrics: Metrics | None = None,
                 headers: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app, self.buckets, self.metrics = app, buckets, metrics
        self.headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        self._clock = clock
        self._logged_at = -math.inf
        self._unlogged = 0
        self.pending = 0  # attempts past this layer now (all on the event loop: no lock)
        self._answers: dict[int, tuple[list[tuple[bytes, bytes]], bytes]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST"
                or scope["path"] != "/login"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "unknown"
        if self.pending >= self.buckets.limits.pending:
            wait, bucket = 1.0, "pending"
        else:
            wait, bucket = self.buckets.take(address)
        if not wait:
            self.pending += 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.pending -= 1
            return
        if self.metrics is not None:
            self.metrics.observe_login_failure("throttled")
        self._log(address, bucket, wait)
        for message in self._answer(max(1, math.ceil(wait))):
            await send(message)

    def _answer(self, seconds: int) -> list[Message]:
        """The 429's two messages; the page and headers are made once per ``Retry-After``,
        the messages anew (a layer outside may add to their header lists)."""
        made = self._answers.get(seconds)
        if made is None:
            body = THROTTLED_PAGE.format(seconds=seconds).encode()
            made = ([(b"content-type", b"text/html; charset=utf-8"),
                     (b"content-length", str(len(body)).encode()),
                     (b"retry-after", str(seconds).encode()), (b"cache-control", b"no-store"),
                     *self.headers], body)
            if len(self._answers) < 1000:
                self._answers[seconds] = made
        headers, body = made
        return [{"type": "http.response.start", "status": 429, "headers": list(headers)},
                {"type": "http.response.body", "body": body}]

    def _log(self, address: str, bucket: str, wait: float) -> None:
        now = self._clock()
        if now - self._logged_at < LOG_EVERY:
            self._unlogged += 1
            return
        security.event("login_throttled", level=logging.WARNING, client=address,
                       bucket=bucket, retry_after=round(wait, 1), not_logged=self._unlogged)
        self._logged_at, self._unlogged = now, 0


__all__ = ["LOG_EVERY", "LoginBuckets", "LoginLimits", "LoginThrottleMiddleware", "Rate"]
