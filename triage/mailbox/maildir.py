"""Maildir mailbox: the embedded default (``triage demo``) and a local-delivery option.

Marking: a message that is safely stored is *moved* into the Maildir++ subfolder
``.Triaged`` (into its ``cur/``, keeping any flags the file had). Every IMAP server that
serves a Maildir (Dovecot, Courier) shows that subfolder as a folder named "Triaged", so a
person with a mail client sees plainly which mail the service has taken; it matches the
IMAP ``mark="move:Triaged"`` option. Flag letters were not used: the only standard ones
(S, R, F, T, D, P) already mean something to people, and keyword letters need a
server-specific map (Dovecot's ``dovecot-keywords``).

An oversize file is never read whole: its first 64 KB are read and ``head`` is the header
block found there (the whole 64 KB when the headers run longer), as IMAP's BODY[HEADER].

A message's ``uid`` is its Maildir unique name (the file name without ``:2,flags``), stable
when a reader renames it to set flags; ``uidvalidity`` is always 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from triage.mailbox import PermanentMailboxError, TransientMailboxError
from triage.messages import RawMessage

log = logging.getLogger(__name__)

HEAD_LIMIT = 64 * 1024
TRIAGED = ".Triaged"
POLL_INTERVAL = 1.0


@dataclass(frozen=True)
class _Entry:
    uid: str
    path: Path
    mtime_ns: int
    size: int


def unique_name(filename: str) -> str:
    """``1700000000.M1P2.host:2,RS`` -> ``1700000000.M1P2.host`` (``!`` is the Windows
    variant of the ``:`` separator)."""
    for sep in (":2,", "!2,"):
        if sep in filename:
            return filename.split(sep, 1)[0]
    return filename


def _info(filename: str) -> str:
    for sep in (":2,", "!2,"):
        if sep in filename:
            return filename.split(sep, 1)[1]
    return ""


def _head(data: bytes) -> bytes:
    """The header block when it ends within the slice, else the whole slice."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = data.find(sep)
        if end >= 0:
            return data[: end + len(sep)]
    return data


