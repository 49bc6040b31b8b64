"""What argon2 checks at each CPU priority do to a page's latency on a contended core.

    python bench/bench_argon2_nice.py [--blocks 24] [--page-loops 1200000]

One process on CPU 0 (a server pinned as ``bench_login_flood.py --pin`` pins it): the main
thread computes a "page" (a pure-Python loop holding the GIL, tens of ms) every 0.2 s, while
a thread checks a wrong password with the daemon's argon2 parameters twice a second, as the
login throttle's overall bucket lets a flood do (3 a second at most). The blocks of 10 s
alternate: no checks, checks at nice 0, 10 and 19 (the thread's own nice value, which the
lanes argon2 starts inherit), so each setting sees about the same machine. Reported per
setting: the page's wall time (median, p90, p99, max) and the check's. Run as root: going back
to a lower nice value needs it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from triage.desk import users

SETTINGS = (None, 0, 10, 19)  # None: no checks


def pct(xs: list[float], p: float) -> float:
    ordered = sorted(xs) or [float("nan")]
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=24, help="10 s blocks, settings in turn")
    ap.add_argument("--page-loops", type=int, default=1_200_000)
    args = ap.parse_args()
    os.sched_setaffinity(0, {0})
    hashed = users._hasher.hash("the right one")
    setting: list[int | None] = [None]
    checks: dict[int, list[float]] = {n: [] for n in SETTINGS if n is not None}
    done = threading.Event()

    def checker() -> None:
        me, nice = threading.get_native_id(), 0
        while not done.is_set():
            wanted = setting[0]
            if wanted is None:
                time.sleep(0.05)
                continue
            if wanted != nice:
                os.setpriority(os.PRIO_PROCESS, me, wanted)  # root: may go back down
                nice = wanted
            started = time.perf_counter()
            with contextlib.suppress(Exception):
                users._hasher.verify(hashed, "a wrong guess")
            took = time.perf_counter() - started
            if setting[0] == wanted:
                checks[wanted].append(took * 1000)
            time.sleep(max(0.0, 0.5 - took))

    def page() -> int:
        x = 0
        for i in range(args.page_loops):
            x += i * i
        return x

    started = time.perf_counter()
    page()
    alone = (time.perf_counter() - started) * 1000
    threading.Thread(target=checker, daemon=True).start()
    pages: dict[int | None, list[float]] = {n: [] for n in SETTINGS}
    for block in range(args.blocks):
        setting[0] = SETTINGS[block % len(SETTINGS)]
        end = time.perf_counter() + 10
        while time.perf_counter() < end:
            started = time.perf_counter()
            page()
            pages[setting[0]].append((time.perf_counter() - started) * 1000)
            time.sleep(0.2)
    done.set()
    print(f"page alone {alone:.1f} ms; load {os.getloadavg()[0]:.1f}")
    print("| argon2 checks | pages | page median ms | p90 | p99 | max | check median ms | max |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for n, xs in pages.items():
        c = checks.get(n, []) if n is not None else []
        print(f"| {'none' if n is None else f'nice {n}'} | {len(xs)} | {pct(xs, 50):.1f} "
              f"| {pct(xs, 90):.1f} | {pct(xs, 99):.1f} | {max(xs, default=float('nan')):.1f} "
              f"| {pct(c, 50):.0f} | {max(c, default=float('nan')):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
