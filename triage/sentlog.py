"""Deliveries recorded in an append-only file beside a SQLite database, moved into the
outbox table in batches.

Why: the outbox records each server answer before the next mail is handed over, so a crash
costs at most one resend (triage.pipeline). On SQLite that record needs the database's only
write lock, which ingestion holds for every batch it stores; the sender waited for each of
those transactions in turn, and sent half as fast while a backlog was being read
(bench/results.md). Appending one line to a file takes no database lock and survives a
crash of the daemon as a committed SQLite transaction does (neither is fsync'd: the
database runs with synchronous=NORMAL).

How it stays correct:

- A delivered row stays ``sending`` in the database, under its claim's lease, until the log
  is applied; a lease still running is never claimed again, so a row is not re-sent while
  its delivery is only in the log.
- Every claim applies the log first, in its own transaction (``OutboxStore.claim``): so does
  any process that might take a row whose lease ran out, and at start-up.
- Applying is idempotent: an entry updates its row only while it is still ``sending`` under
  the same claim (the row's ``attempts``, which every claim counts up, says which claim:
  not the lease's end, which a slow restart leaves in the past without another claim
  having taken the row), and adds its event only then. A crash between the database
  commit and the removal of the applied snapshot applies it again, to no effect.
- Appends hold a shared ``flock`` on ``<log>.lock``; taking a snapshot (renaming the live
  file) holds it exclusively, for microseconds, so no append lands in a file already read.
  Snapshots of a crashed run are picked up by the next one.
- A torn line (a kill or a full disk inside ``write``) is skipped with a warning: that row
  is sent once more after its lease, as if the kill had come before the record. Each record
  also starts with a line end, so the next one, whoever writes it, begins a line of its
  own rather than being glued onto the fragment and lost with it.

Only deliveries are logged; failures, retries and dead letters are written to the database
directly (they are rare, and decide what happens next). PostgreSQL needs none of this: its
row locks let the sender and ingestion write at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

log = logging.getLogger(__name__)

_SNAPSHOT = ".applying-"


@dataclass(frozen=True)
class Delivery:
    outbox_id: int
    claimed_until: datetime  # the lease of the claim the delivery was made under
    at: datetime
    answer: str
    kind: str
    work_order_id: int | None
    attempt: int = 0  # the row's attempts after that claim: which claim it was


class SentLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    @classmethod
    def beside(cls, database: Path) -> SentLog:
        return cls(database.with_name(database.name + ".sent"))

    @contextlib.contextmanager
    def _locked(self, how: int) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)  # releases the lock

    def append(self, d: Delivery) -> None:
        line = b"\n" + json.dumps({
            "id": d.outbox_id, "until": d.claimed_until.isoformat(), "at": d.at.isoformat(),
            "answer": d.answer, "kind": d.kind, "wo": d.work_order_id, "attempt": d.attempt,
        }, separators=(",", ":")).encode() + b"\n"
        with self._locked(fcntl.LOCK_SH):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)

    def take(self) -> tuple[list[Delivery], list[Path]]:
        """Everything logged so far, and the snapshot files to ``release`` once it is in the
        database. The live file is renamed aside, so appends go on in a new one."""
        with self._locked(fcntl.LOCK_EX):
            if self.path.exists():
                self.path.rename(self.path.with_name(
                    f"{self.path.name}{_SNAPSHOT}{os.getpid()}-{os.urandom(4).hex()}"))
        snapshots = sorted(self.path.parent.glob(f"{glob.escape(self.path.name)}{_SNAPSHOT}*"))
        deliveries: list[Delivery] = []
        for snap in snapshots:
            deliveries += self._read(snap)
        return deliveries, snapshots

    def _read(self, snap: Path) -> list[Delivery]:
        out: list[Delivery] = []
        try:
            data = snap.read_bytes()
        except FileNotFoundError:  # applied and released by another process meanwhile
            return out
        lines = data.split(b"\n")
        if lines[-1]:
            log.warning("%s: a torn last line was skipped (its row is sent again)", snap)
        for raw in lines[:-1]:
            if not raw:
                continue
            try:
                e = json.loads(raw)
                out.append(Delivery(int(e["id"]), datetime.fromisoformat(e["until"]),
                                    datetime.fromisoformat(e["at"]), str(e["answer"]),
                                    str(e["kind"]), e["wo"], int(e["attempt"])))
            except (ValueError, KeyError, TypeError):
                log.warning("%s: an unreadable line was skipped", snap)
        return out

    @staticmethod
    def release(snapshots: list[Path]) -> None:
        for snap in snapshots:
            snap.unlink(missing_ok=True)
