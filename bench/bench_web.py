"""The staff web app at 100,000 work orders: queue and work-order page latency (issue 5).

    python bench/bench_web.py [--count 100000] [--db sqlite postgresql] [--requests 200]
                              [--warmup 20] [--keep-sqlite PATH] [--keep-pg NAME]
                              [--py-spy DIR]

For each database: a fresh one (a SQLite file in a temporary folder, or a throwaway
PostgreSQL database on 127.0.0.1:5432, dropped afterwards), migrated with
``triage.storage.migrate.upgrade``, then filled with SQLAlchemy Core inserts: a few hundred
clients, a few staff users, N work orders (70 % resolved, the rest new / open / waiting on
the client) whose due dates come from the real SLA policy and whose ``next_due`` /
``at_risk_at`` come from ``triage.slamarks.marks``, one opening message each (some with an
HTML part, some with a client reply), an acknowledgment in the outbox and a few audit events.

The real app (``create_web_app``) then runs under uvicorn in a subprocess, as the daemon
serves it, and one keep-alive httpx client signed in with a session cookie times each page
from request to the last byte, one request at a time, after a warm-up. Beside the wall-clock
median, p90 and p99 it reports the server process's CPU time per request and the load
average: the machine is shared, and the CPU time is the figure other load sways least.

``--keep-sqlite PATH`` / ``--keep-pg NAME`` keep (or reuse, when it exists) the database, to
iterate on queries without reseeding (drop a kept PostgreSQL database yourself); the
migrations are run on it again, so a new index reaches it. ``--py-spy DIR`` records the
server with py-spy during the timed requests (raw folded stacks, one file per database).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from _servers import web_server
from sqlalchemy import Engine, create_engine, func, insert, select, text
from sqlalchemy.pool import NullPool

from triage.desk import users
from triage.sla import SlaPolicy, load_policy
from triage.slamarks import marks
from triage.storage.engine import make_engine, make_read_sessionmaker, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.storage.models import Client, Event, Message, Outbox, User, WorkOrder
from triage.workorders import format_number

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "TRIAGE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
PASSWORD = "bench password, long enough"
STAFF = ("alice", "bob", "carol", "dave", "erin", "frank")
AT_RISK_FRACTION = 0.75
CHUNK = 5000
TARGETS_MS = {"queue": 150.0, "work_order": 100.0}

WORDS = ("printer", "server", "email", "password", "outlook", "quickbooks", "website", "backup",
         "vpn", "laptop", "account", "locked", "reset", "install", "license", "error", "slow",
         "cannot", "access", "share", "drive", "scanner", "network", "wifi", "invoice", "payroll",
         "update", "windows", "office", "teams", "phone", "monitor", "folder", "permission",
         "company", "file", "down", "urgent", "please", "help", "today")
FIRST = ("Dana", "Jack", "Sam", "Karl", "Priya", "Lena", "Omar", "Rita", "Tom", "Wei", "Ana",
         "Luis", "Mia", "Noah", "Eva", "Ian")
LAST = ("Blake", "Morrison", "Weber", "Davis", "Chen", "Patel", "Garcia", "Novak", "Rossi", "Kim",
        "Lopez", "Young")


# ---- data ----------------------------------------------------------------------------------
def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize()


def body(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    size = 0
    while size < chars:
        s = sentence(rng, rng.randint(6, 14)) + "."
        out.append(s)
        size += len(s) + 1
    return "Hi,\n\n" + " ".join(out) + "\n\nThanks,\n"


@dataclass
class Seeded:
    numbers: list[str]
    seconds: float


def seed(engine: Engine, policy: SlaPolicy, count: int, now: datetime,
         rng: random.Random) -> Seeded:
    """Fill a migrated, empty database. Explicit primary keys, so rows can refer to each other
    without reading back; PostgreSQL's sequences are moved past them at the end."""
    t0 = time.perf_counter()
    n_clients = max(20, min(400, count // 250))
    clients: list[dict[str, Any]] = []
    for i in range(1, n_clients + 1):
        domain = f"client{i:03d}.example.com"
        clients.append({"id": i, "domain": domain, "name": f"Client {i:03d} LLC",
                        "contract": "24x7" if rng.random() < 0.1 else "standard",
                        "created_at": now - timedelta(days=400)})
    staff: list[dict[str, Any]] = []
    hashed = users._hasher.hash(PASSWORD)  # one argon2 hash shared: seeding, not security
    for i, name in enumerate(STAFF, 1):
        staff.append({"id": i, "name": name, "display_name": name.capitalize() + " Tech",
                      "email": f"{name}@itx.net", "password_hash": hashed, "active": True,
                      "created_at": now - timedelta(days=400)})
    with engine.begin() as conn:
        conn.execute(insert(Client.__table__), clients)
        conn.execute(insert(User.__table__), staff)

    types = policy.types
    numbers: list[str] = []
    wos: list[dict[str, Any]] = []
    msgs: list[dict[str, Any]] = []
    outbox: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    msg_id = ev_id = 0

    def flush() -> None:
        with engine.begin() as conn:
            for table, rows in ((WorkOrder.__table__, wos), (Message.__table__, msgs),
                                (Outbox.__table__, outbox), (Event.__table__, events)):
                if rows:
                    conn.execute(insert(table), rows)
                rows.clear()

    for wid in range(1, count + 1):
        client = rng.choice(clients)
        contract = client["contract"]
        rtype = rng.choice(types)
        default_prio = policy.default_priority(rtype)
        prio = (default_prio if rng.random() < 0.85
                else rng.choice([p for p in policy.priorities if p != default_prio]))
        r = rng.random()
        status = ("resolved" if r < 0.70 else "open" if r < 0.82 else
                  "new" if r < 0.92 else "waiting_client")
        # The active work orders are mostly recent; the resolved ones span the 90 days.
        age_days = {"resolved": 90.0, "open": 21.0, "new": 4.0, "waiting_client": 45.0}[status]
        received = now - timedelta(seconds=rng.uniform(60, age_days * 86400))
        due = policy.due(rtype, prio, contract, received)
        first_response = resolved_at = None
        pauses: list[Any] = []
        if status != "new":
            first_response = min(received + timedelta(minutes=rng.uniform(10, 600)), now)
        if status == "resolved":
            assert first_response is not None
            resolved_at = min(first_response + timedelta(hours=rng.uniform(1, 120)), now)
        if status == "waiting_client":
            assert first_response is not None
            pauses = [[first_response.isoformat(), None]]
        elif status == "open" and rng.random() < 0.2:
            assert first_response is not None
            back = min(first_response + timedelta(hours=rng.uniform(1, 30)), now)
            pauses = [[first_response.isoformat(), back.isoformat()]]
        confidence = rng.uniform(0.35, 1.0)
        review = confidence < 0.45 or rng.random() < 0.03
        assignee = (rng.randint(1, len(STAFF)) if status != "new" and rng.random() < 0.6
                    else None)
        number = format_number(wid)
        numbers.append(number)
        subject = sentence(rng, rng.randint(3, 9))
        first = rng.choice(FIRST)
        requester = f"{first.lower()}@{client['domain']}"
        row: dict[str, Any] = {
            "id": wid, "number": number, "client_id": client["id"], "requester": requester,
            "requester_name": f"{first} {rng.choice(LAST)}", "subject": subject,
            "request_type": rtype, "confidence": confidence, "priority": prio,
            "status": status, "needs_review": review,
            "review_reason": f"low confidence {confidence:.2f}" if review else None,
            "classifier_version": "tfidf-svc-2026.11",
            "evidence": [{"source": rng.choice(("subject", "body")),
                          "text": rng.choice(WORDS), "weight": round(rng.uniform(0.1, 2), 3)}
                         for _ in range(3)],
            "cues": rng.sample(("urgent", "down", "locked", "cannot", "asap"), 2),
            "contract": contract, "received_at": received, "clock_start": due.clock_start,
            "response_due": due.response_due, "callback_due": due.callback_due,
            "fulfil_due": due.fulfil_due,
            "milestones": [{"name": n, "due": t.isoformat()} for n, t in due.milestones],
            "root_message_id": f"<{wid}.{rng.getrandbits(40):x}@{client['domain']}>",
            "first_response_at": first_response, "resolved_at": resolved_at,
            "assignee_id": assignee, "promised_at": None, "pauses": pauses,
            "created_at": received, "updated_at": resolved_at or first_response or received,
        }
        row["next_due"], row["at_risk_at"] = marks(WorkOrder(**row), policy, AT_RISK_FRACTION)
        wos.append(row)

        text_body = body(rng, rng.randint(200, 600))
        msg_id += 1
        msgs.append({
            "id": msg_id, "direction": "in", "dedupe_key": "mid:" + row["root_message_id"],
            "message_id": row["root_message_id"],
            "content_hash": hashlib.sha256(text_body.encode()).hexdigest(),
            "size": len(text_body) + 1800, "from_addr": requester,
            "from_name": row["requester_name"], "subject": subject, "in_reply_to": None,
            "references": [], "headers": [["From", requester], ["Subject", subject]],
            "body_text": text_body,
            "body_html": ("<div><p>" + text_body.replace("\n\n", "</p><p>")
                          + "</p><p><b>Sent from my office</b></p></div>"
                          if rng.random() < 0.3 else None),
            "defects": [], "received_at": received, "disposition": "work_order",
            "reason": None, "work_order_id": wid, "created_at": received,
        })
        out_id = wid
        outbox.append({
            "id": out_id, "work_order_id": wid, "kind": "ack", "to_addr": requester,
            "message_id": f"{number}.ack.{out_id}.{rng.getrandbits(48):012x}@itx.net",
            "template": f"ack/{rtype}",
            "context": {"in_reply_to": row["root_message_id"],
                        "references": [row["root_message_id"]], "subject": subject[:200]},
            "status": "sent", "attempts": 1, "next_attempt_at": received,
            "claimed_until": None, "last_error": None, "smtp_response": "250 OK",
            "sent_at": received + timedelta(seconds=2), "created_at": received,
        })
        ev: list[tuple[datetime, str, str, dict[str, Any]]] = [
            (received, "system", "created",
             {"type": rtype, "priority": prio, "confidence": round(confidence, 4)})]
        if assignee is not None:
            ev.append((first_response or received, "alice", "assigned",
                       {"to": STAFF[assignee - 1]}))
        if first_response is not None:
            ev.append((first_response, STAFF[(assignee or 1) - 1], "replied",
                       {"outbox": None}))
            if rng.random() < 0.2:
                ev.append((first_response, STAFF[(assignee or 1) - 1], "note",
                           {"text": sentence(rng, 12) + "."}))
        if resolved_at is not None:
            ev.append((resolved_at, STAFF[(assignee or 1) - 1], "resolved",
                       {"status": "resolved", "was": "open"}))
        if rng.random() < 0.15:  # a client reply threaded on
            at = min(received + timedelta(hours=rng.uniform(0.5, 48)), now)
            msg_id += 1
            reply_body = body(rng, rng.randint(100, 300))
            msgs.append({
                "id": msg_id, "direction": "in", "dedupe_key": f"mid:<r{msg_id}@x>",
                "message_id": f"<r{msg_id}@x>", "content_hash": "0" * 64,
                "size": len(reply_body) + 1500, "from_addr": requester,
                "from_name": row["requester_name"], "subject": f"Re: [{number}] {subject}",
                "in_reply_to": row["root_message_id"], "references": [],
                "headers": [], "body_text": reply_body, "body_html": None, "defects": [],
                "received_at": at, "disposition": "reply", "reason": None,
                "work_order_id": wid, "created_at": at,
            })
            ev.append((at, "system", "client_reply", {"message": msg_id}))
        for at, actor, action, detail in ev:
            ev_id += 1
            events.append({"id": ev_id, "work_order_id": wid, "actor": actor,
                           "action": action, "detail": detail, "at": at})
        if len(wos) >= CHUNK:
            flush()
    flush()
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in ("clients", "users", "work_orders", "messages", "outbox", "events"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))
        # What autovacuum does soon after a bulk load (statistics, visibility map; it is off
        # on the test instance). SQLite gets no ANALYZE: the daemon never runs one.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    return Seeded(numbers, time.perf_counter() - t0)


# ---- databases ------------------------------------------------------------------------------
@contextlib.contextmanager
def database(kind: str, keep: str | None) -> Iterator[tuple[str, bool]]:
    """A database URL and whether it is already seeded (only a kept database can be)."""
    if kind == "sqlite":
        if keep is not None:
            yield f"sqlite:///{keep}", Path(keep).exists()
            return
        folder = Path(tempfile.mkdtemp(prefix="triage-bench-web-"))
        try:
            yield f"sqlite:///{folder / 'triage.db'}", False
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    name = keep or f"triage_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    if keep is not None:
        with admin.connect() as c:
            exists = c.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if not exists:
                c.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        yield url, bool(exists)
        return
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url, False
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# ---- the server -----------------------------------------------------------------------------
def serve(url: str, port: int) -> None:
    """The subprocess: the staff app as the daemon wires it (no mailbox, no SMTP)."""
    import uvicorn

    from triage.desk.actions import Desk, DeskConfig
    from triage.web.app import WebDeps, create_web_app

    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    policy = load_policy()
    desk = Desk(sessions, policy, DeskConfig("helpdesk@itx.net", AT_RISK_FRACTION),
                lambda: datetime.now(UTC))
    app = create_web_app(WebDeps(sessions, make_read_sessionmaker(engine), policy, desk,
                                 Path(tempfile.gettempdir()), lambda: datetime.now(UTC),
                                 cookie_secure=False))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextlib.contextmanager
def server(url: str) -> Iterator[tuple[str, int]]:
    with web_server(__file__, url, ready_path="/login") as served:
        yield served


@contextlib.contextmanager
def signed_in(url: str) -> Iterator[tuple[httpx.Client, int]]:
    """The staff app served from the database at ``url``, a client signed in as the first
    staff member, and the server's pid (for its CPU time)."""
    with server(url) as (base, pid), httpx.Client(base_url=base, timeout=60) as client:
        login(client)
        yield client, pid


def timed(client: httpx.Client, pid: int, kind: str, page: str, path: str, label: str,
          args: argparse.Namespace) -> Timing:
    """``args.requests`` GETs of ``path`` after ``args.warmup`` unmeasured ones."""
    ms, size, cpu = time_paths(client, [path] * (args.requests + args.warmup), args.warmup, pid)
    return Timing(kind, page, label, ms, size, cpu, os.getloadavg()[0])


def login(client: httpx.Client) -> None:
    r = client.get("/login")
    m = re.search(r'name="csrf_token" value="([^"]+)"', r.text)
    assert m, "no CSRF token on the login form"
    r = client.post("/login", data={"name": STAFF[0], "password": PASSWORD,
                                    "csrf_token": m.group(1), "next": "/queue"})
    if r.status_code != 303 or "itx_session" not in client.cookies:
        raise RuntimeError(f"login failed: {r.status_code} {r.text[:300]}")


# ---- timing ---------------------------------------------------------------------------------
@dataclass
class Timing:
    db: str
    page: str
    path: str
    ms: list[float]
    size: int
    cpu_ms: float  # the server's CPU time per request
    load: float  # the machine's 1-minute load average at the end

    def pct(self, p: float) -> float:
        xs = sorted(self.ms)
        return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]

    @property
    def median(self) -> float:
        return statistics.median(self.ms)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (less swayed by other load than wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_paths(client: httpx.Client, paths: list[str], warmup: int,
               pid: int) -> tuple[list[float], int, float]:
    """Wall milliseconds per request, the last body's size, server CPU ms per request."""
    for p in paths[:warmup]:
        r = client.get(p)
        r.raise_for_status()
    out: list[float] = []
    size = 0
    cpu0 = cpu_seconds(pid)
    for p in paths[warmup:]:
        t = time.perf_counter()
        r = client.get(p)
        _ = r.content
        out.append((time.perf_counter() - t) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"GET {p}: {r.status_code} {r.text[:300]}")
        size = len(r.content)
    return out, size, (cpu_seconds(pid) - cpu0) * 1000 / len(out)


def scenarios(numbers: list[str], n: int, warmup: int,
              rng: random.Random) -> list[tuple[str, str, list[str]]]:
    queue = [("queue", "/queue"), ("queue", "/queue?type=email_problem"),
             ("queue", "/queue?sla=breached"), ("queue", "/queue?review=yes"),
             ("queue", "/queue?page=50"), ("queue", f"/queue?assignee={STAFF[1]}")]
    out = [(page, path, [path] * (n + warmup)) for page, path in queue]
    picks = [f"/work-orders/{rng.choice(numbers)}" for _ in range(n + warmup)]
    out.append(("work_order", "/work-orders/{random}", picks))
    return out


def run_db(kind: str, args: argparse.Namespace) -> list[Timing]:
    rng = random.Random(5)
    policy = load_policy()
    now = datetime.now(UTC)
    timings: list[Timing] = []
    keep = args.keep_sqlite if kind == "sqlite" else args.keep_pg
    with database(kind, keep) as (url, seeded):
        engine = make_engine(url)
        upgrade(engine)
        if seeded:
            with engine.connect() as c:
                numbers = list(c.scalars(select(WorkOrder.number)))
            print(f"[{kind}] reusing {len(numbers)} work orders", flush=True)
        else:
            s = seed(engine, policy, args.count, now, rng)
            numbers = s.numbers
            print(f"[{kind}] seeded {len(numbers)} work orders in {s.seconds:.0f} s", flush=True)
        with engine.connect() as c:
            active = c.scalar(select(func.count()).select_from(WorkOrder)
                              .where(WorkOrder.status != "resolved"))
        print(f"[{kind}] active work orders: {active}", flush=True)
        engine.dispose()
        with server(url) as (base, pid), httpx.Client(base_url=base, timeout=30) as client:
            login(client)
            spy = None
            if args.py_spy is not None:
                args.py_spy.mkdir(parents=True, exist_ok=True)
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format",
                                        "raw", "--rate", "200", "--output",
                                        str(args.py_spy / f"{kind}.txt")])
                time.sleep(1)
            for page, label, paths in scenarios(numbers, args.requests, args.warmup, rng):
                ms, size, cpu = time_paths(client, paths, args.warmup, pid)
                t = Timing(kind, page, label, ms, size, cpu, os.getloadavg()[0])
                timings.append(t)
                print(f"[{kind}] {label:32s} median {t.median:7.1f}  p90 {t.pct(90):7.1f}  "
                      f"p99 {t.pct(99):7.1f} ms  server CPU {cpu:6.1f} ms/req  "
                      f"load {t.load:.1f}  ({size / 1024:.0f} KB)", flush=True)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
    return timings


