"""Mailboxes behind one small interface: IMAP (aioimaplib) and Maildir (embedded default).

The runner fetches a batch, stores it in one transaction, and only then calls ``mark_done``:
a crash between the two leaves the messages unmarked, so they are fetched again and the
store's idempotency key (mailbox, uidvalidity, uid) turns the second pass into a no-op.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Protocol

from triage.messages import RawMessage


class MailboxError(Exception):
    """Base of mailbox failures."""


class TransientMailboxError(MailboxError):
    """Connection lost, timeout, server busy: reconnect with backoff and try again."""


class PermanentMailboxError(MailboxError):
    """Bad credentials, missing folder, refused plaintext login: retrying will not help."""


class MailboxAuthError(PermanentMailboxError):
    """An OAuth2 login refused: the IdP refuses the credential, or the server refuses every
    token it issues. ``str()`` says "token rejected"; this mailbox stops, the daemon goes on."""


class Mailbox(Protocol):
    """``name`` is stable across restarts (the URL without password); it keys the checkpoint."""

    name: str

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def uidvalidity(self) -> int: ...

    def batches(self, batch_size: int = 50) -> AsyncGenerator[list[RawMessage], None]:
        """Yield the waiting (unmarked) messages in UID order, a batch at a time. A generator,
        not just an iterator: the runner ``aclose()``s it when it stops early instead of
        leaving it for the event loop to finalise at some later point."""
        ...

    async def mark_done(self, messages: Sequence[RawMessage]) -> None:
        """Flag (or move) messages that are safely stored. Idempotent."""
        ...

    async def wait_for_new(self, timeout: float) -> bool:
        """Block until new mail may be waiting (IDLE) or ``timeout`` passes; True if told so."""
        ...
