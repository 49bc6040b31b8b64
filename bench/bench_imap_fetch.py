"""Fetch rate of ImapMailbox.batches() against a private loopback Dovecot.

    python bench/bench_imap_fetch.py [--messages 2000] [--runs 3] [--chunks 10,25,50,100]

Loads N helpdesk-like messages (2-3 KB of Received/DKIM-style headers, a short body) into
Maildir/new once, then drains the folder with different UIDs-per-FETCH settings
(``triage.mailbox.imap.FETCH_CHUNK``), nothing marked, so every run fetches everything.
Prints the median msgs/s of the runs for each setting. Needs root and /usr/sbin/dovecot.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.dovecot import DovecotServer, DovecotUser
from triage.mailbox import imap as imap_mod
from triage.mailbox.imap import ImapMailbox


def corpus(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        received = b"".join(
            b"Received: from relay%d.example.net (relay%d.example.net [192.0.2.%d])\r\n"
            b"\tby mx.itx.net (Postfix) with ESMTPS id 4Xyz%06d for <helpdesk@itx.net>;\r\n"
            b"\tMon, 3 Mar 2025 10:%02d:00 -0500\r\n" % (h, h, h, i, h)
            for h in range(8)
        )
        dkim = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s1; b=" + b"A" * 400 + b"\r\n"
        body = (b"Hello, our QuickBooks company file %d will not open, error -6000.\r\n" % i) * 20
        out.append(
            received + dkim + b"From: Client %d <c%d@example.com>\r\nTo: helpdesk@itx.net\r\n"
            b"Subject: ticket %d\r\nMessage-ID: <b%d@example.com>\r\n\r\n%s" % (i, i, i, i, body)
        )
    return out


async def drain(user: DovecotUser, batch_size: int) -> int:
    box = ImapMailbox(user.host, user.port, user.user, user.password, security="plain")
    await box.connect()
    try:
        count = 0
        async for batch in box.batches(batch_size):
            count += len(batch)
        return count
    finally:
        await box.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--chunks", default="10,25,50,100,500")
    p.add_argument("--batch-size", type=int, default=50)
    args = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="triage-bench-"))
    server = DovecotServer(root)
    server.start()
    try:
        user = DovecotUser(server, server.new_user())
        raws = corpus(args.messages)
        user.deliver_files(raws)
        asyncio.run(drain(user, args.batch_size))  # Dovecot indexes the new files once
        mb = sum(map(len, raws)) / 1e6
        print(f"{args.messages} messages, {mb:.1f} MB, batch_size={args.batch_size}")
        print(f"UIDs/FETCH  msgs/s (median of {args.runs})  runs")
        for chunk in (int(c) for c in args.chunks.split(",")):
            imap_mod.FETCH_CHUNK = chunk
            rates = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                n = asyncio.run(drain(user, args.batch_size))
                assert n == args.messages, n
                rates.append(n / (time.perf_counter() - t0))
            runs = " ".join(f"{r:,.0f}" for r in rates)
            print(f"{chunk:>10}  {statistics.median(rates):>12,.0f}  {runs}")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process: {rss:.0f} MB")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
