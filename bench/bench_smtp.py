"""Sends per second through triage.smtp to a loopback aiosmtpd sink (tests/smtpsink.py).

    python bench/bench_smtp.py [--messages 500] [--runs 3]

Variants: one reused plain connection (the outbox's normal case), one reused STARTTLS+AUTH
connection, a new connection per message (what a transport that never reuses would cost),
and the .eml folder transport. Each message is built just before it is sent, as the outbox
does. Prints the median of the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.smtpsink import SINK_PASSWORD, SINK_USER, SmtpSink, make_cert
from triage.smtp import DirectoryTransport, SmtpSettings, SmtpTransport


def build(n: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "ITX Helpdesk <helpdesk@itx.net>"
    msg["To"] = f"client{n}@example.com"
    msg["Subject"] = f"[WO-{n}] We received your request"
    msg["Message-ID"] = f"<outbox-{n}.ack@itx.net>"
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content("Thank you for contacting ITX support.\n" * 40)  # ~1.5 KB, a typical ack
    return msg


async def reused(settings: SmtpSettings, count: int) -> None:
    async with SmtpTransport(settings) as t:
        for n in range(count):
            r = await t.send(build(n), sender="helpdesk@itx.net", recipients=[f"c{n}@example.com"])
            assert r.ok, r


async def fresh_each(settings: SmtpSettings, count: int) -> None:
    for n in range(count):
        async with SmtpTransport(settings) as t:
            r = await t.send(build(n), sender="helpdesk@itx.net", recipients=[f"c{n}@example.com"])
            assert r.ok, r


async def folder(path: Path, count: int) -> None:
    async with DirectoryTransport(path) as t:
        for n in range(count):
            r = await t.send(build(n), sender="helpdesk@itx.net", recipients=[f"c{n}@example.com"])
            assert r.ok, r


def measure(run: Callable[[], Awaitable[None]], count: int, runs: int) -> float:
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        asyncio.run(run())  # type: ignore[arg-type]
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    n, runs = args.messages, args.runs
    # aiosmtpd logs a warning about its own deprecated Session.login_data on every AUTH.
    logging.getLogger("mail.log").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp:
        cert = make_cert(Path(tmp))
        plain = SmtpSink("plain")
        tls = SmtpSink("starttls", cert=cert, auth=(SINK_USER, SINK_PASSWORD))
        plain.start()
        tls.start()
        try:
            s_plain = SmtpSettings.from_url(plain.url, None, None)
            s_tls = SmtpSettings.from_url(
                tls.url, SINK_USER, SINK_PASSWORD, ssl_context=tls.client_context
            )
            rows = [
                ("plain, one reused connection", measure(lambda: reused(s_plain, n), n, runs)),
                ("STARTTLS+AUTH, one reused connection",
                 measure(lambda: reused(s_tls, n), n, runs)),
                ("plain, new connection per message",
                 measure(lambda: fresh_each(s_plain, n), n, runs)),
                ("STARTTLS+AUTH, new connection per message",
                 measure(lambda: fresh_each(s_tls, n), n, runs)),
                (".eml folder (fsync each)",
                 measure(lambda: folder(Path(tmp) / "outbox", n), n, runs)),
            ]  # fmt: skip
            assert len(plain.received) == 2 * n * runs
            assert len(tls.received) == 2 * n * runs
        finally:
            plain.stop()
            tls.stop()

    print(f"{n} messages, median of {runs} runs")
    for name, rate in rows:
        print(f"  {name:<44} {rate:8.0f} msgs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
