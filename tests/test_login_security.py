"""The staff login under attack: parallel guesses against the real uvicorn app on SQLite and
PostgreSQL, the login rate buckets, no name enumeration, the security log and the failed-login
metric. Bounds, alerts and bidi isolation of the pages are in test_web_bounds.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from tests.factories import Clock
from triage.desk import logins, users
from triage.desk.actions import Desk, DeskConfig
from triage.logs import JsonFormatter
from triage.metrics import Metrics
from triage.sla import load_policy
from triage.storage.engine import make_engine, make_read_sessionmaker, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.storage.models import LoginThrottle, User
from triage.web.app import LOGIN_CSRF_COOKIE, SESSION_COOKIE, WebDeps, create_web_app
from triage.web.ops import serve
from triage.web.throttle import (
    LoginBuckets,
    LoginLimits,
    LoginThrottleMiddleware,
    Rate,
)

NOW = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)
PASSWORD = "correct horse battery"
GENEROUS = LoginLimits(per_client=Rate(1000, 1000), overall=Rate(1000, 1000),
                       pending=1000)


@dataclass
class Site:
    sessions: sessionmaker[Session]
    metrics: Metrics
    deps: WebDeps


def _site(url: str, tmp_path: Path, buckets: LoginBuckets) -> Iterator[Site]:
    engine = make_engine(url)
    upgrade(engine)
    sessions, reads = make_sessionmaker(engine), make_read_sessionmaker(engine)
    policy, clock = load_policy(), Clock(NOW)  # a clock that stands still: no timing in tests
    with sessions.begin() as s:
        users.add_user(s, "alice", PASSWORD)
    metrics = Metrics(process=False)
    deps = WebDeps(sessions, reads, policy, Desk(sessions, policy, DeskConfig("h@itx.net"), clock),
                   tmp_path / "att", clock, cookie_secure=False, metrics=metrics,
                   login_buckets=buckets)
    yield Site(sessions, metrics, deps)
    engine.dispose()


@pytest.fixture
def site(db_url: str, tmp_path: Path) -> Iterator[Site]:
    yield from _site(db_url, tmp_path, LoginBuckets(GENEROUS))


@asynccontextmanager
async def served(deps: WebDeps) -> AsyncIterator[httpx.AsyncClient]:
    """The web app on a real uvicorn (the daemon's own ``serve``) on 127.0.0.1, a free port."""
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(create_web_app(deps), "127.0.0.1", 0, stop, bound=bound))
    port = await asyncio.wait_for(bound, 10)
    try:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60,
                                     limits=limits) as c:
            yield c
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _form(c: httpx.AsyncClient) -> tuple[str, str]:
    page = await c.get("/login")
    m = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert m and LOGIN_CSRF_COOKIE in page.cookies
    return m.group(1), page.cookies[LOGIN_CSRF_COOKIE]


async def _login(c: httpx.AsyncClient, token: str, cookie: str, name: str,
                 password: str) -> httpx.Response:
    return await c.post("/login", data={"name": name, "password": password,
                                        "csrf_token": token},
                        headers={"Cookie": f"{LOGIN_CSRF_COOKIE}={cookie}"})


async def test_fifty_parallel_guesses_get_five_checks(site: Site) -> None:
    async with served(site.deps) as c:
        token, cookie = await _form(c)
        answers = await asyncio.gather(*(_login(c, token, cookie, "alice", f"guess {i}")
                                         for i in range(50)))
        codes = Counter(r.status_code for r in answers)
        assert codes == {401: logins.FREE_ATTEMPTS, 429: 50 - logins.FREE_ATTEMPTS}, codes
        assert all(r.headers["retry-after"] == "2" for r in answers if r.status_code == 429)
        # Every checked attempt was counted, none lost to a parallel write.
        with site.sessions() as s:
            assert s.scalar(select(LoginThrottle.failures).where(
                LoginThrottle.name == "alice", LoginThrottle.address != logins.ANY)) == 5
        # The right password from the same address waits as well ...
        r = await _login(c, token, cookie, "alice", PASSWORD)
        assert r.status_code == 429
        assert site.metrics.login_failures.labels("delayed")._value.get() == 46
        assert site.metrics.login_failures.labels("credentials")._value.get() == 5
    # ... while alice at her own desk, another address, logs in (the app over ASGI directly,
    # as the address is the one thing a loopback server cannot vary).
    desk = TestClient(create_web_app(site.deps), base_url="http://testserver",
                      follow_redirects=False, client=("192.0.2.10", 40000))
    page = desk.get("/login")
    m = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert m
    r = desk.post("/login", data={"name": "alice", "password": PASSWORD,
                                  "csrf_token": m.group(1)})
    assert r.status_code == 303 and SESSION_COOKIE in r.cookies
    desk.close()


