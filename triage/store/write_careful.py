"""The careful writer: each message looked up, decided and written under a savepoint of its
own, after the messages before it are written. Slower (about 17 statements a message), but
one message that cannot be written (a row refused by the database, say) becomes a
quarantine record instead of taking its neighbours with it. ``WorkOrderStore`` uses it when
the bulk writer fails, or for every batch when ``fast`` is off.

A failure of the environment (disk, database connection) is not the message's fault:
``RetryBatch`` rolls the whole batch back, to be fetched and tried again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.orm import Session

from triage.store.context import BatchContext, lookup
from triage.store.decide import Decider, Rules
from triage.store.model import ENVIRONMENT, Ingest, RetryBatch
from triage.store.plan import Plan
from triage.store.rows import claim_client, write_rows

log = logging.getLogger("triage.store")


def store_carefully(s: Session, items: Sequence[Ingest], rules: Rules,
                    domain: str) -> list[Plan]:
    plans: list[Plan] = []
    for item in items:
        try:
            with s.begin_nested():
                conn = s.connection()
                plan = Decider(lookup(conn, [item], rules.clock()), rules).decide(
                    item, fresh=True)
                assert plan is not None
                now = rules.clock()
                if plan.client is not None:
                    claim_client(s, plan.client, now)
                write_rows(conn, [plan], domain=domain, now=now)
        except ENVIRONMENT as e:
            # Disk full, attachments folder gone, database unreachable or deadlocked: the
            # message is fine; retrying later must not find it quarantined.
            raise RetryBatch(f"{type(e).__name__} while storing uid={item.raw.uid}") from e
        except Exception as e:  # one bad message must never take the batch down
            # The type only: str(e) of a database error carries the statement's parameters,
            # which include the message body.
            log.error("storing uid=%s failed (%s); quarantining", item.raw.uid,
                      type(e).__name__)
            with s.begin_nested():
                plan = Decider(BatchContext(), rules).quarantine(
                    Ingest(raw=item.raw, error=f"store failed: {type(e).__name__}"))
                write_rows(s.connection(), [plan], domain=domain, now=rules.clock())
        plans.append(plan)
    return plans
