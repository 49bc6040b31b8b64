"""The staff app under a login flood: queue latency and mail storing, with and without it.

    python bench/bench_login_flood.py [--db sqlite postgresql] [--queue-rate 4]
                                      [--requests 200] [--arrivals poisson|even]
                                      [--flood 60] [--flood-nice 10] [--mails 50]
                                      [--work-orders 2000] [--cost-requests 1000] [--pin]

What it asks: does a login flood change what the desk sees (the queue's latency) and how fast
incoming mail is stored, on a server that is *not* already saturated by the desk? So the
queue load is open-loop, as a desk is: ``--requests`` queue pages (four filters in turn) by a
signed-in staff member at a fixed arrival rate, ``--queue-rate`` a second (Poisson arrivals
by default, the same seeded schedule in every phase; ``--arrivals even`` spaces them evenly),
each sent at its time whether or not earlier ones were answered. Latency counts from the
*scheduled* send time, so a late answer, or a load generator that fell behind, is never
hidden (no coordinated omission); a request still unanswered when the phase stops counts
as infinitely late. Twenty technicians refreshing every five seconds is 4 pages a second;
the run prints the utilisation that means (rate x the server's CPU per page, measured first)
and the server's CPU per second in each phase, so a quiet phase near saturation shows.

For each database: a fresh one seeded with work orders (``bench_web.seed``), then the server:
the real app (``create_web_app`` with the ops routes) served by the daemon's own
``triage.web.ops.serve`` (its uvicorn settings, so its HTTP parser), in a subprocess on
127.0.0.1, a fresh one per phase (buckets and delays start full). First a table of what each
kind of request costs the server (CPU per request, one at a time on a keep-alive
connection), then four phases, each bounded at 60 s whatever happens and each after an
unmeasured warm-up of its fresh server (two rounds of the queue's filters, one mail stored):

- ``quiet``: the queue load, the mail storing, and ``/readyz`` twice a second;
- ``control: /healthz``: the same, beside ``--flood`` concurrent loops of ``GET /healthz``:
  generic HTTP load of the flood's shape, to tell what is login-specific;
- ``flood, one address``: the same, beside ``--flood`` concurrent loops of wrong logins from
  127.0.0.1 (half a real name, half unknown ones);
- ``flood, 60 addresses``: the same, each login loop from its own loopback address
  (127.0.1.N), so the per-address buckets do not help and only the overall one does.

Mail storing: ``--mails`` new mails, evenly spread over the queue's schedule, each parsed and
stored through ``WorkOrderStore`` in a transaction of its own, in a process of its own, as
the daemon's ingest worker does; reported per mail from its scheduled time. That process is
part of the system under test, so ``--pin`` puts it beside the server.

The flood is the attacker's: it runs closed-loop (each loop sends its next attempt when the
last is answered) in a process of its own at ``--flood-nice`` (10), because its client spends
several times the server's CPU per request and an attacker's machine is not the server's:
niced, it takes only CPU that the server and the measuring clients leave idle. Its achieved
rate and its own CPU are reported. A refused login keeps its form token (a throttled answer
does not change the cookie), as an attacker would; the form is fetched again only when an
answer brings a new one.

``--pin`` (needs 2 CPUs): the server and the mail storer on CPU 0, the queue client, the
``/readyz`` poller and the flood on the others; the run prints the CPUs every thread of the
server was allowed at the end of each phase. It cannot keep other users of the machine, or
PostgreSQL's own processes, off CPU 0.

Reported per phase: queue median / p90 / p99 / max from the scheduled time, answers other
than 200 and unanswered requests, the queue client's worst lateness in sending (its own
health: if that grows, the figures are the load generator's); mail store median / max ms;
the flood's answers, rate and client CPU; /readyz answers; the server's CPU seconds and CPU
per second of the phase (``/proc``) and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import math
import multiprocessing
import os
import random
import re
import resource
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _servers import affinity, machine, pin, web_server
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
DRAIN = 10.0  # of which the last seconds are kept for answers: the schedule ends before
WARMUP = 2  # unmeasured rounds of the queue's filters, and one mail stored, before a phase
QUEUE_PATHS = ("/queue", "/queue?sla=breached", "/queue?review=yes", "/queue?type=email_problem")


@dataclass(frozen=True)
class Cpus:
    """Where each part runs (None: wherever the kernel puts it)."""
    server: set[int] | None = None  # the server and the mail storer: the system under test
    load: set[int] | None = None  # the queue client, /readyz poller and the flood

    @classmethod
    def pinned(cls) -> Cpus:
        count = os.cpu_count() or 1
        if count < 2:
            raise SystemExit("--pin needs at least 2 CPUs")
        return cls({0}, set(range(1, count)))


# ---- the server -----------------------------------------------------------------------------
def serve(url: str, port: int, http: Literal["httptools", "h11"] = "httptools") -> None:
    """The subprocess: the staff app and the ops routes as the daemon wires and serves them
    (``http``: the HTTP parser, for ``bench_http_parser.py``)."""
    from sqlalchemy import text

    from triage.config import Settings
    from triage.desk.actions import Desk, DeskConfig
    from triage.logs import JsonFormatter
    from triage.metrics import Metrics
    from triage.storage.engine import make_read_sessionmaker
    from triage.web import ops
    from triage.web.app import WebDeps, create_web_app
    from triage.web.throttle import LoginBuckets

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
    routes = ops.create_ops_app(metrics, {"database": database_check}).routes
    app = create_web_app(WebDeps(sessions, reads, policy,
                                 Desk(sessions, policy, DeskConfig("helpdesk@itx.net"), now),
                                 Path(tempfile.gettempdir()), now, cookie_secure=False,
                                 metrics=metrics,
                                 # the TRIAGE_LOGIN_* settings, as the daemon reads them
                                 login_buckets=LoginBuckets(LoginLimits.from_settings(Settings()))),
                           extra_routes=list(routes))

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        await ops.serve(app, "127.0.0.1", port, stop, http=http)

    asyncio.run(run())


@contextlib.contextmanager
def server(url: str, cpus: Cpus) -> Iterator[tuple[str, int]]:
    with web_server(__file__, url, ready_path="/healthz", cpus=cpus.server) as served:
        yield served


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far (its threads, ended ones included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---- load -----------------------------------------------------------------------------------
@dataclass
class Phase:
    db: str
    name: str
    queue_ms: list[float] = field(default_factory=list)  # from the scheduled send time
    lag_ms: list[float] = field(default_factory=list)  # how late each request was sent
    queue_bad: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # the queue's transport errors
    unanswered: int = 0
    mail_ms: list[float] = field(default_factory=list)
    logins: Counter[int] = field(default_factory=Counter)
    ready: Counter[int] = field(default_factory=Counter)
    wall_s: float = 0.0
    flood_s: float = 0.0  # how long the flood ran
    flood_cpu_s: float = 0.0  # the flood client's own CPU meanwhile
    server_cpu_s: float = 0.0
    server_cpus: set[int] = field(default_factory=set)
    load: float = 0.0  # the 1-minute load average at the phase's end

    def flood_rate(self) -> float:
        return sum(self.logins.values()) / self.flood_s if self.flood_s else 0.0

    def pct(self, p: float) -> float:
        return pct(self.queue_ms + [math.inf] * self.unanswered, p)


def pct(xs: list[float], p: float) -> float:
    """The ``p``-th percentile by the nearest rank; nan for no values."""
    if not xs:
        return math.nan
    ordered = sorted(xs)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def schedule(n: int, rate: float, arrivals: str, seed: int = 15) -> list[float]:
    """``n`` send times in seconds from the start: Poisson arrivals at ``rate`` a second (a
    fixed seed, so every phase gets the same ones), or evenly spaced; cut to end before the
    phase's limit leaves ``DRAIN`` seconds for the answers."""
    rng = random.Random(seed)
    times, t = [], 0.0
    for _ in range(n):
        if t > PHASE_LIMIT - DRAIN:
            break
        times.append(t)
        t += rng.expovariate(rate) if arrivals == "poisson" else 1 / rate
    return times


TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


async def _form(c: httpx.AsyncClient) -> str:
    r = await c.get("/login")
    m = TOKEN.search(r.text)
    assert m, "no CSRF token on the login form"
    return m.group(1)


async def staff_client(base: str) -> httpx.AsyncClient:
    # An idle connection is dropped by the client before uvicorn's keep-alive timeout (5 s)
    # closes it: reusing one that the server is closing at that moment fails the request.
    c = httpx.AsyncClient(base_url=base, timeout=PHASE_LIMIT,
                          limits=httpx.Limits(max_connections=200, keepalive_expiry=2.0))
    token = await _form(c)
    r = await c.post("/login", data={"name": STAFF[0], "password": PASSWORD,
                                     "csrf_token": token})
    if r.status_code != 303:
        raise RuntimeError(f"staff login failed: {r.status_code}")
    return c


async def queue_load(c: httpx.AsyncClient, phase: Phase, times: list[float],
                     started: float) -> None:
    """Each queue GET at ``started + times[i]``, whatever the earlier ones are doing."""

    async def one(path: str, due: float) -> None:
        phase.lag_ms.append((time.perf_counter() - due) * 1000)
        try:
            status = (await c.get(path)).status_code
        except httpx.TransportError as e:  # counted as "not 200" (0), not the end of the run
            status = 0
            phase.errors[type(e).__name__] += 1
        phase.queue_ms.append((time.perf_counter() - due) * 1000)
        if status != 200:
            phase.queue_bad[status] += 1

    tasks = []
    for i, t in enumerate(times):
        due = started + t
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(QUEUE_PATHS[i % len(QUEUE_PATHS)], due)))
    try:
        await asyncio.gather(*tasks)
    finally:  # cancelled at the phase's limit: what is still out counts as unanswered
        for task in tasks:
            task.cancel()
        phase.unanswered = len(times) - len(phase.queue_ms)


