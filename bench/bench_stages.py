"""Each stage of the daemon alone, in one process, so the slowest one is visible.

    python bench/bench_stages.py [--count 2000] [--db sqlite postgresql] [--runs 3]

On the corpus of bench/corpus.py, with the daemon's own code and its default batch of 50:

- fetch: ``ImapMailbox.batches`` from a loopback Dovecot (Maildir loaded with files), no mark;
- parse: ``triage.parse.parse`` per message;
- classify: ``Classifier.classify_many`` per batch of 50, and all in one call;
- store: ``WorkOrderStore.store_batch`` per batch of 50 (a fresh database each run);
- outbox: ``OutboxStore.claim`` (as many a time as ``Sender.drain`` claims), ``render_ack``
  (an ``EmailMessage``) and ``render_ack_wire`` (the bytes, what the daemon sends),
  ``SmtpTransport.send`` of the wire bytes on one reused connection to the aiosmtpd sink, and
  ``OutboxStore.record`` (on SQLite a row in the side database, applied by the next
  claim; on PostgreSQL one commit per row), each timed alone; then
  ``Sender.drain`` as the daemon calls it, all four together.

Prints msgs/s per stage (median of ``--runs``). The acknowledgment rate limits per domain
and in all are set out of the way, as bench_backlog.py does (``BENCH_ACK_LIMITS``), so every
request's acknowledgment goes through the outbox stages.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._servers import Servers, database, load_maildir, machine, servers
from bench.corpus import generate
from classifiers.predict import Classifier
from classifiers.types import Decision
from tests.dovecot import DovecotUser
from triage.ack import render_ack, render_ack_wire
from triage.config import Settings
from triage.ingest import to_input
from triage.mailbox.imap import ImapMailbox
from triage.messages import ParsedEmail, RawMessage
from triage.outbox.sender import Sender
from triage.outbox.store import Job
from triage.parse import parse
from triage.smtp import SendResult, SmtpSettings, SmtpTransport, WireMessage
from triage.wiring import Components, build
from triage.workorders import Ingest

log = logging.getLogger("bench.stages")
BATCH = 50  # the daemon's default batch_size
RECORD = {"sqlite": "record, a row in the side database (the next claim applies it), sqlite",
          "postgresql": "record, one commit per row, postgresql"}
# Rows claimed per outbox sweep, as the daemon claims them.
SWEEP: int = inspect.signature(Sender.drain).parameters["limit"].default


@dataclass
class Row:
    stage: str
    variant: str
    count: int
    seconds: list[float]

    def line(self) -> str:
        med = statistics.median(self.seconds)
        return (f"| {self.stage} | {self.variant} | {self.count:,} | {self.count / med:,.0f} | "
                f"{med * 1000 / self.count:.2f} ms |")


def batches(seq: Sequence[object], n: int = BATCH) -> list[Sequence[object]]:
    return [seq[i : i + n] for i in range(0, len(seq), n)]


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


async def fetch_all(user: DovecotUser) -> int:
    mb = ImapMailbox("127.0.0.1", user.port, user.user, user.password, security="plain")
    await mb.connect()
    n = 0
    try:
        async for batch in mb.batches(BATCH):
            n += len(batch)
    finally:
        await mb.close()
    return n


def components(srv: Servers, db_url: str, work: Path, clf: Classifier) -> Components:
    settings = Settings(
        mailbox_url=srv.mailbox_url(), mailbox_password="x", smtp_url=srv.sink.url,
        database_url=db_url, attachments_dir=work / "att", outbox_retry_base=0.0,
        # The whole corpus is acknowledged, as in bench_backlog.py (BENCH_ACK_LIMITS).
        ack_rate_per_domain_per_hour=1_000_000, ack_rate_global_per_hour=1_000_000,
    )  # type: ignore[arg-type]
    return build(settings, classifier=clf)


def store_stage(c: Components, items: list[Ingest]) -> float:
    t = time.perf_counter()
    for i in range(0, len(items), BATCH):
        c.store.store_batch(items[i : i + BATCH])
    return time.perf_counter() - t


def outbox_steps(srv: Servers, c: Components) -> dict[str, tuple[int, float]]:
    """Claim, render, send and record, each over every pending row before the next."""
    outbox, renderers = c.runner.sender.outbox, c.runner.sender.renderers
    env = renderers.env
    t = time.perf_counter()
    jobs: list[Job] = []
    while got := outbox.claim(SWEEP):
        jobs.extend(got)
    claim = time.perf_counter() - t

    t = time.perf_counter()
    msgs: list[EmailMessage] = []
    for j in jobs:
        view = renderers.ack_view(j)
        assert view is not None
        msgs.append(render_ack(env, view, from_address="helpdesk@itx.net",
                               from_name="ITX Helpdesk", phone="800-600-7785"))
    render = time.perf_counter() - t

    t = time.perf_counter()
    wires: list[WireMessage] = []
    for j in jobs:
        view = renderers.ack_view(j)
        assert view is not None
        data = render_ack_wire(env, view, from_address="helpdesk@itx.net",
                               from_name="ITX Helpdesk", phone="800-600-7785")
        assert data is not None
        wires.append(WireMessage(data, f"<{view.message_id}>"))
    wire = time.perf_counter() - t
    del msgs

    t = time.perf_counter()
    results = asyncio.run(send_all(srv, wires, jobs))
    send = time.perf_counter() - t

    t = time.perf_counter()
    for j, r in zip(jobs, results, strict=True):
        outbox.record(j, r)
    record = time.perf_counter() - t
    n = len(jobs)
    return {"claim": (n, claim), "render": (n, render), "wire": (n, wire), "send": (n, send),
            "record": (n, record)}


async def send_all(srv: Servers, msgs: list[WireMessage], jobs: list[Job]) -> list[SendResult]:
    out = []
    async with SmtpTransport(SmtpSettings.from_url(srv.sink.url)) as t:
        for m, j in zip(msgs, jobs, strict=True):
            r = await t.send(m, sender="helpdesk@itx.net", recipients=[j.to_addr])
            assert r.ok, r
            out.append(r)
    return out


async def drain(c: Components) -> tuple[int, float]:
    """``Sender.drain`` until empty, as ``run --once`` calls it."""
    total = 0
    t = time.perf_counter()
    async with c.transport:
        while True:
            sent, failed = await c.runner.sender.drain()
            total += sent
            if failed or not sent:
                break
    return total, time.perf_counter() - t


def db_stages(srv: Servers, kind: str, items: list[Ingest], clf: Classifier,
              runs: int) -> list[Row]:
    rows: dict[str, Row] = {}

    def add(stage: str, variant: str, n: int, secs: float) -> None:
        rows.setdefault(variant, Row(stage, variant, n, [])).seconds.append(secs)

    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp, database(kind, Path(tmp)) as url:
            c = components(srv, url, Path(tmp), clf)
            add("store", f"store_batch per {BATCH}, {kind}", len(items), store_stage(c, items))
            steps = outbox_steps(srv, c)
            c.engine.dispose()
        for name, variant in (("claim", f"claim per {SWEEP}, {kind}"),
                              ("render", "render_ack (EmailMessage)"),
                              ("wire", "render_ack_wire (bytes, as sent)"),
                              ("send", "SMTP send of the bytes, one reused connection"),
                              ("record", RECORD[kind])):
            add("outbox", variant, *steps[name])
        with tempfile.TemporaryDirectory() as tmp, database(kind, Path(tmp)) as url:
            c = components(srv, url, Path(tmp), clf)
            store_stage(c, items)
            add("outbox", f"Sender.drain (the four together), {kind}", *asyncio.run(drain(c)))
            c.engine.dispose()
    return list(rows.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--db", nargs="+", default=["sqlite", "postgresql"],
                    choices=["sqlite", "postgresql"])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    out = sys.stdout
    out.write(f"machine: {machine()}\n\n| stage | variant | messages | msgs/s | per message |\n"
              "|---|---|---:|---:|---:|\n")
    corpus = list(generate(args.count))
    raws = [RawMessage("bench/INBOX", 1, str(i + 1), len(b), b) for i, b in enumerate(corpus)]
    clf = Classifier.load()

    with servers() as srv:
        load_maildir(srv.dovecot, iter(corpus))
        fetch = Row("fetch", f"ImapMailbox.batches({BATCH}), no mark", args.count, [])
        for _ in range(args.runs):
            t = time.perf_counter()
            assert asyncio.run(fetch_all(srv.dovecot)) == args.count
            fetch.seconds.append(time.perf_counter() - t)
        out.write(fetch.line() + "\n")

        parsed: list[ParsedEmail] = []
        prow = Row("parse", "triage.parse.parse", args.count, [])
        for _ in range(args.runs):
            parsed = []
            prow.seconds.append(timed(lambda: parsed.extend(parse(r) for r in corpus)))  # noqa: B023
        out.write(prow.line() + "\n")

        inputs = [to_input(p) for p in parsed]
        decisions: list[Decision] = []
        crow = Row("classify", f"classify_many per {BATCH}", args.count, [])
        whole = Row("classify", "classify_many, all in one call", args.count, [])
        for _ in range(args.runs):
            decisions = []
            crow.seconds.append(timed(lambda: [decisions.extend(clf.classify_many(b))  # noqa: B023
                                               for b in batches(inputs)]))  # type: ignore[arg-type]
            whole.seconds.append(timed(lambda: clf.classify_many(inputs)))
        out.write(crow.line() + "\n" + whole.line() + "\n")
        out.flush()

        for kind in args.db:
            items = [Ingest(raw=r, parsed=p, decision=d)
                     for r, p, d in zip(raws, parsed, decisions, strict=True)]
            for row in db_stages(srv, kind, items, clf, args.runs):
                out.write(row.line() + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
