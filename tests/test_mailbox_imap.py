"""ImapMailbox against a real Dovecot (tests/dovecot.py); stdlib imaplib is the witness."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from triage.backoff import Backoff
from triage.mailbox import Mailbox, PermanentMailboxError, TransientMailboxError
from triage.mailbox.imap import (
    KEYWORD,
    ImapMailbox,
    is_loopback,
    parse_internaldate,
    quote,
    uid_set,
)
from triage.messages import RawMessage

pytestmark = pytest.mark.imap

# Every byte but NUL, CR and LF, then an 8-bit line: what BODY[] must give back exactly.
BINARY_LINE = bytes(b for b in range(1, 256) if b not in (10, 13))


def message(n: int, body: bytes = b"hello\r\n", extra: bytes = b"") -> bytes:
    return (
        b"From: client%d@example.com\r\nTo: helpdesk@itx.net\r\nSubject: request %d\r\n"
        b"Message-ID: <m%d@example.com>\r\n%s\r\n%s" % (n, n, n, extra, body)
    )


def mailbox(dc, **kw) -> ImapMailbox:
    kw.setdefault("security", "plain")
    return ImapMailbox(dc.host, dc.port, dc.user, dc.password, **kw)


@pytest.fixture
async def mb(dovecot) -> AsyncIterator[ImapMailbox]:
    box = mailbox(dovecot)
    await box.connect()
    yield box
    await box.close()


async def collect(box: ImapMailbox, batch_size: int = 50) -> list[list[RawMessage]]:
    return [batch async for batch in box.batches(batch_size)]


def flat(batches: list[list[RawMessage]]) -> list[RawMessage]:
    return [m for b in batches for m in b]


def flags_of(dc, uid: str, folder: str = "INBOX") -> str:
    with dc.imap() as conn:
        conn.select(folder, readonly=True)
        typ, data = conn.uid("FETCH", uid, "(FLAGS)")
        assert typ == "OK", data
        return data[0].decode()


# -- pure helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.9.8.7", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("10.0.0.1", False),
        ("192.0.2.1", False),
        ("imap.example.com", False),
        ("localhost.example.com", False),
        ("::ffff:8.8.8.8", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_uid_set_compacts_runs() -> None:
    assert uid_set([7, 1, 2, 3, 9, 10, 3]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"


def test_parse_internaldate() -> None:
    got = parse_internaldate(" 6-Nov-2026 21:05:09 -0500")
    assert got == datetime(2026, 11, 7, 2, 5, 9, tzinfo=UTC)
    assert got is not None and got.utcoffset() == timedelta(hours=-5)
    assert parse_internaldate("junk") is None


def test_quote_escapes_and_refuses_control_characters() -> None:
    assert quote('a "b" \\c') == '"a \\"b\\" \\\\c"'
    with pytest.raises(PermanentMailboxError):
        quote("Triaged\r\nA1 LOGOUT")


def test_name_never_holds_the_password() -> None:
    box = ImapMailbox("imap.example.com", 993, "helpdesk", "hunter2")
    assert box.name == "imap://helpdesk@imap.example.com:993/INBOX"
    assert "hunter2" not in repr(box)
    typed: Mailbox = box  # mypy checks the Protocol; here: the attributes exist
    assert typed.uidvalidity == 0


def test_bad_mark_is_refused() -> None:
    with pytest.raises(PermanentMailboxError):
        ImapMailbox("localhost", 143, "u", "p", mark="delete")


# -- security ----------------------------------------------------------------------------


async def test_plain_to_a_non_loopback_host_is_refused_before_connecting() -> None:
    # 192.0.2.0/24 is TEST-NET-1: nothing answers there, so only the early refusal is fast.
    box = ImapMailbox("192.0.2.1", 143, "u", "p", security="plain", timeout=30)
    with pytest.raises(PermanentMailboxError, match="clear-text"):
        await asyncio.wait_for(box.connect(), 5)


async def test_wrong_password_is_permanent(dovecot) -> None:
    box = ImapMailbox(dovecot.host, dovecot.port, dovecot.user, "wrong", security="plain")
    with pytest.raises(PermanentMailboxError, match="login refused"):
        await box.connect()
    assert not box.connected


async def test_missing_folder_is_permanent(dovecot) -> None:
    box = mailbox(dovecot, folder="NoSuchFolder")
    with pytest.raises(PermanentMailboxError, match="cannot select"):
        await box.connect()


async def test_connection_refused_is_transient(dovecot) -> None:
    dovecot.stop()
    box = mailbox(dovecot, timeout=5)
    with pytest.raises(TransientMailboxError):
        await box.connect()


async def test_implicit_tls_with_trusted_certificate(dovecot) -> None:
    dovecot.append(message(1))
    box = ImapMailbox(
        dovecot.host,
        dovecot.tls_port,
        dovecot.user,
        dovecot.password,
        security="tls",
        ssl_context=dovecot.ssl_context(),
    )
    await box.connect()
    try:
        assert [m.data for m in flat(await collect(box))] == [message(1)]
    finally:
        await box.close()


async def test_implicit_tls_with_untrusted_certificate_is_permanent(dovecot) -> None:
    box = ImapMailbox(dovecot.host, dovecot.tls_port, dovecot.user, dovecot.password)
    with pytest.raises(PermanentMailboxError, match="certificate"):
        await box.connect()


async def test_starttls_upgrades_before_login(dovecot) -> None:
    dovecot.append(message(1))
    box = mailbox(dovecot, security="starttls", ssl_context=dovecot.ssl_context())
    await box.connect()
    try:
        assert box._client is not None
        assert box._client.protocol.transport.get_extra_info("ssl_object") is not None
        assert [m.data for m in flat(await collect(box))] == [message(1)]
    finally:
        await box.close()


async def test_starttls_missing_never_falls_back_to_plaintext() -> None:
    """A server that does not offer STARTTLS must never see a LOGIN."""
    seen: list[bytes] = []
    finished = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"* OK IMAP4rev1 ready\r\n")
            while line := await reader.readline():
                seen.append(line)
                tag = line.split(b" ", 1)[0]
                if b"CAPABILITY" in line.upper():
                    writer.write(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n")
                else:
                    writer.write(tag + b" OK whatever\r\n")
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            finished.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        box = ImapMailbox("127.0.0.1", port, "u", "secret-password", security="starttls")
        with pytest.raises(PermanentMailboxError, match="STARTTLS"):
            await box.connect()
        await asyncio.wait_for(finished.wait(), 10)  # the client hung up
    finally:
        server.close()
        await server.wait_closed()
    assert seen, "the client never talked to the server"
    assert not any(b"LOGIN" in line.upper() or b"secret-password" in line for line in seen)


# -- fetching ----------------------------------------------------------------------------


async def test_batches_in_uid_order_byte_exact_and_unseen(dovecot, mb: ImapMailbox) -> None:
    raws = [
        message(1, b"caf\xc3\xa9 au lait\r\n"),  # UTF-8 without a declared charset
        message(
            2, b"na\xefve latin-1 \xe9\xe8\r\n", b"Content-Type: text/plain; charset=latin1\r\n"
        ),
        message(3, BINARY_LINE + b"\r\n" + BINARY_LINE[::-1] + b"\r\n"),
        message(4, b"(unbalanced ( parentheses and {5}\r\n literal-like text\r\n"),
    ]
    when = datetime(2026, 1, 5, 9, 30, tzinfo=timezone(timedelta(hours=-5)))
    for raw in raws:
        dovecot.append(raw, when=when)
    got = flat(await collect(mb, batch_size=3))
    assert [m.data for m in got] == raws
    assert [int(m.uid) for m in got] == sorted(int(m.uid) for m in got)
    assert all(m.uid.isdigit() for m in got)
    assert {m.uidvalidity for m in got} == {mb.uidvalidity} == {dovecot.uidvalidity()}
    assert {m.mailbox for m in got} == {mb.name}
    assert [m.size for m in got] == [len(r) for r in raws]
    assert all(m.internal_date == when for m in got)
    assert all(m.head == b"" and not m.oversize for m in got)
    for m in got:
        assert "\\Seen" not in flags_of(dovecot, m.uid)


async def test_nul_bytes_come_back_as_0x80(dovecot, mb: ImapMailbox) -> None:
    """Dovecot replaces NUL with 0x80 in BODY[] (IMAP text may not hold NUL): documented."""
    dovecot.deliver_files([message(1, b"a\x00b\r\n")])
    (got,) = flat(await collect(mb))
    assert got.data == message(1, b"a\x80b\r\n")


async def test_batch_sizes_and_delivery_order(dovecot, mb: ImapMailbox) -> None:
    raws = [message(i) for i in range(120)]
    dovecot.deliver_files(raws)
    batches = await collect(mb, batch_size=50)
    assert [len(b) for b in batches] == [50, 50, 20]
    assert [m.data for m in flat(batches)] == raws


async def test_batches_are_cut_by_bytes_too(dovecot) -> None:
    raws = [message(i, b"x" * 10_000 + b"\r\n") for i in range(10)]
    dovecot.deliver_files(raws)
    box = mailbox(dovecot, max_batch_bytes=35_000)
    await box.connect()
    try:
        batches = await collect(box, batch_size=50)
    finally:
        await box.close()
    assert [m.data for m in flat(batches)] == raws
    assert all(sum(len(m.data or b"") for m in b) < 35_000 + 10_100 for b in batches)
    assert len(batches) >= 3


async def test_empty_folder_yields_nothing(mb: ImapMailbox) -> None:
    assert await collect(mb) == []


async def test_oversize_message_comes_back_with_headers_only(dovecot) -> None:
    big = message(2, (b"A" * 998 + b"\r\n") * 300)  # ~300 KB
    dovecot.append(message(1))
    dovecot.append(big)
    dovecot.append(message(3))
    box = mailbox(dovecot, max_size=100 * 1024)
    await box.connect()
    try:
        got = flat(await collect(box))
    finally:
        await box.close()
    assert [m.oversize for m in got] == [False, True, False]
    assert got[0].data == message(1) and got[2].data == message(3)
    over = got[1]
    assert over.data is None
    assert over.size == len(big)
    header_end = big.index(b"\r\n\r\n") + 4
    assert over.head == big[:header_end]
    assert b"Message-ID: <m2@example.com>" in over.head
    assert "\\Seen" not in flags_of(dovecot, over.uid)


@pytest.mark.slow
async def test_real_30_mb_message_is_not_downloaded(dovecot) -> None:
    line = b"B" * 76 + b"\r\n"
    big = message(1, line * (30 * 1024 * 1024 // len(line)))
    assert len(big) > 30_000_000
    dovecot.append(big)
    dovecot.append(message(2))
    box = mailbox(dovecot)  # default max_size 25 MiB
    await box.connect()
    try:
        batches = await collect(box)
        got = flat(batches)
        assert [m.oversize for m in got] == [True, False]
        assert got[0].size == len(big)
        assert got[0].head == big[: big.index(b"\r\n\r\n") + 4]
        await box.mark_done(got)
        await box.connect()
        assert await collect(box) == []
    finally:
        await box.close()


async def test_huge_header_is_capped_at_64_kb(dovecot) -> None:
    headers = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"h" * 60) for i in range(1500))  # ~110 KB
    raw = message(1, b"body\r\n" * 10, headers)
    dovecot.append(raw)
    box = mailbox(dovecot, max_size=50 * 1024)
    await box.connect()
    try:
        (got,) = flat(await collect(box))
    finally:
        await box.close()
    assert got.oversize and len(got.head) == 64 * 1024
    assert raw.startswith(got.head)


# -- marking -----------------------------------------------------------------------------


async def test_mark_done_flags_and_they_do_not_come_back(dovecot, mb: ImapMailbox) -> None:
    dovecot.deliver_files([message(i) for i in range(5)])
    first = flat(await collect(mb))
    await mb.mark_done(first[:3])
    await mb.mark_done(first[:3])  # idempotent
    again = mailbox(dovecot)
    await again.connect()
    try:
        rest = flat(await collect(again))
    finally:
        await again.close()
    assert [m.uid for m in rest] == [m.uid for m in first[3:]]
    flags = flags_of(dovecot, first[0].uid)
    assert KEYWORD in flags and "\\Seen" not in flags


async def test_mark_done_by_move(dovecot) -> None:
    dovecot.deliver_files([message(i) for i in range(4)])
    box = mailbox(dovecot, mark="move:Triaged")
    await box.connect()
    try:
        got = flat(await collect(box))
        await box.mark_done(got[:3])
        await box.connect()
        rest = flat(await collect(box))
    finally:
        await box.close()
    assert [m.data for m in rest] == [message(3)]
    with dovecot.imap() as conn:
        typ, data = conn.select("Triaged", readonly=True)
        assert typ == "OK" and data == [b"3"]


async def test_mark_done_by_copy_and_expunge_when_move_is_missing(dovecot) -> None:
    """RFC 6851 fallback, against the real server with MOVE hidden from the client."""
    dovecot.deliver_files([message(i) for i in range(3)])
    box = mailbox(dovecot, mark="move:Triaged")
    await box.connect()
    try:
        assert box._client is not None
        box._client.protocol.capabilities.discard("MOVE")
        got = flat(await collect(box))
        await box.mark_done(got[:2])
        await box.mark_done(got[:2])  # idempotent: the UIDs are gone, nothing happens
        rest = flat(await collect(box))
    finally:
        await box.close()
    assert [m.data for m in rest] == [message(2)]
    with dovecot.imap() as conn:
        typ, data = conn.select("Triaged", readonly=True)
        assert typ == "OK" and data == [b"2"]
        typ, data = conn.select("INBOX", readonly=True)
        assert typ == "OK" and data == [b"1"]  # expunged, not merely \Deleted


async def test_mark_done_skips_messages_of_another_uidvalidity(dovecot, mb: ImapMailbox) -> None:
    dovecot.deliver_files([message(1)])
    (got,) = flat(await collect(mb))
    stale = RawMessage(got.mailbox, got.uidvalidity - 1, got.uid, got.size, got.data)
    await mb.mark_done([stale])
    assert KEYWORD not in flags_of(dovecot, got.uid)
    with pytest.raises(ValueError, match="is not"):
        await mb.mark_done([RawMessage("imap://other", got.uidvalidity, got.uid, 1, b"")])


async def test_uidvalidity_change_is_visible(dovecot, mb: ImapMailbox) -> None:
    dovecot.deliver_files([message(1), message(2)])
    before = flat(await collect(mb))
    old = mb.uidvalidity
    await mb.close()
    new = dovecot.change_uidvalidity()
    await mb.connect()
    assert mb.uidvalidity == new != old
    after = flat(await collect(mb))
    assert [m.data for m in after] == [m.data for m in before]
    assert {m.uidvalidity for m in after} == {new}
    await mb.mark_done(before)  # old keys: must not touch anything
    assert [m.uid for m in flat(await collect(mb))] == [m.uid for m in after]


async def test_uidvalidity_change_under_an_open_session(dovecot, mb: ImapMailbox) -> None:
    """Dovecot drops a session whose folder was renumbered: Transient, then the new value."""
    dovecot.deliver_files([message(1)])
    (before,) = flat(await collect(mb))
    new = dovecot.change_uidvalidity()
    with pytest.raises(TransientMailboxError):
        await collect(mb)
    await mb.connect()
    (after,) = flat(await collect(mb))
    assert (after.uidvalidity, after.data) == (new, before.data) and new != before.uidvalidity


# -- waiting -----------------------------------------------------------------------------


async def idle_started(box: ImapMailbox) -> None:
    while box._client is None or not box._client.has_pending_idle():
        await asyncio.sleep(0.01)


async def test_idle_wakes_on_append_from_another_connection(dovecot, mb: ImapMailbox) -> None:
    assert await collect(mb) == []
    waiter = asyncio.create_task(mb.wait_for_new(60))
    await asyncio.wait_for(idle_started(mb), 10)
    await asyncio.to_thread(dovecot.append, message(7))
    assert await asyncio.wait_for(waiter, 30) is True
    # DONE was sent: the session goes on.
    assert [m.data for m in flat(await collect(mb))] == [message(7)]


async def test_wait_for_new_times_out_quietly(mb: ImapMailbox) -> None:
    assert await mb.wait_for_new(0.3) is False
    assert mb.connected
    assert await collect(mb) == []


async def test_wait_for_new_returns_at_once_when_mail_came_meanwhile(dovecot, mb) -> None:
    """Mail that arrived after the last SEARCH (its EXISTS lost in another reply) counts."""
    assert await collect(mb) == []
    dovecot.append(message(1))
    assert mb._client is not None
    await mb._client.noop()  # a command whose reply carries (and swallows) the EXISTS
    assert await asyncio.wait_for(mb.wait_for_new(60), 10) is True


async def idle_acknowledged(box: ImapMailbox) -> None:
    await idle_started(box)
    assert box._client is not None
    await box._client.protocol.wait_for_idle_response()  # "+ idling" received


@pytest.mark.parametrize("when", [idle_started, idle_acknowledged])
async def test_wait_for_new_is_cancellable_and_leaves_session_usable(dovecot, mb, when) -> None:
    """Cancelled before or after the server's "+ idling": DONE goes out, the session lives."""
    waiter = asyncio.create_task(mb.wait_for_new(60))
    await asyncio.wait_for(when(mb), 10)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert mb.connected
    dovecot.append(message(1))
    assert [m.data for m in flat(await collect(mb))] == [message(1)]