def table(timings: list[Timing]) -> str:
    lines = ["| database | page | median ms | p90 ms | p99 ms | target (median) "
             "| server CPU ms/req | load | size |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for t in timings:
        target = TARGETS_MS[t.page]
        ok = "met" if t.median < target else "**missed**"
        lines.append(f"| {t.db} | `{t.path}` | {t.median:.1f} | {t.pct(90):.1f} | "
                     f"{t.pct(99):.1f} | < {target:.0f} ({ok}) | {t.cpu_ms:.1f} | "
                     f"{t.load:.1f} | {t.size / 1024:.0f} KB |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--db", nargs="+", default=["sqlite", "postgresql"],
                    choices=["sqlite", "postgresql"])
    ap.add_argument("--requests", type=int, default=200, help="timed requests per page")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--keep-sqlite", default=None, metavar="PATH",
                    help="keep (or reuse) this SQLite file")
    ap.add_argument("--keep-pg", default=None, metavar="NAME",
                    help="keep (or reuse) this PostgreSQL database; drop it yourself")
    ap.add_argument("--py-spy", type=Path, default=None)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    timings: list[Timing] = []
    for kind in args.db:
        timings += run_db(kind, args)
    print()
    print(f"{args.count} work orders, {args.requests} timed requests per row after "
          f"{args.warmup} warm-up, one keep-alive client; {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}")
    print(table(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
