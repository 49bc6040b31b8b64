"""The ops endpoints over real HTTP: uvicorn on 127.0.0.1 via ``serve()``, httpx as client."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from triage.metrics import Metrics
from triage.storage.engine import make_engine, make_read_sessionmaker, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.storage.models import Outbox
from triage.web.ops import create_ops_app, describe_failure, serve
from triage.workorders import Outcome

Check = Callable[[], Awaitable[None]]


@asynccontextmanager
async def running(metrics: Metrics, checks: Mapping[str, Check], **kw: object
                  ) -> AsyncIterator[httpx.AsyncClient]:
    app = create_ops_app(metrics, checks, **kw)  # type: ignore[arg-type]
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(app, "127.0.0.1", 0, stop, bound=bound))
    port = await bound
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            yield c
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    # Stopped: the port no longer answers.
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(timeout=2) as c:
            await c.get(f"http://127.0.0.1:{port}/healthz")


async def ok() -> None:
    return None


async def fails() -> None:
    raise ConnectionRefusedError(
        "cannot reach postgresql+psycopg://triage:s3cret-pw@db.internal:5432/triage " + "x" * 400)


async def hangs() -> None:
    await asyncio.Event().wait()


async def test_healthz_and_ready():
    async with running(Metrics(), {"db": ok, "mailbox": ok}) as c:
        r = await c.get("/healthz")
        assert (r.status_code, r.json()) == (200, {"status": "ok"})
        r = await c.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {"status": "ready", "checks": {"db": "ok", "mailbox": "ok"}}


async def test_readyz_reports_failure_and_timeout_without_secrets():
    async with running(Metrics(), {"db": fails, "smtp": hangs, "disk": ok}, timeout=0.3) as c:
        r = await c.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "unready"
        assert body["checks"]["disk"] == "ok"
        assert body["checks"]["smtp"] == "timeout"
        db = body["checks"]["db"]
        assert db.startswith("error: ConnectionRefusedError: cannot reach postgresql+psycopg://***@")
        assert "s3cret" not in r.text
        assert len(db) <= len("error: ConnectionRefusedError: ") + 200
        # The hung check was abandoned, not left running: the probe answers again.
        r = await c.get("/healthz")
        assert r.status_code == 200


def test_describe_failure_scrubs_every_url_credential():
    msg = describe_failure(ValueError("a imaps://u:p@h/INBOX b smtp://x@y c"))
    assert msg == "error: ValueError: a imaps://***@h/INBOX b smtp://***@y c"


async def test_metrics_exposition_after_observations():
    m = Metrics()
    m.observe_outcomes([Outcome("1", "work_order", "ITX-000001"),
                        Outcome("2", "non_request", reason="spam"),
                        Outcome("3", "quarantined", reason="From: eve@example.com")])
    m.observe_work_order("website_down", "urgent", 0.91, False)
    m.observe_send(False)
    m.observe_poll("support", 0.4, True)
    async with running(m, {}) as c:
        r = await c.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=")
        text = r.text
        assert 'triage_messages_total{kind="",outcome="work_order"} 1.0' in text
        assert 'triage_messages_total{kind="spam",outcome="non_request"} 1.0' in text
        assert 'triage_messages_total{kind="",outcome="quarantined"} 1.0' in text
        assert ('triage_work_orders_opened_total{priority="urgent",request_type="website_down"}'
                ' 1.0') in text
        assert "triage_ack_send_failures_total 1.0" in text
        assert 'triage_mailbox_poll_seconds_count{mailbox="support"} 1.0' in text
        assert "process_resident_memory_bytes" in text
        assert "@" not in text


async def test_metrics_bearer_token():
    async with running(Metrics(), {}, metrics_token="tok-123") as c:
        assert (await c.get("/metrics")).status_code == 401
        r = await c.get("/metrics", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert "triage_" not in r.text
        r = await c.get("/metrics", headers={"Authorization": "Bearer tok-123x"})
        assert r.status_code == 401
        r = await c.get("/metrics", headers={"Authorization": "Basic dG9rLTEyMw=="})
        assert r.status_code == 401
        r = await c.get("/metrics", headers={"Authorization": "Bearer tok-123"})
        assert r.status_code == 200
        assert "triage_messages_total" in r.text
        # Health probes stay open: the supervisor has no token.
        assert (await c.get("/healthz")).status_code == 200


async def test_on_scrape_refreshes_outbox_gauges_from_sqlite(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'triage.db'}")
    upgrade(engine)
    created = datetime.now(UTC) - timedelta(hours=1)
    with make_sessionmaker(engine).begin() as s:
        s.add(Outbox(kind="ack", to_addr="bob@example.com", message_id="<a@itx>",
                     template="ack", status="pending", created_at=created))
    m = Metrics()
    reads = make_read_sessionmaker(engine)
    async with running(m, {}, on_scrape=lambda: m.refresh_from_db(reads)) as c:
        text = (await c.get("/metrics")).text
    engine.dispose()
    assert 'triage_outbox_depth{status="pending"} 1.0' in text
    age = next(float(line.split()[1]) for line in text.splitlines()
               if line.startswith("triage_outbox_oldest_pending_age_seconds "))
    assert age >= 3600


async def test_on_scrape_failure_serves_last_values():
    m = Metrics()

    def broken() -> None:
        raise RuntimeError("database is locked")

    async with running(m, {}, on_scrape=broken) as c:
        r = await c.get("/metrics")
    assert r.status_code == 200
    assert "triage_outbox_refresh_errors_total 1.0" in r.text


async def test_serve_on_a_taken_port_raises():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        with pytest.raises(OSError):
            await serve(create_ops_app(Metrics(), {}), "127.0.0.1", s.getsockname()[1],
                        asyncio.Event())
    finally:
        s.close()


async def test_readyz_runs_checks_concurrently():
    """``first`` can finish only if ``second`` runs while it waits: run one after the other,
    ``first`` would time out."""
    gate = asyncio.Event()

    async def first() -> None:
        await gate.wait()

    async def second() -> None:
        gate.set()

    async with running(Metrics(), {"first": first, "second": second}, timeout=5) as c:
        r = await c.get("/readyz")
    assert r.json() == {"status": "ready", "checks": {"first": "ok", "second": "ok"}}


async def served_once(handler: Callable[[Request], Awaitable[PlainTextResponse]]
                      ) -> httpx.Response:
    """One GET of ``/`` answered by ``handler`` through the daemon's ``serve``."""
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(Starlette(routes=[Route("/", handler)]), "127.0.0.1", 0,
                                     stop, bound=bound))
    port = await bound
    try:
        async with httpx.AsyncClient(timeout=10) as c:
            return await c.get(f"http://127.0.0.1:{port}/")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_serve_parses_http_with_httptools():
    """The daemon's server parses HTTP with httptools (a dependency, named in ``serve``), not
    uvicorn's fallback h11: the request cycle that hands the app its request is httptools'."""

    async def parser(request: Request) -> PlainTextResponse:
        return PlainTextResponse(type(request.receive.__self__).__module__)  # type: ignore[attr-defined]

    r = await served_once(parser)
    assert (r.status_code, r.text) == (200, "uvicorn.protocols.http.httptools_impl")


async def test_serve_sends_without_nagle_delay():
    """Each accepted connection has TCP_NODELAY: a response is written in pieces (headers,
    then body), and with Nagle's algorithm on, the body waited for the client's delayed ACK."""

    async def nodelay(request: Request) -> PlainTextResponse:
        transport = request.receive.__self__.transport  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        return PlainTextResponse(str(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))

    r = await served_once(nodelay)
    assert (r.status_code, r.text) == (200, "1")
