"""Storing fetched messages: dedupe, screen, thread, open work orders with their SLA due
dates and queue acknowledgments, in one transaction per batch.

One decision path, two writers. ``decide`` holds every storing rule, once: given what the
database holds (a ``BatchContext``, looked up for the whole batch in one query per kind)
and one parsed, classified message, it returns a ``Plan``: the rows to write and the
``Outcome``. It reads nothing and writes nothing, so the rules can be read, changed and
tested in one place. Two writers carry plans out and decide nothing:

- ``write_bulk``: the whole batch with one insert per table, under one savepoint;
- ``write_careful``: one savepoint per message, so a message whose rows the database
  refuses (PostgreSQL refusing a row another poller created first, say) becomes a
  quarantine record instead of rolling back its neighbours. It runs when the bulk writer
  fails.

Both use the same row inserts (``rows``), and outbox rows and their Message-IDs come from
``triage.outbox.enqueue``, as for every other mail we queue.

Knows nothing of IMAP or SMTP: it takes plain data (``Ingest``) and returns plain data
(``Outcome``). The caller marks the mailbox only after ``store_batch`` has committed.

Modules: ``model`` (the data in and out, keys), ``context`` (the lookups), ``figures``
(due dates), ``plan``, ``decide``, ``rows``, ``write_bulk``, ``write_careful``, ``store``
(``WorkOrderStore``: the transaction around them).
"""

from triage.store.decide import message_values, work_order_values
from triage.store.figures import due_columns
from triage.store.model import (
    FREEMAIL,
    TAG_RE,
    Ingest,
    Outcome,
    RetryBatch,
    StoreConfig,
    client_key,
    dedupe_key,
    format_number,
)
from triage.store.store import Opened, WorkOrderStore

__all__ = [
    "FREEMAIL", "TAG_RE", "Ingest", "Opened", "Outcome", "RetryBatch",
    "StoreConfig",
    "WorkOrderStore", "client_key", "dedupe_key", "due_columns", "format_number",
    "message_values", "work_order_values",
]
