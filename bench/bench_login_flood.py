"""The staff app under a login flood: queue latency and mail storing, with and without it.

    python bench/bench_login_flood.py [--db sqlite postgresql] [--requests 1000]
                                      [--concurrency 20] [--flood 60] [--mails 50]
                                      [--work-orders 2000] [--pin]

For each database: a fresh one seeded with work orders (``bench_web.seed``), and the real app
(``create_web_app`` with the ops routes, as the daemon wires them) under uvicorn in a
subprocess on 127.0.0.1, a fresh one per phase (buckets and delays start full). Then four
bounded phases (each stops at 60 s whatever happens):

- ``quiet``: a signed-in staff member's queue, ``--requests`` GETs ``--concurrency`` at a
  time, while this process stores ``--mails`` incoming mails through ``WorkOrderStore`` (one
  transaction each, as the ingest worker does), and ``/readyz`` is asked twice a second;
- ``control: /healthz``: the same, beside ``--flood`` concurrent loops of ``GET /healthz``:
  generic HTTP load of the flood's shape, to tell what is login-specific;
- ``flood, one address``: the same, beside ``--flood`` concurrent loops of wrong logins from
  127.0.0.1 (a real name and unknown ones);
- ``flood, 60 addresses``: the same, each login loop from its own loopback address
  (127.0.1.N), so the per-address buckets do not help and only the overall one does.

The flood runs in a process of its own, so its client's CPU does not delay the queue
client's event loop (in one process it did: the load generator spends more CPU per request
than the server). A refused login keeps its form token (a throttled answer does not change
the cookie), as an attacker would; the login form is fetched again only when an answer
brings a new one. ``--pin`` puts the server on CPU 0 and this process and the flood on the
others (``os.sched_setaffinity``); it does not keep other users of the machine off CPU 0.

Reported: queue median / p99 / max, answers other than 200, the time to store the mails,
the flood's answers by status and its rate, /readyz answers by status, and the server's CPU
seconds in the phase (``/proc``). Then, per database, a second table: the server's CPU per
request for a refused login, ``/healthz``, the login form and the queue, asked one at a
time (``--cost-requests`` each), the figures a loaded machine sways least.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _servers import machine, web_server
from bench_web import PASSWORD, STAFF, database, seed

from classifiers.types import Decision
from triage.messages import RawMessage
from triage.parse import parse
from triage.sla import load_policy
from triage.storage.engine import make_engine, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.web.throttle import LoginLimits
from triage.workorders import Ingest, StoreConfig, WorkOrderStore

PHASE_LIMIT = 60.0  # seconds, per phase, whatever happens


# ---- the server -----------------------------------------------------------------------------
def serve(url: str, port: int) -> None:
    """The subprocess: the staff app and the ops routes as the daemon wires them."""
    import uvicorn
    from sqlalchemy import text

    from triage.desk.actions import Desk, DeskConfig
    from triage.logs import JsonFormatter
    from triage.metrics import Metrics
    from triage.storage.engine import make_read_sessionmaker
    from triage.web.app import WebDeps, create_web_app
    from triage.web.ops import create_ops_app

    engine = make_engine(url)
    sessions, reads = make_sessionmaker(engine), make_read_sessionmaker(engine)
    policy = load_policy()

    def now() -> datetime:
        return datetime.now(UTC)

    async def database_check() -> None:
        def ping() -> None:
            with reads() as s:
                s.execute(text("SELECT 1"))
        await asyncio.to_thread(ping)

    # The security log as the daemon writes it (JSON lines), to a file instead of stdout.
    handler = logging.FileHandler(Path(tempfile.gettempdir()) / "bench-login-flood.log")
    handler.setFormatter(JsonFormatter())
    logging.getLogger("triage").addHandler(handler)
    logging.getLogger("triage").setLevel(logging.INFO)
    logging.getLogger("triage").propagate = False
    metrics = Metrics()
    ops = create_ops_app(metrics, {"database": database_check})
    app = create_web_app(WebDeps(sessions, reads, policy,
                                 Desk(sessions, policy, DeskConfig("helpdesk@itx.net"), now),
                                 Path(tempfile.gettempdir()), now, cookie_secure=False,
                                 metrics=metrics), extra_routes=list(ops.routes))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextlib.contextmanager
def server(url: str, pin: bool) -> Iterator[tuple[str, int]]:
    with web_server(__file__, url, ready_path="/healthz") as (base, pid):
        if pin:
            os.sched_setaffinity(pid, {0})
        yield base, pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- load -----------------------------------------------------------------------------------
@dataclass
class Phase:
    db: str
    name: str
    queue_ms: list[float] = field(default_factory=list)
    queue_bad: Counter[int] = field(default_factory=Counter)
    store_s: float = 0.0
    logins: Counter[int] = field(default_factory=Counter)
    ready: Counter[int] = field(default_factory=Counter)
    wall_s: float = 0.0
    flood_s: float = 0.0  # how long the flood ran
    server_cpu_s: float = 0.0
    load: float = 0.0  # the 1-minute load average at the phase's end

    def flood_rate(self) -> float:
        return sum(self.logins.values()) / self.flood_s if self.flood_s else 0.0

    def pct(self, p: float) -> float:
        xs = sorted(self.queue_ms) or [float("nan")]
        return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


async def _form(c: httpx.AsyncClient) -> str:
    r = await c.get("/login")
    m = TOKEN.search(r.text)
    assert m, "no CSRF token on the login form"
    return m.group(1)


async def staff_client(base: str) -> httpx.AsyncClient:
    c = httpx.AsyncClient(base_url=base, timeout=PHASE_LIMIT,
                          limits=httpx.Limits(max_connections=100))
    token = await _form(c)
    r = await c.post("/login", data={"name": STAFF[0], "password": PASSWORD,
                                     "csrf_token": token})
    if r.status_code != 303:
        raise RuntimeError(f"staff login failed: {r.status_code}")
    return c


async def queue_load(c: httpx.AsyncClient, phase: Phase, requests: int,
                     concurrency: int) -> None:
    paths = iter(["/queue", "/queue?sla=breached", "/queue?review=yes",
                  "/queue?type=email_problem"] * (requests // 4 + 1))
    left = [requests]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            t = time.perf_counter()
            try:
                r = await c.get(next(paths))
                status = r.status_code
            except httpx.TransportError:  # counted as "not 200" (0), not the end of the run
                status = 0
            phase.queue_ms.append((time.perf_counter() - t) * 1000)
            if status != 200:
                phase.queue_bad[status] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def login_flood(base: str, logins: Counter[int], n: int, spread: bool,
                      stop: asyncio.Event) -> None:
    async def loop(i: int) -> None:
        transport = httpx.AsyncHTTPTransport(
            local_address=f"127.0.1.{i + 1}" if spread else "127.0.0.1")
        async with httpx.AsyncClient(base_url=base, timeout=PHASE_LIMIT,
                                     transport=transport) as c:
            token = await _form(c)
            rng = random.Random(i)
            while not stop.is_set():
                name = STAFF[1] if rng.random() < 0.5 else f"nobody{rng.randrange(10**6)}"
                r = await c.post("/login", data={"name": name, "password": "wrong guess",
                                                 "csrf_token": token})
                logins[r.status_code] += 1
                # The app's answers bring a new token with a new cookie; the throttle's 429
                # changes neither, so the token in hand stays good.
                m = TOKEN.search(r.text)
                if m:
                    token = m.group(1)
                elif r.status_code != 429:
                    token = await _form(c)

    await asyncio.gather(*(loop(i) for i in range(n)))


async def healthz_flood(base: str, answers: Counter[int], n: int, stop: asyncio.Event) -> None:
    async def loop() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=PHASE_LIMIT) as c:
            while not stop.is_set():
                answers[(await c.get("/healthz")).status_code] += 1

    await asyncio.gather(*(loop() for _ in range(n)))


def flood_process(base: str, kind: str, n: int, pin: bool, stop: Any, started: Any,
                  out: Any) -> None:
    """The flood in a process of its own until ``stop`` is set; its answers go to ``out``."""
    if pin and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))

    async def run() -> None:
        answers: Counter[int] = Counter()
        done = asyncio.Event()
        flood = asyncio.create_task(
            healthz_flood(base, answers, n, done) if kind == "healthz"
            else login_flood(base, answers, n, kind == "spread", done))
        began = time.perf_counter()
        while not stop.is_set() and not flood.done():
            if answers and not started.is_set():  # answering: the measured load may start
                began = time.perf_counter()
                answers.clear()
                started.set()
            await asyncio.sleep(0.1)
        done.set()
        failed = (await asyncio.gather(flood, return_exceptions=True))[0]
        if failed is not None:
            print(f"flood ({kind}) failed: {failed!r}", file=sys.stderr, flush=True)
        out.put((dict(answers), time.perf_counter() - began))

    asyncio.run(run())


async def readiness(base: str, phase: Phase, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        while not stop.is_set():
            try:
                r = await c.get("/readyz")
                phase.ready[r.status_code] += 1
            except httpx.TimeoutException:
                phase.ready[0] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


def store_mails(url: str, count: int, offset: int, folder: Path) -> float:
    """Seconds to store ``count`` new mails, one transaction each (the ingest worker's way)."""
    engine = make_engine(url)
    store = WorkOrderStore(make_sessionmaker(engine), load_policy(),
                           StoreConfig("helpdesk@itx.net", 50, folder, 0.6),
                           lambda: datetime.now(UTC))
    started = time.perf_counter()
    for i in range(offset, offset + count):
        data = (f"From: Client {i} <c{i}@flood-bench.example>\r\nTo: helpdesk@itx.net\r\n"
                f"Subject: printer {i} jams\r\nMessage-ID: <flood{i}@bench>\r\n\r\n"
                "The printer jams again.\r\n").encode()
        raw = RawMessage("bench", 1, str(i), len(data), data, internal_date=datetime.now(UTC))
        d = Decision(label="printer_setup", confidence=0.9, priority="normal",
                     needs_review=False, model_version="bench")
        store.store_batch([Ingest(raw=raw, parsed=parse(data), decision=d)])
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds


async def run_phase(db: str, name: str, base: str, pid: int, url: str,
                    args: argparse.Namespace, flood: str, offset: int, folder: Path) -> Phase:
    phase = Phase(db, name)
    stop = asyncio.Event()
    staff = await staff_client(base)
    mp = multiprocessing.get_context("spawn")
    flood_stop, flood_started, flood_out = mp.Event(), mp.Event(), mp.Queue()
    flooder = None
    if flood:
        flooder = mp.Process(target=flood_process, args=(
            base, flood, args.flood, args.pin, flood_stop, flood_started, flood_out))
        flooder.start()
        if not await asyncio.to_thread(flood_started.wait, PHASE_LIMIT):
            print(f"[{db}] {name}: the flood did not start in {PHASE_LIMIT:.0f} s", flush=True)
    started = time.perf_counter()
    cpu_before = cpu_seconds(pid)
    side = asyncio.create_task(readiness(base, phase, stop))
    stored: list[float] = []
    storer = threading.Thread(target=lambda: stored.append(
        store_mails(url, args.mails, offset, folder)))
    try:
        async with asyncio.timeout(PHASE_LIMIT):
            storer.start()
            await queue_load(staff, phase, args.requests, args.concurrency)
            await asyncio.to_thread(storer.join, PHASE_LIMIT)
    except TimeoutError:
        print(f"[{db}] {name}: stopped at the {PHASE_LIMIT:.0f} s limit", flush=True)
    finally:
        phase.wall_s = time.perf_counter() - started
        phase.server_cpu_s = cpu_seconds(pid) - cpu_before
        stop.set()
        flood_stop.set()
        await asyncio.gather(side, return_exceptions=True)
        await staff.aclose()
        if flooder is not None:
            answers, phase.flood_s = await asyncio.to_thread(flood_out.get, True, 30)
            phase.logins.update(answers)
            await asyncio.to_thread(flooder.join, 30)
    phase.store_s = stored[0] if stored else float("nan")
    return phase


PHASES = (("quiet", ""), ("control: /healthz", "healthz"), ("flood, one address", "one"),
          ("flood, 60 addresses", "spread"))


@dataclass
class Cost:
    db: str
    what: str
    cpu_ms: float  # server CPU per request
    answers: Counter[int]


def costs(db: str, base: str, pid: int, n: int) -> list[Cost]:
    """Server CPU per request by kind, one keep-alive client at a time (no concurrency, so
    the machine's load sways it little): what each kind of flood costs the server."""
    staff, other = httpx.Client(base_url=base), httpx.Client(base_url=base)
    token = TOKEN.search(staff.get("/login").text)
    assert token
    r = staff.post("/login", data={"name": STAFF[0], "password": PASSWORD,
                                   "csrf_token": token.group(1)})
    assert r.status_code == 303, r.status_code
    form = TOKEN.search(other.get("/login").text)
    assert form
    wrong = {"name": "nobody", "password": "wrong guess", "csrf_token": form.group(1)}
    for _ in range(int(LoginLimits().per_client.burst) + 2):  # empty its address's bucket
        if other.post("/login", data=wrong).status_code == 429:
            break
    kinds = (("POST /login refused by the throttle", lambda: other.post("/login", data=wrong)),
             ("GET /healthz", lambda: other.get("/healthz")),
             ("GET /login (the form)", lambda: other.get("/login")),
             ("GET /queue (signed in)", lambda: staff.get("/queue")))
    rows = []
    for what, call in kinds:
        count = n if "queue" not in what else max(1, n // 10)
        answers: Counter[int] = Counter()
        before = cpu_seconds(pid)
        for _ in range(count):
            answers[call().status_code] += 1
        rows.append(Cost(db, what, (cpu_seconds(pid) - before) / count * 1000, answers))
    staff.close()
    other.close()
    return rows


def run_db(db: str, args: argparse.Namespace) -> tuple[list[Phase], list[Cost]]:
    phases: list[Phase] = []
    folder = Path(tempfile.mkdtemp(prefix="triage-flood-att-"))
    with database(db, None) as (url, _):
        engine = make_engine(url)
        upgrade(engine)
        s = seed(engine, load_policy(), args.work_orders, datetime.now(UTC), random.Random(3))
        engine.dispose()
        print(f"[{db}] seeded {len(s.numbers)} work orders", flush=True)
        for i, (name, flood) in enumerate(PHASES):
            with server(url, args.pin) as (base, pid):  # fresh: buckets and delays start full
                p = asyncio.run(run_phase(db, name, base, pid, url, args, flood,
                                          10_000 * (i + 1), folder))
            p.load = os.getloadavg()[0]
            phases.append(p)
            print(f"[{db}] {name:20s} queue median {statistics.median(p.queue_ms):6.1f} "
                  f"p99 {p.pct(99):7.1f} max {max(p.queue_ms):7.1f} ms "
                  f"({len(p.queue_ms)} requests in {p.wall_s:.1f} s, not 200: "
                  f"{dict(p.queue_bad)}); {args.mails} mails stored in {p.store_s:.2f} s; "
                  f"flood {dict(p.logins)} ({p.flood_rate():.0f}/s); readyz {dict(p.ready)}; "
                  f"server CPU {p.server_cpu_s:.1f} s; load {p.load:.1f}", flush=True)
        with server(url, args.pin) as (base, pid):
            cost = costs(db, base, pid, args.cost_requests)
        for c in cost:
            print(f"[{db}] {c.what:36s} server CPU {c.cpu_ms:6.2f} ms a request "
                  f"{dict(c.answers)}", flush=True)
    return phases, cost


def cost_table(rows: list[Cost]) -> str:
    lines = ["| database | request | server CPU ms a request | answers |", "|---|---|---:|---|"]
    lines += [f"| {c.db} | {c.what} | {c.cpu_ms:.2f} | "
              f"{', '.join(f'{k}: {v:,}' for k, v in sorted(c.answers.items()))} |"
              for c in rows]
    return "\n".join(lines)


def table(phases: list[Phase], args: argparse.Namespace) -> str:
    lines = ["| database | phase | queue median ms | p99 ms | max ms | queue not 200 "
             f"| {args.mails} mails stored s | flood answers | flood req/s | /readyz answers "
             "| server CPU s | load |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|"]
    for p in phases:
        def fmt(c: Counter[int]) -> str:
            return ", ".join(f"{k}: {v:,}" for k, v in sorted(c.items())) or "—"
        rate = f"{p.flood_rate():.0f}" if p.flood_s else "—"
        lines.append(f"| {p.db} | {p.name} | {statistics.median(p.queue_ms):,.1f} "
                     f"| {p.pct(99):,.1f} | {max(p.queue_ms):,.1f} "
                     f"| {sum(p.queue_bad.values())} | {p.store_s:.2f} | {fmt(p.logins)} "
                     f"| {rate} | {fmt(p.ready)} | {p.server_cpu_s:.1f} | {p.load:.1f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", nargs="+", default=["sqlite"], choices=["sqlite", "postgresql"])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--flood", type=int, default=60)
    ap.add_argument("--mails", type=int, default=50)
    ap.add_argument("--work-orders", type=int, default=2000)
    ap.add_argument("--cost-requests", type=int, default=300,
                    help="sequential requests per kind for the server-CPU-per-request table")
    ap.add_argument("--pin", action="store_true",
                    help="server on CPU 0, load generators on the other CPUs")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    if args.pin and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))
    print(f"{machine()}; load {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
          f"{'; pinned: server CPU 0, load generators the others' if args.pin else ''}",
          flush=True)
    phases: list[Phase] = []
    cost: list[Cost] = []
    for db in args.db:
        p, c = run_db(db, args)
        phases += p
        cost += c
    print()
    print(table(phases, args))
    print()
    print(cost_table(cost))
    return 0


if __name__ == "__main__":
    sys.exit(main())