# -- failures ----------------------------------------------------------------------------


async def test_server_restart_mid_session_is_transient_then_reconnect_works(
    dovecot, mb: ImapMailbox
) -> None:
    dovecot.deliver_files([message(1)])
    dovecot.restart()
    with pytest.raises(TransientMailboxError):
        await collect(mb)
    assert not mb.connected
    with pytest.raises(TransientMailboxError, match="not connected"):
        await collect(mb)
    await mb.connect()
    assert [m.data for m in flat(await collect(mb))] == [message(1)]


async def test_server_stop_during_idle_is_transient(dovecot, mb: ImapMailbox) -> None:
    waiter = asyncio.create_task(mb.wait_for_new(60))
    await asyncio.wait_for(idle_started(mb), 10)
    await asyncio.to_thread(dovecot.stop)
    with pytest.raises(TransientMailboxError):
        await asyncio.wait_for(waiter, 10)
    dovecot.start()
    await mb.connect()
    assert await collect(mb) == []


async def test_reconnect_loop_with_backoff(dovecot) -> None:
    """The runner's loop in miniature: Transient -> back off -> reconnect -> fetch."""
    dovecot.append(message(1))
    dovecot.stop()
    box = mailbox(dovecot, timeout=5)
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)
        if len(slept) == 2:
            await asyncio.to_thread(dovecot.start)

    backoff = Backoff(base=1, cap=8, jitter=False, sleep=fake_sleep)
    for _ in range(5):
        try:
            await box.connect()
            break
        except TransientMailboxError:
            await backoff.wait()
    try:
        assert slept == [1, 2]
        assert [m.data for m in flat(await collect(box))] == [message(1)]
    finally:
        await box.close()