async def login_flood(base: str, logins: Counter[int], n: int, spread: bool,
                      stop: asyncio.Event) -> None:
    async def loop(i: int) -> None:
        transport = httpx.AsyncHTTPTransport(
            local_address=f"127.0.1.{i + 1}" if spread else "127.0.0.1")
        async with httpx.AsyncClient(base_url=base, timeout=PHASE_LIMIT,
                                     transport=transport) as c:
            token = ""
            rng = random.Random(i)
            while not stop.is_set():
                name = STAFF[1] if rng.random() < 0.5 else f"nobody{rng.randrange(10**6)}"
                try:
                    token = token or await _form(c)
                    r = await c.post("/login", data={"name": name, "password": "wrong guess",
                                                     "csrf_token": token})
                except httpx.TransportError:  # counted (0); the loop goes on, with a new form
                    logins[0] += 1
                    token = ""
                    await asyncio.sleep(0.05)
                    continue
                logins[r.status_code] += 1
                # The app's answers bring a new token with a new cookie; the throttle's 429
                # changes neither, so the token in hand stays good.
                m = TOKEN.search(r.text)
                token = m.group(1) if m else token if r.status_code == 429 else ""

    await asyncio.gather(*(loop(i) for i in range(n)))


async def healthz_flood(base: str, answers: Counter[int], n: int, stop: asyncio.Event) -> None:
    async def loop() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=PHASE_LIMIT) as c:
            while not stop.is_set():
                try:
                    answers[(await c.get("/healthz")).status_code] += 1
                except httpx.TransportError:  # counted (0); the loop goes on
                    answers[0] += 1
                    await asyncio.sleep(0.05)

    await asyncio.gather(*(loop() for _ in range(n)))


def flood_process(base: str, kind: str, n: int, cpus: set[int] | None, nice: int, stop: Any,
                  started: Any, out: Any) -> None:
    """The flood in a process of its own until ``stop`` is set; its answers, how long it
    ran and its CPU meanwhile go to ``out``."""
    pin(cpus)
    os.nice(nice)

    async def run() -> None:
        answers: Counter[int] = Counter()
        done = asyncio.Event()
        flood = asyncio.create_task(
            healthz_flood(base, answers, n, done) if kind == "healthz"
            else login_flood(base, answers, n, kind == "spread", done))
        began, cpu = time.perf_counter(), own_cpu()
        while not stop.is_set() and not flood.done():
            if answers and not started.is_set():  # answering: the measured load may start
                began, cpu = time.perf_counter(), own_cpu()
                answers.clear()
                started.set()
            await asyncio.sleep(0.1)
        done.set()
        failed = (await asyncio.gather(flood, return_exceptions=True))[0]
        if failed is not None:
            print(f"flood ({kind}) failed: {failed!r}", file=sys.stderr, flush=True)
        out.put((dict(answers), time.perf_counter() - began, own_cpu() - cpu))

    asyncio.run(run())


