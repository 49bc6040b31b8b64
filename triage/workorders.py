"""The work-order store's public names, where the rest of the tree imports them from; the
store itself is the ``triage.store`` package."""

from triage.store import (
    FREEMAIL,
    TAG_RE,
    Ingest,
    Outcome,
    RetryBatch,
    StoreConfig,
    WorkOrderStore,
    client_key,
    dedupe_key,
    due_columns,
    format_number,
    message_values,
    work_order_values,
)

__all__ = [
    "FREEMAIL", "TAG_RE", "Ingest", "Outcome", "RetryBatch", "StoreConfig",
    "WorkOrderStore", "client_key", "dedupe_key", "due_columns", "format_number",
    "message_values", "work_order_values",
]
