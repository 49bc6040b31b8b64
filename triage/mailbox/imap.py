"""IMAP mailbox on aioimaplib 2.x.

Why it looks the way it does:

* aioimaplib rescans the lines received so far for every new line of a FETCH response, so a
  big FETCH is quadratic: bodies are fetched ``FETCH_CHUNK`` UIDs at a time (see
  bench/bench_imap_fetch.py), sizes first, so oversize messages are never downloaded whole
  and a batch never holds more than ``max_batch_bytes`` of bodies.
* aioimaplib does not wake pending commands when the connection drops (its issue #110):
  every command here races a "connection lost" future and a timeout, and any failure
  leaves the client closed, so the caller reconnects instead of talking to a broken session.
* aioimaplib has no STARTTLS: it is done here with ``loop.start_tls``; a server that does
  not offer it is an error, never a reason to log in in clear text.
* Only ``BODY.PEEK`` is used, so fetching never sets ``\\Seen`` for the people who also read
  the helpdesk mailbox.
* ``AUTHENTICATE XOAUTH2`` is sent here, not with aioimaplib's ``xoauth2()``: a server that
  refuses the token first sends a challenge (``+ <base64 JSON>``) that the client must answer
  with an empty line before the tagged ``NO`` comes, and ``xoauth2()`` never answers it, so
  it hangs until its timeout and leaves the session wedged. ``_SaslCommand`` answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from base64 import b64decode, b64encode
from collections.abc import AsyncGenerator, Awaitable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

from aioimaplib import aioimaplib

from triage.mailbox import MailboxAuthError, PermanentMailboxError, TransientMailboxError
from triage.messages import RawMessage
from triage.netutil import is_loopback

if TYPE_CHECKING:
    from triage.oauth import TokenSource

log = logging.getLogger(__name__)

KEYWORD = "$Triaged"
HEAD_LIMIT = 64 * 1024
FETCH_CHUNK = 10  # UIDs per body FETCH: fastest in bench/bench_imap_fetch.py (8,300 msgs/s)
META_CHUNK = 100  # UIDs per RFC822.SIZE/INTERNALDATE FETCH (short lines, cheap)
STORE_CHUNK = 500  # UIDs per STORE/MOVE: compact sets keep the command line short
IDLE_MAX = 29 * 60.0  # servers may drop an IDLE after 30 min (RFC 2177)

Security = Literal["tls", "starttls", "plain"]

_LITERAL = re.compile(rb"\{(\d+)\}$")
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_DATE = re.compile(rb'\bINTERNALDATE "([^"]+)"')
_MONTHS = {
    m: i
    for i, m in enumerate(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1
    )
}
_NETWORK_ERRORS = (OSError, EOFError, ssl.SSLError, aioimaplib.AioImapException)


class _SaslCommand(aioimaplib.Command):
    """An AUTHENTICATE that answers the server's continuations: with ``first`` (the initial
    response, when the server has no SASL-IR), then with empty lines, which is how a client
    acknowledges an error challenge (RFC 4954 style, Google's and Microsoft's XOAUTH2)."""

    def __init__(self, protocol: aioimaplib.IMAP4ClientProtocol, *args: Any,
                 first: str | None = None) -> None:
        super().__init__("AUTHENTICATE", protocol.new_tag(), *args, loop=protocol.loop)
        self._protocol = protocol
        self._first = first
        self._answered = 0
        self.challenges: list[bytes] = []

    def flush(self) -> None:
        pending = [line for line in self._resp_lines
                   if isinstance(line, bytes) and line.startswith(b"+")]
        for line in pending[self._answered:]:
            self._answered += 1
            answer = self._first or ""
            if self._first is not None:
                self._first = None
            else:
                self.challenges.append(line[1:].strip())
            transport = self._protocol.transport
            if transport is not None:
                transport.write(answer.encode("ascii") + b"\r\n")


def _challenge_text(challenges: list[bytes]) -> str:
    """The status a refusing server put in its XOAUTH2 challenge (base64 JSON), if any."""
    for raw in challenges:
        try:
            text = b64decode(raw, validate=True).decode("utf-8", "replace")
        except ValueError:
            continue
        return " ".join(text.split())[:200]
    return ""


def quote(text: str) -> str:
    """An IMAP quoted string. Non-ASCII folder names (modified UTF-7) are not supported."""
    if not text.isascii() or any(c in text for c in "\r\n\0"):
        raise PermanentMailboxError(f"unsupported characters in IMAP argument {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uid_set(uids: Iterable[int]) -> str:
    """Compact sequence set: [1, 2, 3, 7] -> "1:3,7"."""
    out: list[str] = []
    ordered = sorted(set(uids))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(out)


def parse_internaldate(text: str) -> datetime | None:
    """``"26-Nov-2026 03:29:26 +0000"`` -> aware datetime (locale-independent)."""
    m = re.fullmatch(r"\s*(\d{1,2})-(\w{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)", text)
    if m is None or m.group(2) not in _MONTHS:
        return None
    day, mon, year, hh, mm, ss, sign, oh, om = m.groups()
    offset = timedelta(hours=int(oh), minutes=int(om)) * (1 if sign == "+" else -1)
    return datetime(
        int(year), _MONTHS[mon], int(day), int(hh), int(mm), int(ss), tzinfo=timezone(offset)
    )


@dataclass(frozen=True)
class _Meta:
    uid: int
    size: int
    internal_date: datetime | None


def _parse_meta(lines: Sequence[bytes | bytearray]) -> dict[int, _Meta]:
    out: dict[int, _Meta] = {}
    for line in lines:
        if isinstance(line, bytearray):
            continue
        uid, size = _UID.search(line), _SIZE.search(line)
        if uid is None or size is None:
            continue  # unsolicited FETCH (flags changed by someone else) or the tagged text
        date = _DATE.search(line)
        parsed = parse_internaldate(date.group(1).decode("ascii")) if date else None
        out[int(uid.group(1))] = _Meta(int(uid.group(1)), int(size.group(1)), parsed)
    return out


def _parse_literals(lines: Sequence[bytes | bytearray]) -> dict[int, bytes]:
    """UID -> literal from aioimaplib's FETCH lines: ``b'1 FETCH (UID 5 BODY[] {n}'``,
    ``bytearray(data)``, ``b')'`` (or ``b' UID 5)'`` when the server puts UID last)."""
    out: dict[int, bytes] = {}
    head: bytes | None = None
    data: bytes | None = None
    for line in lines:
        if isinstance(line, bytearray):
            data = bytes(line)
            continue
        if data is not None and head is not None:
            m = _UID.search(head) or _UID.search(line)
            if m is not None:
                out[int(m.group(1))] = data
            head, data = None, None
        if _LITERAL.search(line):
            head = bytes(line)
    return out


def _criteria(mark: str) -> tuple[str, ...]:
    # Moving: what is still in the folder is waiting; \Deleted ones are on their way out.
    return ("UNKEYWORD", KEYWORD) if mark == "flag" else ("UNDELETED",)


class ImapMailbox:
    """One IMAP folder. Not safe for concurrent use: one poller per mailbox (see docs/design.md)."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        folder: str = "INBOX",
        security: Security = "tls",
        mark: str = "flag",
        max_size: int = 25 * 1024 * 1024,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        max_batch_bytes: int = 64 * 1024 * 1024,
        tokens: TokenSource | None = None,
    ) -> None:
        """``tokens``: log in with ``AUTHENTICATE XOAUTH2`` and a token from it instead of
        ``password``."""
        if security not in ("tls", "starttls", "plain"):
            raise PermanentMailboxError(f"unknown security {security!r}")
        if mark != "flag" and not (mark.startswith("move:") and len(mark) > 5):
            raise PermanentMailboxError(f"mark must be 'flag' or 'move:Folder', not {mark!r}")
        self.host, self.port, self.user = host, port, user
        self._password = password
        self._tokens = tokens
        self.folder = folder
        self.security: Security = security
        self.mark = mark
        self.max_size = max_size
        self.max_batch_bytes = max_batch_bytes
        self._ssl_context = ssl_context
        self.timeout = timeout
        self.name = f"imap://{user}@{host}:{port}/{folder}"
        self._client: aioimaplib.IMAP4 | None = None
        self._lost: asyncio.Future[None] | None = None
        self._uidvalidity = 0
        self._max_seen_uid = 0

    def __repr__(self) -> str:
        state = "connected" if self._client is not None else "closed"
        return f"<ImapMailbox {self.name} {self.security} {state}>"

    @property
    def uidvalidity(self) -> int:
        """UIDVALIDITY of the selected folder; 0 before the first ``connect``."""
        return self._uidvalidity

    @property
    def connected(self) -> bool:
        return self._client is not None and not (self._lost is not None and self._lost.done())

    @property
    def capabilities(self) -> frozenset[str]:
        """What the server announced after login (IDLE, MOVE, UIDPLUS ...); empty before."""
        return frozenset(self._client.protocol.capabilities) if self._client else frozenset()

    async def count_waiting(self) -> int:
        """Messages the next poll would fetch (not yet marked), for ``triage check``."""
        return len(await self._search())

    # -- connection -------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, secure, log in and select; any previous session is dropped first."""
        await self.close()
        if self.security == "plain" and not is_loopback(self.host):
            raise PermanentMailboxError(
                f"refusing a clear-text login to {self.host}: use security='tls' or 'starttls'"
            )
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[None] = loop.create_future()
        self._lost = lost

        def on_lost(exc: Exception | None) -> None:
            if not lost.done():
                lost.set_result(None)

        context = self._ssl_context or ssl.create_default_context()
        client = aioimaplib.IMAP4(
            host=self.host,
            port=self.port,
            timeout=self.timeout,
            conn_lost_cb=on_lost,
            ssl_context=context if self.security == "tls" else None,
        )
        self._client = client
        try:
            await self._guard(client.wait_hello_from_server(), "connect")
            if self.security == "starttls":
                await self._starttls(client, context)
            if self._tokens is not None:
                await self._login_xoauth2(client, self._tokens)
            else:
                response = await self._guard(client.login(quote(self.user), self._password),
                                             "login")
                if response.result != "OK":
                    text = _text(response)
                    if "[UNAVAILABLE]" in text or "[INUSE]" in text:  # RFC 5530: try later
                        raise TransientMailboxError(f"{self.name}: login deferred: {text}")
                    raise PermanentMailboxError(f"{self.name}: login refused: {text}")
            await self._select(client)
        except BaseException:
            self._drop()
            raise
        log.info("connected to %s (uidvalidity %d)", self.name, self._uidvalidity)

    async def _login_xoauth2(self, client: aioimaplib.IMAP4, tokens: TokenSource) -> None:
        """AUTHENTICATE XOAUTH2 with the cached token; a refused token is dropped and a new
        one tried once on the same session (it may have expired or been revoked early)."""
        from triage.oauth import TokenRejected, TokenUnavailable, xoauth2_string

        for attempt in (1, 2):
            try:
                token = await tokens.token()
            except TokenRejected as e:
                raise MailboxAuthError(f"{self.name}: {e}") from None
            except TokenUnavailable as e:
                raise TransientMailboxError(f"{self.name}: {e}") from None
            sasl = b64encode(xoauth2_string(self.user, token).encode()).decode("ascii")
            protocol = client.protocol
            ir = "SASL-IR" in protocol.capabilities
            command = _SaslCommand(protocol, "XOAUTH2", *([sasl] if ir else []),
                                   first=None if ir else sasl)
            response = await self._guard(protocol.execute(command, scrub=sasl),
                                         "AUTHENTICATE XOAUTH2")
            if response.result == "OK":
                async with protocol.state_condition:
                    protocol.state = aioimaplib.AUTH
                    protocol.state_condition.notify_all()
                for line in response.lines:  # as aioimaplib's login() reads them
                    if isinstance(line, bytes) and b"CAPABILITY" in line:
                        protocol.capabilities |= set(
                            line.decode().replace("CAPABILITY", "").strip(" []").split())
                return
            text = _text(response)
            why = _challenge_text(command.challenges)
            detail = f"{text} ({why})" if why else text
            if "[UNAVAILABLE]" in text or "[INUSE]" in text:  # the token was not checked
                raise TransientMailboxError(f"{self.name}: login deferred: {detail}")
            tokens.invalidate(token)
            if attempt == 1:
                log.info("%s: XOAUTH2 token refused (%s); asking for a new one", self.name,
                         text)
                continue
            raise MailboxAuthError(f"{self.name}: token rejected by the server: {detail}")

    async def _starttls(self, client: aioimaplib.IMAP4, context: ssl.SSLContext) -> None:
        protocol = client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise PermanentMailboxError(
                f"{self.name}: server does not offer STARTTLS: use imaps:// (TLS), or "
                "imap+plain:// if the server runs on this machine (loopback only)")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        response = await self._guard(protocol.execute(command), "STARTTLS")
        if response.result != "OK":
            raise PermanentMailboxError(f"{self.name}: STARTTLS refused: {_text(response)}")
        loop = asyncio.get_running_loop()
        try:
            transport = await asyncio.wait_for(
                loop.start_tls(protocol.transport, protocol, context, server_hostname=self.host),
                self.timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            raise PermanentMailboxError(f"{self.name}: certificate rejected: {exc}") from exc
        except (OSError, TimeoutError) as exc:
            raise TransientMailboxError(f"{self.name}: TLS handshake failed: {exc}") from exc
        if transport is None:
            raise TransientMailboxError(f"{self.name}: connection closed during STARTTLS")
        protocol.transport = transport
        # Capabilities seen before TLS must not be trusted (RFC 3501 6.2.1).
        await self._guard(protocol.capability(), "CAPABILITY")

    async def _select(self, client: aioimaplib.IMAP4) -> None:
        response = await self._guard(client.select(quote(self.folder)), "SELECT")
        if response.result != "OK":
            raise PermanentMailboxError(f"{self.name}: cannot select folder: {_text(response)}")
        uidvalidity = 0
        permanent = b""
        for line in response.lines:
            if isinstance(line, bytearray):
                continue
            m = re.search(rb"\[UIDVALIDITY (\d+)\]", line)
            if m:
                uidvalidity = int(m.group(1))
            if b"PERMANENTFLAGS" in line:
                permanent = bytes(line)
        if uidvalidity == 0:
            raise PermanentMailboxError(f"{self.name}: server sent no UIDVALIDITY")
        if self.mark == "flag" and b"\\*" not in permanent and KEYWORD.encode() not in permanent:
            raise PermanentMailboxError(
                f"{self.name}: server does not allow the keyword {KEYWORD}; use mark='move:...'"
            )
        if uidvalidity != self._uidvalidity:
            if self._uidvalidity:
                log.warning(
                    "%s: UIDVALIDITY changed %d -> %d; every message counts as new",
                    self.name,
                    self._uidvalidity,
                    uidvalidity,
                )
            self._max_seen_uid = 0
        self._uidvalidity = uidvalidity
        if self.mark.startswith("move:"):
            target = self.mark[5:]
            created = await self._guard(client.create(quote(target)), "CREATE")
            if created.result != "OK" and b"ALREADYEXISTS" not in b" ".join(
                bytes(x) for x in created.lines
            ):
                raise PermanentMailboxError(
                    f"{self.name}: cannot create {target}: {_text(created)}"
                )
            if "MOVE" not in client.protocol.capabilities and "UIDPLUS" not in (
                client.protocol.capabilities
            ):
                raise PermanentMailboxError(
                    f"{self.name}: moving needs MOVE or UIDPLUS on the server; use mark='flag'"
                )

    async def close(self) -> None:
        """Log out politely when possible; never raises."""
        client = self._client
        if client is None:
            return
        if self.connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.logout(), min(self.timeout, 5.0))
        self._drop()

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.protocol.transport is not None:
            # abort, not close: a TLS close waits for the peer's close_notify, which a dead
            # server never sends, and the socket would linger until garbage collection.
            client.protocol.transport.abort()

    async def _guard(
        self,
        awaitable: Awaitable[aioimaplib.Response] | Awaitable[None],
        what: str,
        timeout: float | None = -1.0,
    ) -> aioimaplib.Response:
        """Await one IMAP step; a lost connection, a timeout or a protocol error becomes
        TransientMailboxError and closes the client (its state is unknown after that)."""
        if timeout is not None and timeout < 0:
            timeout = self.timeout
        task = asyncio.ensure_future(awaitable)
        lost = self._lost
        if lost is None or self._client is None:
            task.cancel()
            raise TransientMailboxError(f"{self.name}: not connected")
        try:
            done, _ = await asyncio.wait(
                {task, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task in done:
            try:
                result = task.result()
            except PermanentMailboxError:
                raise
            except ssl.SSLCertVerificationError as exc:
                self._drop()  # a wrong certificate will not fix itself; and never go on
                raise PermanentMailboxError(f"{self.name}: certificate rejected: {exc}") from exc
            except (*_NETWORK_ERRORS, TimeoutError) as exc:
                self._drop()
                raise TransientMailboxError(f"{self.name}: {what} failed: {exc!r}") from exc
            if isinstance(result, aioimaplib.Response) and result.result == "BYE":
                self._drop()
                raise TransientMailboxError(f"{self.name}: server said BYE during {what}")
            return result
        task.cancel()
        self._drop()
        if lost.done():
            raise TransientMailboxError(f"{self.name}: connection lost during {what}")
        raise TransientMailboxError(f"{self.name}: {what} timed out after {timeout} s")

    async def _uid(
        self, what: str, *args: str, timeout: float | None = -1.0
    ) -> aioimaplib.Response:
        client = self._require()
        response = await self._guard(
            client.protocol.uid(*args, timeout=self.timeout), what, timeout
        )
        if response.result != "OK":
            # NO/BAD on a command the session can normally run: the server is unhappy now.
            raise TransientMailboxError(f"{self.name}: {what} answered {_text(response)}")
        return response

    def _require(self) -> aioimaplib.IMAP4:
        if self._client is None or not self.connected:
            self._drop()
            raise TransientMailboxError(f"{self.name}: not connected")
        return self._client

    # -- reading ----------------------------------------------------------------------

    async def _search(self, *extra: str) -> list[int]:
        client = self._require()
        # A session sees only what the server has announced to it; SEARCH alone reports
        # new arrivals after its results (EXISTS), so NOOP first brings the view up to date.
        noop = await self._guard(client.noop(), "NOOP")
        if noop.result != "OK":
            raise TransientMailboxError(f"{self.name}: NOOP answered {_text(noop)}")
        response = await self._guard(
            client.protocol.search(*extra, *_criteria(self.mark), charset=None, by_uid=True),
            "UID SEARCH",
        )
        if response.result != "OK":
            raise TransientMailboxError(f"{self.name}: UID SEARCH answered {_text(response)}")
        uids: list[int] = []
        for line in response.lines[:-1]:
            if isinstance(line, bytes):
                uids.extend(int(tok) for tok in line.split() if tok.isdigit())
        return sorted(set(uids))

    async def batches(self, batch_size: int = 50) -> AsyncGenerator[list[RawMessage], None]:
        """Waiting messages in UID order, ``batch_size`` at a time (fewer when the bodies
        would pass ``max_batch_bytes``). Only sizes and UIDs of the whole folder are held."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        uids = await self._search()
        log.debug("%s: %d waiting", self.name, len(uids))
        batch: list[RawMessage] = []
        batch_bytes = 0
        for start in range(0, len(uids), META_CHUNK):
            meta = await self._fetch_meta(uids[start : start + META_CHUNK])
            for group in self._body_groups(meta):
                for message in await self._fetch_group(group):
                    batch.append(message)
                    batch_bytes += len(message.data or message.head)
                    self._max_seen_uid = max(self._max_seen_uid, int(message.uid))
                    if len(batch) >= batch_size or batch_bytes >= self.max_batch_bytes:
                        yield batch
                        batch, batch_bytes = [], 0
        if batch:
            yield batch

    async def _fetch_meta(self, uids: list[int]) -> list[_Meta]:
        response = await self._uid(
            "UID FETCH sizes",
            "fetch",
            uid_set(uids),
            "(UID RFC822.SIZE INTERNALDATE)",
            timeout=None,
        )
        found = _parse_meta(response.lines)
        # A UID missing here was expunged by someone else since the SEARCH: nothing to do.
        return [found[u] for u in uids if u in found]

    def _body_groups(self, meta: list[_Meta]) -> Iterable[list[_Meta]]:
        group: list[_Meta] = []
        size = 0
        for m in meta:
            if group and (
                len(group) >= FETCH_CHUNK
                or m.size > self.max_size
                or group[0].size > self.max_size
                or size + m.size > self.max_batch_bytes
            ):
                yield group
                group, size = [], 0
            group.append(m)
            size += m.size
        if group:
            yield group

    async def _fetch_group(self, group: list[_Meta]) -> list[RawMessage]:
        """One FETCH for a group; an oversize message is always alone in its group."""
        oversize = group[0].size > self.max_size
        part = f"BODY.PEEK[HEADER]<0.{HEAD_LIMIT}>" if oversize else "BODY.PEEK[]"
        response = await self._uid(
            "UID FETCH", "fetch", uid_set(m.uid for m in group), f"(UID {part})", timeout=None
        )
        bodies = _parse_literals(response.lines)
        out: list[RawMessage] = []
        for m in group:
            body = bodies.get(m.uid)
            if body is None:
                # Expunged meanwhile, or the server could not read it; it stays unmarked.
                log.warning("%s: no body for UID %d (expunged?)", self.name, m.uid)
                continue
            out.append(
                RawMessage(
                    mailbox=self.name,
                    uidvalidity=self._uidvalidity,
                    uid=str(m.uid),
                    size=m.size,
                    data=None if oversize else body,
                    head=body[:HEAD_LIMIT] if oversize else b"",
                    internal_date=m.internal_date,
                )
            )
            if oversize:
                log.warning(
                    "%s: UID %d is %d bytes (> %d): headers only",
                    self.name,
                    m.uid,
                    m.size,
                    self.max_size,
                )
        return out

    # -- marking ----------------------------------------------------------------------

    async def mark_done(self, messages: Sequence[RawMessage]) -> None:
        """Flag with $Triaged, or move, the given messages. Messages fetched under another
        UIDVALIDITY are skipped (their UIDs may now name other messages)."""
        uids: list[int] = []
        for msg in messages:
            if msg.mailbox != self.name:
                raise ValueError(f"{msg.mailbox} is not {self.name}")
            if msg.uidvalidity != self._uidvalidity:
                log.warning(
                    "%s: not marking UID %s: fetched under UIDVALIDITY %d, now %d",
                    self.name,
                    msg.uid,
                    msg.uidvalidity,
                    self._uidvalidity,
                )
                continue
            uids.append(int(msg.uid))
        uids.sort()
        for start in range(0, len(uids), STORE_CHUNK):
            chunk = uid_set(uids[start : start + STORE_CHUNK])
            if self.mark == "flag":
                await self._uid("UID STORE", "store", chunk, "+FLAGS.SILENT", f"({KEYWORD})")
            else:
                await self._move(chunk, self.mark[5:])

    async def _move(self, chunk: str, target: str) -> None:
        client = self._require()
        if "MOVE" in client.protocol.capabilities:
            response = await self._guard(
                client.protocol.move(chunk, quote(target), by_uid=True), "UID MOVE"
            )
            if response.result != "OK":
                raise TransientMailboxError(f"{self.name}: UID MOVE answered {_text(response)}")
            return
        # RFC 6851 fallback. A crash between steps leaves a copy behind: harmless, since the
        # store is idempotent on Message-ID; the original is still \Deleted-marked next time.
        await self._uid("UID COPY", "copy", chunk, quote(target))
        await self._uid("UID STORE", "store", chunk, "+FLAGS.SILENT", "(\\Deleted)")
        await self._uid("UID EXPUNGE", "expunge", chunk)

    # -- waiting ----------------------------------------------------------------------

    async def wait_for_new(self, timeout: float) -> bool:
        """IDLE until the server reports new mail (True) or ``timeout`` passes (False).

        It first asks for waiting messages above the last UID handed out, because an
        EXISTS sent during an earlier command is swallowed by aioimaplib and IDLE would
        not repeat it. Cancelling is safe: DONE is sent and the session stays usable.
        """
        client = self._require()
        newer = [
            u
            for u in await self._search("UID", f"{self._max_seen_uid + 1}:*")
            if u > self._max_seen_uid
        ]
        if newer:
            return True
        if "IDLE" not in client.protocol.capabilities:
            await asyncio.sleep(timeout)
            return False
        queue = client.protocol.idle_queue
        while not queue.empty():  # leftovers of an earlier IDLE
            queue.get_nowait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout, IDLE_MAX)
        try:
            # idle_start's own stop timer is pushed out of the way; the deadline is ours.
            await self._guard(client.idle_start(timeout=IDLE_MAX + timeout), "IDLE")
            while (left := deadline - loop.time()) > 0:
                lines = await self._next_push(queue, left)
                if lines is None:
                    return False
                if any(
                    b"EXISTS" in line or b"RECENT" in line
                    for line in lines
                    if isinstance(line, bytes)
                ):
                    return True
            return False
        finally:
            # Also when cancelled inside idle_start: an IDLE left open would block every
            # later command of the session.
            await self._end_idle(client)

    async def _next_push(
        self, queue: asyncio.Queue[list[bytes]], timeout: float
    ) -> list[bytes] | None:
        """The next untagged lines pushed during IDLE, or None at the deadline."""
        lost = self._lost
        assert lost is not None
        getter = asyncio.ensure_future(queue.get())
        waiting: set[asyncio.Future[Any]] = {getter, lost}
        try:
            await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        if lost.done():
            self._drop()
            raise TransientMailboxError(f"{self.name}: connection lost during IDLE")
        return None

    async def _end_idle(self, client: aioimaplib.IMAP4) -> None:
        """Send DONE for a pending IDLE and wait for its tagged reply (or drop the session)."""
        protocol = client.protocol
        command = protocol.pending_sync_command
        if not self.connected or command is None or command.name != "IDLE":
            return
        try:
            # DONE is only valid once the server has said "+ idling".
            await asyncio.wait_for(protocol.wait_for_idle_response(), self.timeout)
            client.idle_done()
            await asyncio.wait_for(command.wait(), self.timeout)
        except (TimeoutError, *_NETWORK_ERRORS):
            self._drop()
            log.warning("%s: IDLE did not end cleanly; session dropped", self.name)
        except asyncio.CancelledError:
            self._drop()
            raise


def _text(response: aioimaplib.Response) -> str:
    last = response.lines[-1] if response.lines else b""
    return f"{response.result} {bytes(last).decode('utf-8', 'replace')}".strip()
