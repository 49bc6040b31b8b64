"""``triage`` command line: argv -> handler. Handlers are imported lazily so that
``triage sla due`` does not pay for scikit-learn and ``triage classify`` not for SQLAlchemy."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence

# command -> "module:function"; each function takes the parsed Namespace and returns an exit code.
HANDLERS: dict[str, str] = {
    "run": "triage.service:cmd_run",
    "demo": "triage.demo:cmd_demo",
    "train": "classifiers.cli:cmd_train",
    "evaluate": "classifiers.cli:cmd_evaluate",
    "classify": "classifiers.cli:cmd_classify",
    "sla due": "triage.sla_cli:cmd_due",
    "db upgrade": "triage.storage.migrate:cmd_upgrade",
    "client set": "triage.clients:cmd_client_set",
    "user add": "triage.desk.cli:cmd_user_add",
    "user list": "triage.desk.cli:cmd_user_list",
}


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep the message to one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="triage", description="ITX helpdesk triage")
    p.add_argument("--config", help="TOML settings file (TRIAGE_* environment variables win)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--once", action="store_true", help="process what is waiting, send, exit")

    demo = sub.add_parser("demo", help="sample Maildir inbox, SQLite, acks to ./var/outbox")
    demo.add_argument("--var", default="var", help="working folder (default ./var)")
    demo.add_argument("--once", action="store_true", help="process the samples and exit")
    demo.add_argument("--samples", help="folder of .eml files to seed the inbox with "
                                        "(default: the samples shipped with triage)")

    train = sub.add_parser("train", help="train the classifier")
    train.add_argument("--data", action="append", help="JSONL file or folder (repeatable)")
    train.add_argument("--out", help="artifact path (default: model.skops in "
                                     "TRIAGE_RETRAINED_MODEL_DIR, ./var/model, which the "
                                     "daemon loads when it scores no worse than the packaged "
                                     "model on the held-out set)")
    train.add_argument("--keywords", help="keyword rules TOML (default: the shipped one)")
    train.add_argument("--quiet", action="store_true", help="no progress display")
    train.add_argument("--corrections", action="append",
                       help="corrections JSONL file or folder, always trained on (repeatable; "
                            "default data/corrections when --data is not given)")
    train.add_argument("--heldout", action="append",
                       help="held-out JSONL scored into the model metadata (default data/heldout)")

    ev = sub.add_parser("evaluate", help="evaluate the classifier on labelled JSONL")
    ev.add_argument("--data", required=True, action="append", help="JSONL file (repeatable)")
    ev.add_argument("--model", help="artifact path (default: the packaged model)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--plot", help="write the confusion matrix as PNG")

    cl = sub.add_parser("classify", help="classify one .eml file, print JSON")
    cl.add_argument("file", help="path to an RFC 5322 message")
    cl.add_argument("--model", help="artifact path (default: the packaged model)")

    sla = sub.add_parser("sla", help="SLA engine")
    sla_sub = sla.add_subparsers(dest="sla_command", required=True, parser_class=_Parser)
    due = sla_sub.add_parser("due", help="due dates for a request")
    due.add_argument("--type", required=True, dest="request_type")
    due.add_argument("--priority", choices=["urgent", "high", "normal"])
    due.add_argument("--contract", default="standard", choices=["standard", "24x7"])
    due.add_argument("--received", required=True, help="ISO 8601 instant with offset")
    due.add_argument("--policy", help="policy TOML (default data/sla_policy.toml)")

    db = sub.add_parser("db", help="database")
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    db_sub.add_parser("upgrade", help="apply Alembic migrations")

    client = sub.add_parser("client", help="clients and their contracts")
    client_sub = client.add_subparsers(dest="client_command", required=True, parser_class=_Parser)
    cs = client_sub.add_parser("set", help="record a client's contract by mail domain")
    cs.add_argument("domain", help="the client's mail domain, e.g. harborviewdental.com")
    cs.add_argument("--contract", required=True, choices=["standard", "24x7"])
    cs.add_argument("--name", help="display name")

    user = sub.add_parser("user", help="staff users of the web app")
    user_sub = user.add_subparsers(dest="user_command", required=True, parser_class=_Parser)
    ua = user_sub.add_parser("add", help="add a staff user (asks for the password)")
    ua.add_argument("name", help="login name: a-z, 0-9, . _ -")
    ua.add_argument("--display-name", help="name shown to colleagues and signed on replies")
    ua.add_argument("--email", help="address for SLA escalations of assigned work orders")
    ua.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of standard input")
    ua.add_argument("--no-password", action="store_true",
                    help="random password (an API-only account; use with --api-token)")
    ua.add_argument("--reset", action="store_true", help="set a new password for NAME")
    ua.add_argument("--api-token", action="store_true",
                    help="issue an API token for scripts (printed once; replaces the old one)")
    user_sub.add_parser("list", help="list staff users")
    return p


def _command_key(ns: argparse.Namespace) -> str:
    for group in ("sla_command", "db_command", "client_command", "user_command"):
        sub = getattr(ns, group, None)
        if sub:
            return f"{ns.command} {sub}"
    return str(ns.command)


def _stopped_before_start(signum: int, _frame: object) -> None:
    # The daemon fetches and sends nothing before its event loop runs, whose own handlers
    # replace this one: a stop during start-up (imports, migrations, the ingest worker's
    # start, a second or two) has nothing to finish, and is a clean exit.
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "run" and not ns.once:
        signal.signal(signal.SIGTERM, _stopped_before_start)
    module_name, func_name = HANDLERS[_command_key(ns)].split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    return int(handler(ns) or 0)


if __name__ == "__main__":
    sys.exit(main())