async def test_parallel_guesses_with_the_right_one_among_them(site: Site) -> None:
    """The right password logs in only if it is among the checked attempts; either way no
    more than the free attempts plus the ones after a success are checked."""
    async with served(site.deps) as c:
        token, cookie = await _form(c)
        guesses = [f"guess {i}" for i in range(49)]
        guesses.insert(30, PASSWORD)
        answers = await asyncio.gather(*(_login(c, token, cookie, "alice", g)
                                         for g in guesses))
        codes = Counter(r.status_code for r in answers)
        # A success clears the count, so at most twice the free attempts are checked.
        assert codes[401] + codes[303] <= 2 * logins.FREE_ATTEMPTS, codes
        assert codes[429] >= 50 - 2 * logins.FREE_ATTEMPTS
        assert codes[303] <= 1


def _client(deps: WebDeps, address: str) -> TestClient:
    return TestClient(create_web_app(deps), base_url="http://testserver",
                      follow_redirects=False, client=(address, 40000))


def _post_login(client: TestClient, name: str, password: str) -> tuple[int, str, str]:
    page = client.get("/login")
    m = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert m
    r = client.post("/login", data={"name": name, "password": password,
                                    "csrf_token": m.group(1)})
    alert = re.search(r'role="alert">([^<]*)<', r.text)
    return r.status_code, alert.group(1) if alert else "", r.headers.get("retry-after", "")


def test_login_buckets_answer_429_with_retry_after(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    limits = LoginLimits(per_client=Rate(burst=3, per_second=0.5),
                         overall=Rate(burst=5, per_second=1))
    sites = _site(f"sqlite:///{tmp_path / 'b.db'}", tmp_path, LoginBuckets(limits, lambda: now[0]))
    site = next(sites)
    one = _client(site.deps, "198.51.100.1")
    for _ in range(3):
        assert _post_login(one, "alice", "wrong")[0] == 401
    with caplog.at_level(logging.INFO, logger="triage.security"):
        status, alert, retry = _post_login(one, "alice", PASSWORD)
        assert (status, retry) == (429, "2") and "Too many logins" in alert
        assert _post_login(one, "alice", PASSWORD)[0] == 429
    # One log line for a burst of refusals (a flood must not become a flood of lines).
    throttled = [r for r in caplog.records if r.msg == "login_throttled"]
    assert len(throttled) == 1 and throttled[0].client == "198.51.100.1"
    two = _client(site.deps, "198.51.100.2")  # another address: its own bucket ...
    assert _post_login(two, "alice", "wrong")[0] == 401
    assert _post_login(two, "alice", "wrong")[0] == 401
    status, _, retry = _post_login(two, "alice", "wrong")  # ... but the overall one is empty
    assert (status, retry) == (429, "1")
    now[0] += 2  # refilled: one token for each bucket
    assert _post_login(one, "alice", PASSWORD)[0] == 303
    assert site.metrics.login_failures.labels("throttled")._value.get() == 3
    one.close()
    two.close()
    sites.close()


async def test_attempts_beyond_pending_are_refused_at_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """At most ``pending`` attempts are past the throttle (database, argon2 queue, check);
    one more is answered 429 by the throttle itself, not queued behind them."""
    release, inside = asyncio.Event(), []

    async def login_app(scope: Any, receive: Any, send: Any) -> None:
        inside.append(scope["client"][0])
        await release.wait()
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    throttle = LoginThrottleMiddleware(
        login_app, LoginBuckets(LoginLimits(per_client=Rate(100, 1), overall=Rate(100, 1),
                                            pending=2), lambda: 0.0))

    async def attempt(address: str) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: Any) -> None:
            sent.append(message)

        async def receive() -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        await throttle({"type": "http", "method": "POST", "path": "/login",
                        "client": (address, 1)}, receive, send)
        return sent

    first = [asyncio.create_task(attempt(f"198.51.100.{i}")) for i in (1, 2)]
    for _ in range(100):  # let both reach the app (a few loop turns)
        await asyncio.sleep(0)
    assert len(inside) == 2
    with caplog.at_level(logging.INFO, logger="triage.security"):
        third = asyncio.create_task(attempt("198.51.100.3"))
        for _ in range(100):
            await asyncio.sleep(0)
        assert third.done()  # answered while the two still wait
    start = third.result()[0]
    assert start["status"] == 429 and (b"retry-after", b"1") in start["headers"]
    assert inside == ["198.51.100.1", "198.51.100.2"]  # the app never saw the third
    assert [r.bucket for r in caplog.records if r.msg == "login_throttled"] == ["pending"]
    release.set()
    assert [(await f)[0]["status"] for f in first] == [401, 401]
    assert throttle.pending == 0
    assert (await attempt("198.51.100.3"))[0]["status"] == 401  # room again


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own nice value is Linux's")
@pytest.mark.parametrize("nice", [10, 0])
def test_passwords_are_checked_on_a_nicer_thread(tmp_path: Path, nice: int) -> None:
    """The login's argon2 thread runs ``argon2_nice`` steps nicer than the pages, and so do
    the threads it starts (argon2's lanes): under a flood the checks get the CPU the pages
    leave, not the reverse."""
    limits = LoginLimits(argon2_nice=nice)
    sites = _site(f"sqlite:///{tmp_path / 'n.db'}", tmp_path, LoginBuckets(limits))
    site = next(sites)
    client = _client(site.deps, "198.51.100.1")
    assert _post_login(client, "alice", "wrong")[0] == 401  # checked: the thread exists
    assert _post_login(client, "alice", PASSWORD)[0] == 303
    argon2 = cast(ThreadPoolExecutor, client.app.state.argon2)  # type: ignore[attr-defined]

    def with_a_lane() -> tuple[int, int]:
        lane: list[int] = []
        t = threading.Thread(target=lambda: lane.append(_niceness()))
        t.start()
        t.join()
        return _niceness(), lane[0]

    here = _niceness()
    expected = min(19, here + nice)
    assert argon2.submit(with_a_lane).result() == (expected, expected)
    assert _niceness() == here  # the caller's own priority is untouched
    client.close()
    sites.close()


