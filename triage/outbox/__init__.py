"""The outbox: every mail we send is a row first (the transactional outbox), then a sweep
sends the rows.

- ``enqueue``: the only builder of rows and of our Message-IDs, run inside the writer's own
  transaction (the store, the desk, the SLA watch).
- ``store``: claim due rows under a lease, record each server answer.
- ``recorders``: how a delivery is recorded: the row at once (PostgreSQL), or a side
  SQLite database applied by the next claim (SQLite; see below).
- ``render``: the table from row kind to renderer (acknowledgment, reply, escalation, page).
- ``sender``: the sweep, one per process: claim, render, send, record; pauses, held
  refusals and the relay probe.

Nothing is imported here: ``enqueue`` is imported by the ingest worker, which must not load
the renderers, Jinja2 or SMTP for it.

Recording deliveries on SQLite (``recorders.SideDatabase``): each answer is recorded before
the next mail is handed over, and SQLite's one write lock is held by ingestion for each
batch it stores. Recorded in the outbox table, deliveries would wait for every batch (the
backlog benchmark's drain takes 4 to 5 times as long, bench/results.md). A second SQLite
database (WAL, ``synchronous=NORMAL``) has its own write lock, and SQLite does the locking
and the atomicity that a hand-written append-only file would have to.
"""