# -- backoff (shared helper) ---------------------------------------------------------------


def test_backoff_ceilings_double_up_to_the_cap() -> None:
    b = Backoff(base=0.5, cap=10, jitter=False)
    assert [b.next_delay() for _ in range(8)] == [0.5, 1, 2, 4, 8, 10, 10, 10]
    b.reset()
    assert b.next_delay() == 0.5
    assert Backoff(base=1, cap=300).ceiling(10_000) == 300


def test_backoff_full_jitter_draws_below_the_ceiling() -> None:
    draws = iter([0.0, 0.5, 0.999])
    b = Backoff(base=2, cap=100, rng=lambda: next(draws))
    assert [b.next_delay() for _ in range(3)] == [0.0, 2.0, pytest.approx(7.992)]


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(base=0)
    with pytest.raises(ValueError):
        Backoff(base=10, cap=1)


async def test_backoff_wait_is_cancellable() -> None:
    b = Backoff(base=60, cap=60, jitter=False)
    task = asyncio.create_task(b.wait())
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()


def test_no_password_in_logs(caplog, dovecot) -> None:
    caplog.set_level("DEBUG")

    async def run() -> None:
        box = mailbox(dovecot)
        await box.connect()
        await box.close()

    asyncio.run(run())
    assert dovecot.password not in caplog.text
    assert re.search(r"connected to imap://", caplog.text)