def test_buckets_forget_the_least_recent_address() -> None:
    now = [0.0]
    b = LoginBuckets(LoginLimits(per_client=Rate(1, 0.001), overall=Rate(100, 100), clients=2),
                     lambda: now[0])
    assert b.take("a") == (0.0, "")
    assert b.take("a")[1] == "client"
    b.take("b")
    b.take("c")  # "a" is forgotten: a full bucket again, bounded memory
    assert b.take("a") == (0.0, "")


def test_an_address_that_logged_in_passes_an_empty_overall_bucket() -> None:
    b = LoginBuckets(LoginLimits(per_client=Rate(5, 0.001), overall=Rate(2, 0.001)),
                     lambda: 0.0)
    b.known_good("staff")
    assert b.take("x1") == (0.0, "") and b.take("x2") == (0.0, "")
    assert b.take("x3")[1] == "overall"  # the flood emptied it ...
    assert b.take("staff") == (0.0, "")  # ... the colleague's desk still gets in


def test_unknown_and_real_names_answer_the_same(site: Site) -> None:
    client = _client(site.deps, "198.51.100.3")
    for _ in range(logins.FREE_ATTEMPTS):
        assert _post_login(client, "alice", "wrong") == _post_login(client, "nobody", "wrong")
    real, unknown = _post_login(client, "alice", "x"), _post_login(client, "nobody", "x")
    assert real == unknown and real[0] == 429 and "wait 2 s" in real[1]
    with site.sessions() as s:  # the unknown name has its count like a real one
        rows = {(r.name, r.address) for r in s.scalars(select(LoginThrottle))}
    assert ("nobody", "198.51.100.3") in rows and ("alice", "198.51.100.3") in rows
    client.close()


def test_failed_logins_are_security_log_lines_with_name_and_address(
        site: Site, caplog: pytest.LogCaptureFixture) -> None:
    client = _client(site.deps, "198.51.100.4")
    with caplog.at_level(logging.INFO, logger="triage.security"):
        _post_login(client, " Alice ", "wrong")
        for _ in range(logins.FREE_ATTEMPTS):
            _post_login(client, "alice", "wrong")
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records
             if r.name == "triage.security"]
    events = [(x["event"], x.get("user"), x.get("client")) for x in lines]
    assert events[0] == ("login_failed", "alice", "198.51.100.4")
    assert ("login_delay_started", "alice", "198.51.100.4") in events
    assert events[-1] == ("login_delayed", "alice", "198.51.100.4")
    assert all(PASSWORD not in json.dumps(x) and "wrong" not in json.dumps(x) for x in lines)
    body, _ = site.metrics.exposition()
    assert b'triage_web_login_failures_total{reason="credentials"} 5.0' in body
    client.close()


def test_api_token_use_is_recorded_and_a_revoked_token_refused(
        site: Site, caplog: pytest.LogCaptureFixture) -> None:
    with site.sessions.begin() as s:
        alice = s.scalar(select(User).where(User.name == "alice"))
        assert alice is not None
        token = users.issue_api_token(s, alice)
    client = _client(site.deps, "198.51.100.5")
    auth = {"Authorization": f"Bearer {token}"}
    with caplog.at_level(logging.INFO, logger="triage.security"):
        assert client.get("/api/v1/me", headers=auth).status_code == 200
        assert client.get("/api/v1/me", headers=auth).status_code == 200  # same minute
        with site.sessions.begin() as s:
            alice = s.scalar(select(User).where(User.name == "alice"))
            assert alice is not None and alice.api_token_used_at == NOW
            users.revoke_api_token(s, alice)
        assert client.get("/api/v1/me", headers=auth).status_code == 401
    events = [r.msg for r in caplog.records if r.name == "triage.security"]
    assert events == ["api_token_used", "api_token_refused"]
    client.close()
