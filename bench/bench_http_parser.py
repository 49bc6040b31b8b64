"""The server's CPU per request with uvicorn's two HTTP/1.1 parsers, h11 and httptools.

    python bench/bench_http_parser.py [--blocks 20] [--block 1000] [--work-orders 2000]

Two servers at once, the same app on the same SQLite database (``bench_login_flood.py
--serve``, the daemon's ``triage.web.ops.serve``), one parsing with h11 and one with
httptools. Each kind of request goes to them in alternating blocks (``--block`` requests,
one keep-alive client each, the order swapped every block), and each block's server CPU
(``/proc``) is divided by its requests. The machine is shared: its load changes the CPU a
request costs from minute to minute, but two blocks next to each other see about the same
machine, so the ratio of the paired blocks is the figure to read; the table gives the
medians over ``--blocks`` pairs.

Kinds: ``POST /login`` refused by the throttle (the login flood's answer; the client's bucket
is emptied first, and a refill now and then lets one through: the answers column shows it),
``GET /healthz``, and ``GET /queue`` signed in (a tenth as many).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _servers import machine, web_server
from bench_login_flood import cpu_seconds, signed_in_and_refused
from bench_web import database, seed

from triage.sla import load_policy
from triage.storage.engine import make_engine
from triage.storage.migrate import upgrade

PARSERS = ("h11", "httptools")
FLOOD_SCRIPT = str(Path(__file__).resolve().parent / "bench_login_flood.py")


def kinds(base: str) -> dict[str, tuple[int, Callable[[], httpx.Response]]]:
    """Per kind: the share of a block and one request, on clients made here for ``base``."""
    staff, other, wrong = signed_in_and_refused(base)
    return {"POST /login refused by the throttle": (1, lambda: other.post("/login", data=wrong)),
            "GET /healthz": (1, lambda: other.get("/healthz")),
            "GET /queue (signed in)": (10, lambda: staff.get("/queue"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--block", type=int, default=1000,
                    help="requests per block (CPU time comes in 10 ms ticks: keep it large)")
    ap.add_argument("--work-orders", type=int, default=2000)
    args = ap.parse_args()
    print(machine(), flush=True)
    with database("sqlite", None) as (url, _), ExitStack() as stack:
        engine = make_engine(url)
        upgrade(engine)
        seed(engine, load_policy(), args.work_orders, datetime.now(UTC), random.Random(3))
        engine.dispose()
        servers = {p: stack.enter_context(web_server(FLOOD_SCRIPT, url, ready_path="/healthz",
                                                     args=("--http", p)))
                   for p in PARSERS}
        calls = {p: kinds(base) for p, (base, _) in servers.items()}
        ms: dict[tuple[str, str], list[float]] = {}
        answers: dict[tuple[str, str], Counter[int]] = {}
        for block in range(args.blocks):
            order = PARSERS if block % 2 == 0 else PARSERS[::-1]
            for what in calls[PARSERS[0]]:
                for p in order:
                    share, call = calls[p][what]
                    count = max(1, args.block // share)
                    pid = servers[p][1]
                    got = answers.setdefault((p, what), Counter())
                    before = cpu_seconds(pid)
                    for _ in range(count):
                        got[call().status_code] += 1
                    ms.setdefault((p, what), []).append(
                        (cpu_seconds(pid) - before) / count * 1000)
        print(f"\n{args.blocks} pairs of blocks of {args.block} requests (a tenth for the queue)")
        print("| request | h11 ms | httptools ms | httptools / h11 (median of pairs) "
              "| answers (h11; httptools) |")
        print("|---|---:|---:|---:|---|")
        for what in calls[PARSERS[0]]:
            h11, fast = ms[("h11", what)], ms[("httptools", what)]
            ratio = statistics.median(f / h for f, h in zip(fast, h11, strict=True) if h)
            print(f"| {what} | {statistics.median(h11):.2f} | {statistics.median(fast):.2f} "
                  f"| {ratio:.2f} | {dict(answers[('h11', what)])}; "
                  f"{dict(answers[('httptools', what)])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
