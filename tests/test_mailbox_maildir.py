"""MaildirMailbox on real directories, and read by a real Dovecot after marking."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.dovecot import _chown_tree
from triage.mailbox import PermanentMailboxError
from triage.mailbox.maildir import MaildirMailbox, unique_name
from triage.messages import RawMessage


def message(n: int, body: bytes = b"hello\r\n") -> bytes:
    return b"From: c%d@example.com\r\nSubject: request %d\r\nMessage-ID: <m%d@x>\r\n\r\n%s" % (
        n,
        n,
        n,
        body,
    )


def deliver(
    root: Path, raw: bytes, name: str, mtime: float | None = None, sub: str = "new"
) -> Path:
    tmp = root / "tmp" / name
    tmp.write_bytes(raw)
    dest = root / sub / name
    os.rename(tmp, dest)
    if mtime is not None:
        os.utime(dest, (mtime, mtime))
    return dest


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    return root


@pytest.fixture
async def mb(maildir: Path) -> AsyncIterator[MaildirMailbox]:
    box = MaildirMailbox(maildir)
    await box.connect()
    yield box
    await box.close()


async def collect(box: MaildirMailbox, batch_size: int = 50) -> list[list[RawMessage]]:
    return [b async for b in box.batches(batch_size)]


def flat(batches: list[list[RawMessage]]) -> list[RawMessage]:
    return [m for b in batches for m in b]


def test_unique_name_drops_the_info_suffix() -> None:
    assert unique_name("1700000000.M1P2.host:2,RS") == "1700000000.M1P2.host"
    assert unique_name("1700000000.M1P2.host!2,S") == "1700000000.M1P2.host"
    assert unique_name("1700000000.M1P2.host") == "1700000000.M1P2.host"


async def test_name_and_uidvalidity(maildir: Path, mb: MaildirMailbox) -> None:
    assert mb.name == f"maildir://{maildir}"
    assert mb.uidvalidity == 0


async def test_not_a_maildir_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(PermanentMailboxError, match="not a Maildir"):
        await MaildirMailbox(tmp_path / "nowhere").connect()
    box = MaildirMailbox(tmp_path / "made", create=True)
    await box.connect()
    assert (tmp_path / "made" / "new").is_dir()


async def test_delivery_order_byte_exact(maildir: Path, mb: MaildirMailbox) -> None:
    every_byte = bytes(range(256))  # NUL, bare CR and LF included: files are not IMAP
    raws = [message(i, every_byte + b"\n\xe9t\xe9\r\n") for i in range(4)]
    # Names sort the other way round from delivery; mtime decides, name breaks ties.
    deliver(maildir, raws[0], "9.b.host", mtime=1_000)
    deliver(maildir, raws[1], "8.a.host:2,S", mtime=2_000, sub="cur")
    deliver(maildir, raws[2], "7.b.host", mtime=3_000)
    deliver(maildir, raws[3], "7.c.host", mtime=3_000)
    (maildir / "new" / ".hidden").write_bytes(b"not mail")
    got = flat(await collect(mb, batch_size=3))
    assert [m.data for m in got] == raws
    assert [m.uid for m in got] == ["9.b.host", "8.a.host", "7.b.host", "7.c.host"]
    assert {m.uidvalidity for m in got} == {0}
    assert [m.size for m in got] == [len(r) for r in raws]
    assert got[0].internal_date is not None and got[0].internal_date.timestamp() == 1_000


async def test_batch_sizes(maildir: Path, mb: MaildirMailbox) -> None:
    for i in range(23):
        deliver(maildir, message(i), f"{i:04d}.x.host", mtime=1_000 + i)
    batches = await collect(mb, batch_size=10)
    assert [len(b) for b in batches] == [10, 10, 3]
    assert [m.data for m in flat(batches)] == [message(i) for i in range(23)]


async def test_mark_done_moves_to_triaged_and_they_do_not_come_back(
    maildir: Path, mb: MaildirMailbox
) -> None:
    deliver(maildir, message(1), "1.a.host", mtime=1)
    deliver(maildir, message(2), "2.a.host:2,FS", mtime=2, sub="cur")
    deliver(maildir, message(3), "3.a.host", mtime=3)
    got = flat(await collect(mb))
    await mb.mark_done(got[:2])
    await mb.mark_done(got[:2])  # idempotent
    assert sorted(p.name for p in (maildir / ".Triaged" / "cur").iterdir()) == [
        "1.a.host:2,",
        "2.a.host:2,FS",  # flags a person set are kept
    ]
    assert (maildir / ".Triaged" / "maildirfolder").exists()
    again = MaildirMailbox(maildir)
    await again.connect()
    assert [m.uid for m in flat(await collect(again))] == ["3.a.host"]


async def test_mark_done_finds_a_message_a_reader_renamed(
    maildir: Path, mb: MaildirMailbox
) -> None:
    deliver(maildir, message(1), "1.a.host", mtime=1)
    (got,) = flat(await collect(mb))
    # A mail client reads it meanwhile: new/ -> cur/ with the Seen flag.
    os.rename(maildir / "new" / "1.a.host", maildir / "cur" / "1.a.host:2,S")
    await mb.mark_done([got])
    assert [p.name for p in (maildir / ".Triaged" / "cur").iterdir()] == ["1.a.host:2,S"]


async def test_mark_done_refuses_foreign_messages(mb: MaildirMailbox) -> None:
    with pytest.raises(ValueError, match="is not"):
        await mb.mark_done([RawMessage("maildir:///elsewhere", 0, "x", 1, b"x")])


async def test_oversize_reads_only_the_head(maildir: Path) -> None:
    raw = message(1, (b"A" * 998 + b"\r\n") * 300)  # ~300 KB
    deliver(maildir, raw, "1.big.host", mtime=1)
    deliver(maildir, message(2), "2.small.host", mtime=2)
    box = MaildirMailbox(maildir, max_size=100 * 1024)
    got = flat(await collect(box))
    assert [m.oversize for m in got] == [True, False]
    assert got[0].size == len(raw)
    assert got[0].head == raw[: raw.index(b"\r\n\r\n") + 4]
    assert got[1].data == message(2)


async def test_oversize_file_of_a_terabyte_is_never_read_whole(maildir: Path) -> None:
    """A sparse 1 TiB file: reading it whole would fail with MemoryError at once."""
    path = maildir / "new" / "1.huge.host"
    with open(path, "wb") as fh:
        fh.write(message(1, b"start\r\n"))
        fh.truncate(2**40)
    box = MaildirMailbox(maildir)
    (got,) = flat(await collect(box))
    assert got.oversize and got.size == 2**40
    assert got.head == message(1, b"")


async def test_wait_for_new_times_out(mb: MaildirMailbox) -> None:
    assert await mb.wait_for_new(0.2) is False


async def test_wait_for_new_sees_a_delivery(maildir: Path, mb: MaildirMailbox) -> None:
    deliver(maildir, message(1), "1.a.host", mtime=1)
    got = flat(await collect(mb))
    # Handed out but not yet marked: not "new".
    assert await mb.wait_for_new(0.1) is False
    waiter = asyncio.create_task(mb.wait_for_new(30))
    await asyncio.sleep(0.05)
    deliver(maildir, message(2), "2.a.host")
    assert await asyncio.wait_for(waiter, 10) is True
    await mb.mark_done(got)
    assert [m.uid for m in flat(await collect(mb))] == ["2.a.host"]


async def test_wait_for_new_is_cancellable(mb: MaildirMailbox) -> None:
    waiter = asyncio.create_task(mb.wait_for_new(60))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


@pytest.mark.imap
async def test_dovecot_shows_triaged_folder_after_marking(dovecot) -> None:
    """The marking a person sees: the Dovecot serving this Maildir lists folder Triaged."""
    dovecot.append(message(1))
    dovecot.append(message(2))
    box = MaildirMailbox(dovecot.maildir)
    await box.connect()
    got = flat(await collect(box))
    # Dovecot stores lines with LF only (IMAP gives CRLF back): the files are what they are.
    assert [m.data for m in got] == [message(i).replace(b"\r\n", b"\n") for i in (1, 2)]
    await box.mark_done(got[:1])
    # In production the service runs as the mailbox owner; here, hand the new folder over.
    _chown_tree(dovecot.maildir, dovecot.server.uid, dovecot.server.gid)
    with dovecot.imap() as conn:
        typ, data = conn.select("Triaged", readonly=True)
        assert (typ, data) == ("OK", [b"1"])
        typ, fetched = conn.fetch("1", "(BODY.PEEK[])")
        assert fetched[0][1] == message(1)
        typ, data = conn.select("INBOX", readonly=True)
        assert (typ, data) == ("OK", [b"1"])