class MaildirMailbox:
    """One Maildir (its ``new/`` and ``cur/``). File work runs in a thread, a batch at a time."""

    def __init__(self, path: Path, max_size: int = 25 * 1024 * 1024, create: bool = False) -> None:
        self.path = Path(path)
        self.max_size = max_size
        self.create = create
        self.name = f"maildir://{self.path}"
        self._handed_out: set[str] = set()

    def __repr__(self) -> str:
        return f"<MaildirMailbox {self.path}>"

    @property
    def uidvalidity(self) -> int:
        return 0

    async def connect(self) -> None:
        """Check (or, with ``create=True``, make) the Maildir; there is no session to open."""
        await asyncio.to_thread(self._check)

    def _check(self) -> None:
        if self.create:
            for sub in ("cur", "new", "tmp"):
                (self.path / sub).mkdir(parents=True, exist_ok=True)
        missing = [s for s in ("cur", "new", "tmp") if not (self.path / s).is_dir()]
        if missing:
            raise PermanentMailboxError(f"{self.name}: not a Maildir (no {', '.join(missing)}/)")

    async def close(self) -> None:
        self._handed_out.clear()

    async def count_waiting(self) -> int:
        """Messages the next poll would fetch, for ``triage check``."""
        return len(await asyncio.to_thread(self._scan))

    # -- reading ----------------------------------------------------------------------

    def _scan(self) -> list[_Entry]:
        """Waiting messages in delivery order: (mtime, name), like a mail client's default."""
        entries: list[_Entry] = []
        for sub in ("new", "cur"):
            try:
                items = list(os.scandir(self.path / sub))
            except FileNotFoundError as exc:
                raise PermanentMailboxError(f"{self.name}: {sub}/ vanished") from exc
            except PermissionError as exc:
                raise PermanentMailboxError(f"{self.name}: {exc}") from exc
            except OSError as exc:
                raise TransientMailboxError(f"{self.name}: {exc}") from exc
            for item in items:
                if item.name.startswith("."):
                    continue
                try:
                    st = item.stat()
                except FileNotFoundError:
                    continue  # moved by someone else while we looked
                if not item.is_file():
                    continue
                entries.append(
                    _Entry(unique_name(item.name), Path(item.path), st.st_mtime_ns, st.st_size)
                )
        entries.sort(key=lambda e: (e.mtime_ns, e.uid))
        return entries

    def _read(self, entries: Sequence[_Entry]) -> list[RawMessage]:
        out: list[RawMessage] = []
        for e in entries:
            try:
                with open(e.path, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    oversize = size > self.max_size
                    data = fh.read(HEAD_LIMIT if oversize else size + 1)
            except FileNotFoundError:
                continue  # marked or deleted meanwhile; a rescan finds it if it moved in cur/
            except PermissionError as exc:
                raise PermanentMailboxError(f"{self.name}: {exc}") from exc
            except OSError as exc:
                raise TransientMailboxError(f"{self.name}: {exc}") from exc
            if oversize:
                log.warning(
                    "%s: %s is %d bytes (> %d): headers only", self.name, e.uid, size, self.max_size
                )
            out.append(
                RawMessage(
                    mailbox=self.name,
                    uidvalidity=0,
                    uid=e.uid,
                    size=size if oversize else len(data),
                    data=None if oversize else data,
                    head=_head(data) if oversize else b"",
                    internal_date=datetime.fromtimestamp(e.mtime_ns / 1e9, UTC),
                )
            )
        return out

    async def batches(self, batch_size: int = 50) -> AsyncGenerator[list[RawMessage], None]:
        """Waiting messages in delivery order; only one batch of contents is in memory."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        entries = await asyncio.to_thread(self._scan)
        for start in range(0, len(entries), batch_size):
            batch = await asyncio.to_thread(self._read, entries[start : start + batch_size])
            self._handed_out.update(m.uid for m in batch)
            if batch:
                yield batch

    # -- marking ----------------------------------------------------------------------

    async def mark_done(self, messages: Sequence[RawMessage]) -> None:
        """Move the messages into ``.Triaged/cur/``. Idempotent: already moved ones pass."""
        for msg in messages:
            if msg.mailbox != self.name:
                raise ValueError(f"{msg.mailbox} is not {self.name}")
        if messages:
            await asyncio.to_thread(self._move, [m.uid for m in messages])

    def _move(self, uids: list[str]) -> None:
        target = self.path / TRIAGED
        try:
            for sub in ("cur", "new", "tmp"):
                (target / sub).mkdir(parents=True, exist_ok=True)
            (target / "maildirfolder").touch()  # Maildir++: "this is a subfolder"
            wanted = set(uids)
            found: dict[str, Path] = {}
            for sub in ("new", "cur"):
                for item in os.scandir(self.path / sub):
                    uid = unique_name(item.name)
                    if uid in wanted:
                        found[uid] = Path(item.path)
            for uid in uids:
                src = found.get(uid)
                if src is None:
                    continue  # already moved (idempotent) or deleted by a person
                os.rename(src, target / "cur" / f"{uid}:2,{_info(src.name)}")
                self._handed_out.discard(uid)
            # The renames must survive a power cut before the caller forgets the batch.
            for d in (target / "cur", self.path / "new", self.path / "cur"):
                fd = os.open(d, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except PermissionError as exc:
            raise PermanentMailboxError(f"{self.name}: {exc}") from exc
        except OSError as exc:
            raise TransientMailboxError(f"{self.name}: {exc}") from exc

    # -- waiting ----------------------------------------------------------------------

    async def wait_for_new(self, timeout: float) -> bool:
        """Poll every second for a message not handed out yet; True when one is there."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            entries = await asyncio.to_thread(self._scan)
            present = {e.uid for e in entries}
            self._handed_out &= present  # forget what left the folder
            if present - self._handed_out:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(POLL_INTERVAL, left))
