"""Peak resident memory of a process tree, sampled from /proc.

``/usr/bin/time -v`` reports the largest single process, not the sum: with the ingest
worker (triage.ingest) the daemon is two processes, and the memory a machine must have
is the sum of both at the same instant.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _kids(pid: int) -> list[int]:
    """Children of ``pid`` from /proc/PID/task/TID/children: a few reads, not a walk of all
    /proc (the sampler shares the benchmark's interpreter with the SMTP sink)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system seconds so far (fields 14 and 15 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    f = stat[stat.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / _TICK


def _pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (the interpreter, libraries) divided among the
    processes that map them, so the sum over a tree is what the machine really holds."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return 0


def _rss_kb(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0


class TreeRss:
    """Samples every ``interval`` seconds until stopped: peak of the sum, and each pid's."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root, self.interval = root, interval
        self.peak_sum_kb = 0
        self.peak_pss_sum_kb = 0
        self.peak_kb: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.cpu_s: dict[int, float] = {}  # last seen: a process's CPU time until it exits
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[int]:
        out, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(_kids(pid))
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            total = pss = 0
            for pid in self._tree():
                kb = _rss_kb(pid)
                pss += _pss_kb(pid)
                if pid not in self.names:
                    try:
                        self.names[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(
                            b"\0", b" ").decode(errors="replace")[:120]
                    except OSError:
                        self.names[pid] = "?"
                total += kb
                self.cpu_s[pid] = max(self.cpu_s.get(pid, 0.0), _cpu_s(pid))
                self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), kb)
            self.peak_sum_kb = max(self.peak_sum_kb, total)
            self.peak_pss_sum_kb = max(self.peak_pss_sum_kb, pss)

    def _python_pids(self) -> list[int]:
        """The Python processes in the tree (the daemon and its worker), largest peak first."""
        return sorted((pid for pid in self.peak_kb if "python" in self.names.get(pid, "")
                       or "triage" in self.names.get(pid, "")),
                      key=lambda pid: -self.peak_kb[pid])

    def python_peaks_mb(self) -> list[float]:
        """Peak of each Python process in the tree, largest first."""
        return [self.peak_kb[pid] / 1024 for pid in self._python_pids()]

    def python_cpu(self) -> list[float]:
        """CPU seconds of each Python process in the tree, in ``python_peaks_mb`` order
        (measured up to the last sample, ``interval`` before it exited)."""
        return [self.cpu_s.get(pid, 0.0) for pid in self._python_pids()]

    @property
    def peak_sum_mb(self) -> float:
        return self.peak_sum_kb / 1024

    @property
    def peak_pss_sum_mb(self) -> float:
        return self.peak_pss_sum_kb / 1024