async def readiness(base: str, phase: Phase, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        while not stop.is_set():
            try:
                r = await c.get("/readyz")
                phase.ready[r.status_code] += 1
            except httpx.TransportError:
                phase.ready[0] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


def mail(i: int) -> bytes:
    return (f"From: Client {i} <c{i}@flood-bench.example>\r\nTo: helpdesk@itx.net\r\n"
            f"Subject: printer {i} jams\r\nMessage-ID: <flood{i}@bench>\r\n\r\n"
            "The printer jams again.\r\n").encode()


def store_process(url: str, count: int, span: float, offset: int, folder: Path,
                  cpus: set[int] | None, ready: Any, go: Any, out: Any) -> None:
    """The ingest worker's storing, in a process of its own: ``count`` new mails evenly over
    ``span`` seconds from ``go``, each parsed and stored in a transaction of its own; the
    milliseconds from each mail's scheduled time to its commit go to ``out``."""
    pin(cpus)
    engine = make_engine(url)
    store = WorkOrderStore(make_sessionmaker(engine), load_policy(),
                           StoreConfig("helpdesk@itx.net", 50, folder, 0.6),
                           lambda: datetime.now(UTC))
    decision = Decision(label="printer_setup", confidence=0.9, priority="normal",
                        needs_review=False, model_version="bench")

    def put(i: int) -> None:
        data = mail(i)
        raw = RawMessage("bench", 1, str(i), len(data), data, internal_date=datetime.now(UTC))
        store.store_batch([Ingest(raw=raw, parsed=parse(data), decision=decision)])

    put(offset - 1)  # unmeasured: the first store compiles what the others reuse
    ready.set()
    go.wait()
    started = time.perf_counter()
    took: list[float] = []
    for k, i in enumerate(range(offset, offset + count)):
        due = started + k * span / max(1, count)
        time.sleep(max(0.0, due - time.perf_counter()))
        put(i)
        took.append((time.perf_counter() - due) * 1000)
    engine.dispose()
    out.put(took)


async def run_phase(db: str, name: str, base: str, pid: int, url: str,
                    args: argparse.Namespace, flood: str, offset: int, folder: Path,
                    cpus: Cpus, times: list[float]) -> Phase:
    phase = Phase(db, name)
    stop = asyncio.Event()
    staff = await staff_client(base)
    for path in QUEUE_PATHS * WARMUP:  # a fresh server: templates and statement caches
        await staff.get(path)
    mp = multiprocessing.get_context("spawn")
    flood_stop, flood_started, flood_out = mp.Event(), mp.Event(), mp.Queue()
    store_ready, store_go, store_out = mp.Event(), mp.Event(), mp.Queue()
    storer = mp.Process(target=store_process, args=(
        url, args.mails, times[-1] if times else 0.0, offset, folder, cpus.server,
        store_ready, store_go, store_out))
    storer.start()
    flooder = None
    if flood:
        flooder = mp.Process(target=flood_process, args=(
            base, flood, args.flood, cpus.load, args.flood_nice, flood_stop, flood_started,
            flood_out))
        flooder.start()
        if not await asyncio.to_thread(flood_started.wait, PHASE_LIMIT):
            print(f"[{db}] {name}: the flood did not start in {PHASE_LIMIT:.0f} s", flush=True)
    await asyncio.to_thread(store_ready.wait, PHASE_LIMIT)
    started = time.perf_counter()
    cpu_before = cpu_seconds(pid)
    store_go.set()
    side = asyncio.create_task(readiness(base, phase, stop))
    try:
        async with asyncio.timeout(PHASE_LIMIT):
            await queue_load(staff, phase, times, started)
            phase.mail_ms = await asyncio.to_thread(store_out.get, True, PHASE_LIMIT)
    except TimeoutError:
        print(f"[{db}] {name}: stopped at the {PHASE_LIMIT:.0f} s limit", flush=True)
    finally:
        phase.wall_s = time.perf_counter() - started
        phase.server_cpu_s = cpu_seconds(pid) - cpu_before
        phase.server_cpus = affinity(pid)
        stop.set()
        flood_stop.set()
        await asyncio.gather(side, return_exceptions=True)
        await staff.aclose()
        if flooder is not None:
            answers, phase.flood_s, phase.flood_cpu_s = await asyncio.to_thread(
                flood_out.get, True, 30)
            phase.logins.update(answers)
            await asyncio.to_thread(flooder.join, 30)
        await asyncio.to_thread(storer.join, 30)
        if storer.is_alive():
            storer.kill()
    return phase


PHASES = {"quiet": ("quiet", ""), "healthz": ("control: /healthz", "healthz"),
          "one": ("flood, one address", "one"), "spread": ("flood, 60 addresses", "spread")}


@dataclass
class Cost:
    db: str
    what: str
    cpu_ms: float  # server CPU per request
    answers: Counter[int]


def signed_in_and_refused(base: str) -> tuple[httpx.Client, httpx.Client, dict[str, str]]:
    """A client signed in as staff; another whose address's bucket is empty, so its next
    wrong login (the form data returned) is refused by the throttle."""
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
    return staff, other, wrong


def costs(db: str, base: str, pid: int, n: int) -> list[Cost]:
    """Server CPU per request by kind, one keep-alive client at a time (no concurrency, so
    the machine's load sways it little): what each kind of flood costs the server."""
    staff, other, wrong = signed_in_and_refused(base)
    addresses = (f"127.0.2.{i}" for i in itertools.count(1))

    def checked() -> httpx.Response:
        """A wrong password from a new address: past the buckets, so argon2 checks it."""
        address = next(addresses)
        transport = httpx.HTTPTransport(local_address=address)
        with httpx.Client(base_url=base, transport=transport) as c:
            form = TOKEN.search(c.get("/login").text)
            assert form
            return c.post("/login", data={"name": f"nobody-{address}",
                                          "password": "wrong guess",
                                          "csrf_token": form.group(1)})

    kinds = (("POST /login refused by the throttle", n, lambda: other.post("/login", data=wrong)),
             ("GET /healthz", n, lambda: other.get("/healthz")),
             ("GET /login (the form)", n, lambda: other.get("/login")),
             ("GET /queue (signed in)", max(1, n // 10), lambda: staff.get("/queue")),
             ("GET /login + POST checked by argon2 (new address)",
              min(10, int(LoginLimits().overall.burst) // 2), checked))
    rows = []
    for what, count, call in kinds:
        answers: Counter[int] = Counter()
        before = cpu_seconds(pid)
        for _ in range(count):
            answers[call().status_code] += 1
        rows.append(Cost(db, what, (cpu_seconds(pid) - before) / count * 1000, answers))
    staff.close()
    other.close()
    return rows


def run_db(db: str, args: argparse.Namespace, cpus: Cpus) -> tuple[list[Phase], list[Cost]]:
    phases: list[Phase] = []
    folder = Path(tempfile.mkdtemp(prefix="triage-flood-att-"))
    times = schedule(args.requests, args.queue_rate, args.arrivals)
    with database(db, None) as (url, _):
        engine = make_engine(url)
        upgrade(engine)
        s = seed(engine, load_policy(), args.work_orders, datetime.now(UTC), random.Random(3))
        engine.dispose()
        print(f"[{db}] seeded {len(s.numbers)} work orders", flush=True)
        with server(url, cpus) as (base, pid):
            cost = costs(db, base, pid, args.cost_requests)
        for c in cost:
            print(f"[{db}] {c.what:50s} server CPU {c.cpu_ms:7.2f} ms a request "
                  f"{dict(c.answers)}", flush=True)
        page = next(c.cpu_ms for c in cost if "queue" in c.what)
        print(f"[{db}] queue load: {len(times)} pages in {times[-1]:.1f} s ({args.arrivals}, "
              f"{args.queue_rate:g}/s): {args.queue_rate:g} x {page:.1f} ms = "
              f"{args.queue_rate * page / 10:.0f} % of one core for the pages", flush=True)
        for i, (name, flood) in enumerate(PHASES[k] for k in args.phases):
            with server(url, cpus) as (base, pid):  # fresh: buckets and delays start full
                p = asyncio.run(run_phase(db, name, base, pid, url, args, flood,
                                          10_000 * (i + 1), folder, cpus, times))
            p.load = os.getloadavg()[0]
            phases.append(p)
            print(f"[{db}] {name:20s} queue median {pct(p.queue_ms, 50):6.1f} "
                  f"p99 {p.pct(99):7.1f} max {max(p.queue_ms, default=math.nan):7.1f} ms "
                  f"({len(p.queue_ms)} answered, {p.unanswered} not, in {p.wall_s:.1f} s, "
                  f"not 200: {dict(p.queue_bad)} {dict(p.errors)}, "
                  f"send lag max {max(p.lag_ms, default=math.nan):.1f} ms); "
                  f"mail median {pct(p.mail_ms, 50):.1f} max "
                  f"{max(p.mail_ms, default=math.nan):.1f} ms ({len(p.mail_ms)}); "
                  f"flood {dict(p.logins)} ({p.flood_rate():.0f}/s, client CPU "
                  f"{p.flood_cpu_s:.1f} s); readyz {dict(p.ready)}; "
                  f"server CPU {p.server_cpu_s:.1f} s ({p.server_cpu_s / p.wall_s:.2f}/s) "
                  f"on CPUs {sorted(p.server_cpus)}; load {p.load:.1f}", flush=True)
    return phases, cost


def cost_table(rows: list[Cost]) -> str:
    lines = ["| database | request | server CPU ms a request | answers |", "|---|---|---:|---|"]
    lines += [f"| {c.db} | {c.what} | {c.cpu_ms:.2f} | "
              f"{', '.join(f'{k}: {v:,}' for k, v in sorted(c.answers.items()))} |"
              for c in rows]
    return "\n".join(lines)


def ms(x: float) -> str:
    return "∞" if x == math.inf else f"{x:,.1f}"


def table(phases: list[Phase]) -> str:
    lines = ["| database | phase | queue median ms | p90 | p99 | max | not 200 / unanswered "
             "| send lag max ms | mail median ms | mail max ms | flood answers | flood req/s "
             "| flood client CPU s | /readyz answers | server CPU s | server CPU/s | load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---:|"]
    for p in phases:
        def fmt(c: Counter[int]) -> str:
            return ", ".join(f"{k}: {v:,}" for k, v in sorted(c.items())) or "—"
        flooded = bool(p.flood_s)
        lines.append(
            f"| {p.db} | {p.name} | {ms(p.pct(50))} | {ms(p.pct(90))} | {ms(p.pct(99))} "
            f"| {ms(p.pct(100))} | {sum(p.queue_bad.values())} / {p.unanswered} "
            f"| {max(p.lag_ms, default=math.nan):.1f} | {pct(p.mail_ms, 50):.1f} "
            f"| {max(p.mail_ms, default=math.nan):.1f} | {fmt(p.logins)} "
            f"| {f'{p.flood_rate():.0f}' if flooded else '—'} "
            f"| {f'{p.flood_cpu_s:.1f}' if flooded else '—'} | {fmt(p.ready)} "
            f"| {p.server_cpu_s:.1f} | {p.server_cpu_s / p.wall_s:.2f} | {p.load:.1f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", nargs="+", default=["sqlite"], choices=["sqlite", "postgresql"])
    ap.add_argument("--queue-rate", type=float, default=4.0,
                    help="queue pages a second, sent open-loop (default 4: 20 technicians "
                         "refreshing every 5 s)")
    ap.add_argument("--requests", type=int, default=200,
                    help=f"queue pages per phase; the schedule is cut at "
                         f"{PHASE_LIMIT - DRAIN:.0f} s")
    ap.add_argument("--arrivals", choices=["poisson", "even"], default="poisson")
    ap.add_argument("--flood", type=int, default=60, help="concurrent flood loops")
    ap.add_argument("--flood-nice", type=int, default=10,
                    help="the flood process's nice value (0: as the rest)")
    ap.add_argument("--phases", nargs="*", choices=list(PHASES), default=list(PHASES),
                    help="the phases to run (none: only the table of costs)")
    ap.add_argument("--mails", type=int, default=50, help="mails stored per phase")
    ap.add_argument("--work-orders", type=int, default=2000)
    ap.add_argument("--cost-requests", type=int, default=1000,
                    help="sequential requests per kind for the server-CPU-per-request table")
    ap.add_argument("--pin", action="store_true",
                    help="server and mail storer on CPU 0, load generators on the others")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--http", choices=["httptools", "h11"], default="httptools",
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.http)
        return 0
    cpus = Cpus.pinned() if args.pin else Cpus()
    pin(cpus.load)
    where = "; pinned: server and mail storer on CPU 0, load generators on the others"
    print(f"{machine()}; load {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
          f"{where if args.pin else ''}", flush=True)
    phases: list[Phase] = []
    cost: list[Cost] = []
    for db in args.db:
        p, c = run_db(db, args, cpus)
        phases += p
        cost += c
    print()
    print(table(phases))
    print()
    print(cost_table(cost))
    return 0


if __name__ == "__main__":
    sys.exit(main())
