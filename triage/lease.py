"""One poller per mailbox when several ``triage run`` processes share one PostgreSQL.

The outbox and the SLA watch are already safe to run everywhere (SKIP LOCKED claims, a
unique key per notice); polling is not: two pollers fetch the same UIDs. So only the holder
of the mailbox's lease polls. On PostgreSQL the lease is a session-level advisory lock held
on a connection of its own: when the holder dies, its connection closes and PostgreSQL
frees the lock at once, so a standby takes over on its next try.

On SQLite the lease is a no-op that is always held: one process per SQLite file is the
documented model (SQLite has no server that would notice a dead holder), and a second
process on the same file is an operator error this module does not try to catch.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Protocol

from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)


def lease_key(name: str) -> int:
    """A stable signed 64-bit key for ``name``: the first 8 bytes of its SHA-256 (Python's
    ``hash`` changes per process, so it would not do)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class Lease(Protocol):
    @property
    def held(self) -> bool: ...

    async def acquire(self) -> bool: ...

    async def check(self) -> bool: ...

    async def release(self) -> None: ...


class NoopLease:
    """SQLite: the only process on its file always holds the lease."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def held(self) -> bool:
        return True

    async def acquire(self) -> bool:
        return True

    async def check(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class MailboxLease:
    """A PostgreSQL session-level advisory lock on a dedicated, kept-open connection.

    Each call runs its SQL in a worker thread (the engine is synchronous); calls are
    serialised by an asyncio lock, so the connection is never used by two threads at once.
    """

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.key = lease_key(name)
        self._conn: Connection | None = None
        self._held = False
        self._lock = asyncio.Lock()

    @property
    def held(self) -> bool:
        return self._held

    async def acquire(self) -> bool:
        """Try once, without waiting for the current holder; True when this process holds it."""
        async with self._lock:
            if self._held:
                return True
            try:
                # _try_lock records the answer itself, in the worker thread: if this task is
                # cancelled while the thread runs, a granted lock is still known to be held
                # (and released at shutdown) instead of sitting unseen on the connection.
                await asyncio.to_thread(self._try_lock)
            except Exception as e:
                log.warning("mailbox lease %s: could not ask the database (%s)", self.name, e)
                self._drop()
                self._held = False
            return self._held

    async def check(self) -> bool:
        """Before each poll: is the lease's connection still alive? If not, the lock went
        with it (another process may hold it now): the lease is lost."""
        async with self._lock:
            if not self._held:
                return False
            try:
                await asyncio.to_thread(self._ping)
            except Exception as e:
                log.warning("mailbox lease %s lost: its connection failed (%s)", self.name, e)
                self._held = False
                self._drop()
            return self._held

    async def release(self) -> None:
        """Unlock and close the connection (closing alone would free the lock too)."""
        async with self._lock:
            await asyncio.to_thread(self._release)

    # ---- in the worker thread ------------------------------------------------------------
    def _try_lock(self) -> bool:
        if self._conn is None or self._conn.closed:
            # AUTOCOMMIT: the connection must not sit "idle in transaction" while it waits.
            self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        got = bool(self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                      {"k": self.key}).scalar())
        self._held = got
        if got:
            log.info("mailbox lease %s acquired (key %d); polling", self.name, self.key)
        return got

    def _ping(self) -> None:
        assert self._conn is not None
        self._conn.execute(text("SELECT 1"))

    def _release(self) -> None:
        if self._conn is not None and self._held:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            except Exception as e:  # the connection is going anyway, and the lock with it
                log.warning("mailbox lease %s: unlock failed (%s)", self.name, e)
        self._held = False
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                # A connection that may still hold the lock must not go back to the pool.
                self._conn.invalidate()
                self._conn.close()
            except Exception:
                log.debug("closing the lease connection failed", exc_info=True)
            self._conn = None


def make_lease(engine: Engine, name: str) -> Lease:
    """The lease for ``name`` on this engine's backend (see the module docstring)."""
    if engine.dialect.name == "postgresql":
        return MailboxLease(engine, name)
    return NoopLease(name)


def mailbox_lease_name(scheme: str, host: str, port: int, user: str, folder: str,
                       path: object | None) -> str:
    """The mailbox's identity (never its password): two processes polling the same folder
    get the same name, different mailboxes sharing one database do not."""
    if scheme == "maildir":
        return f"triage-mailbox:maildir:{path}"
    return f"triage-mailbox:imap:{user}@{host.lower()}:{port}/{folder}"


def lock_for_transaction(conn: Connection, name: str) -> None:
    """Hold ``name`` until ``conn``'s transaction ends, waiting for another holder.

    For short critical sections that several processes must not run at once (an OAuth2
    refresh-token rotation): PostgreSQL's transaction-level advisory lock, freed by the
    commit or rollback, or by the connection dying. On SQLite the write transaction
    (BEGIN IMMEDIATE, triage.storage.engine) already excludes every other writer."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lease_key(name)})
