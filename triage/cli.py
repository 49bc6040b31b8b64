"""``triage`` command line: argv -> handler. Handlers are imported lazily so that
``triage sla due`` does not pay for scikit-learn and ``triage classify`` not for SQLAlchemy."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

# command -> "module:function"; each function takes the parsed Namespace and returns an exit code.
HANDLERS: dict[str, str] = {
    "run": "triage.service:cmd_run",
    "check": "triage.check:cmd_check",
    "demo": "triage.demo:cmd_demo",
    "train": "triage.cli:cmd_train",
    "evaluate": "classifiers.cli:cmd_evaluate",
    "classify": "classifiers.cli:cmd_classify",
    "sla due": "triage.sla_cli:cmd_due",
    "db upgrade": "triage.storage.migrate:cmd_upgrade",
    "client set": "triage.clients:cmd_client_set",
    "user add": "triage.desk.cli:cmd_user_add",
    "user list": "triage.desk.cli:cmd_user_list",
    "oauth login": "triage.oauth_cli:cmd_login",
    "user disable": "triage.desk.cli:cmd_user_disable",
    "user enable": "triage.desk.cli:cmd_user_enable",
    "user email": "triage.desk.cli:cmd_user_email",
    "user token revoke": "triage.desk.cli:cmd_user_token_revoke",
}


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep the message to one line.

    ``epilog_from`` builds the epilog only when help is shown, so that naming every setting
    or request type costs nothing to a command that only runs."""

    def __init__(self, *args: Any, epilog_from: Callable[[], str] | None = None,
                 **kwargs: Any) -> None:
        if epilog_from is not None:
            kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self._epilog_from = epilog_from

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")

    def format_help(self) -> str:
        if self._epilog_from is not None and self.epilog is None:
            self.epilog = self._epilog_from()
        return super().format_help()


def _settings_epilog() -> str:
    """Every setting ``triage run`` reads, with its default (secrets show none)."""
    from pydantic import SecretStr

    from triage.config import Settings

    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "" if default is None or isinstance(default, SecretStr) or default == [] \
            else f"={default}"
        rows.append(f"  TRIAGE_{name.upper()}{shown}")
    return ("settings it reads: TRIAGE_* environment variables, which win over the --config "
            "TOML file\n(keys: the same names in lower case); README, \"Configuration\", says "
            "what each means.\n" + "\n".join(rows) + "\n\ntry them first with: triage check")


def _request_types_epilog() -> str:
    """The request types with their default priority and meaning, from the shipped policy."""
    from triage.sla import load_policy

    try:
        policy = load_policy()
    except Exception as e:  # help must still show: name the types without the policy
        from classifiers.types import REQUEST_TYPES

        return f"request types: {', '.join(REQUEST_TYPES)} (policy not readable: {e})"
    width = max(len(t) for t in policy.types)
    rows = [f"  {t:<{width}}  {policy.default_priority(t):<6}  {policy.rule(t).meaning}"
            for t in policy.types]
    return ("request types (--type), their priority and meaning in the shipped policy:\n"
            + "\n".join(rows))


_CLIENT_SET_EPILOG = """\
A work order takes the contract of the sender's mail domain when it is opened, so record a
24x7 client before its mail arrives: its requests then run on the always-open calendar (the
callback clock starts at once, also at night and on holidays) and an urgent request out of
hours pages TRIAGE_ONCALL_ADDRESS. Running it again for the same domain changes the contract
(and the name, when --name is given); work orders already open keep theirs.

examples:
  triage client set harborviewdental.com --contract 24x7 --name "Harborview Dental"
  triage client set harborviewdental.com --contract standard
"""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="triage", description="ITX helpdesk triage")
    p.add_argument("--config", help="TOML settings file (TRIAGE_* environment variables win)")
    p.add_argument("--debug", action="store_true",
                   help="print the traceback of an error (also TRIAGE_LOG_LEVEL=DEBUG)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the daemon", epilog_from=_settings_epilog,
                         description="Fetch, classify, store and acknowledge mail until "
                                     "SIGTERM; serve the staff web app and /metrics.")
    run.add_argument("--once", action="store_true", help="process what is waiting, send, exit")

    sub.add_parser(
        "check", help="try the configuration before going live: one line per check",
        description="Load the settings, SLA policy, templates and model; connect to the "
                    "database (schema version), every mailbox (login, folder, IDLE/MOVE/UIDPLUS, "
                    "messages waiting) and SMTP (TLS, AUTH). Prints ok or FAIL and the reason "
                    "per check; changes nothing. Exit 0: all passed; 1: a check failed; 2: "
                    "the settings are wrong.")

    demo = sub.add_parser("demo", help="sample Maildir inbox, SQLite, acks to ./var/outbox")
    demo.add_argument("--var", default="var", help="working folder (default ./var)")
    demo.add_argument("--once", action="store_true", help="process the samples and exit")
    demo.add_argument("--samples", help="folder of .eml files to seed the inbox with "
                                        "(default: the samples shipped with triage)")

    train = sub.add_parser(
        "train", help="train the classifier",
        description="Train on data/training (and corrections) and score on data/heldout. "
                    "The model goes to TRIAGE_RETRAINED_MODEL_DIR (default var/model), where "
                    "the daemon takes it at its next start or model refresh when its held-out "
                    "macro-F1 is not worse than the packaged model's. The packaged model under "
                    "classifiers/model/ is replaced only when --out names it.")
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
    ev.add_argument("--data", action="append",
                    help="JSONL file or folder (repeatable; default: each held-out set, "
                         "data/heldout, data/heldout-wild and data/heldout-registers, "
                         "reported apart)")
    ev.add_argument("--model", help="artifact path (default: the packaged model)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--plot", help="write the confusion matrix as PNG (needs matplotlib: "
                                   "pip install 'itx-triage[plot]')")

    cl = sub.add_parser("classify", help="classify one .eml file, print JSON")
    cl.add_argument("file", help="path to an RFC 5322 message")
    cl.add_argument("--model", help="artifact path (default: the packaged model)")

    sla = sub.add_parser("sla", help="SLA engine")
    sla_sub = sla.add_subparsers(dest="sla_command", required=True, parser_class=_Parser)
    due = sla_sub.add_parser("due", help="due dates for a request",
                             epilog_from=_request_types_epilog)
    due.add_argument("--type", required=True, dest="request_type",
                     help="request type (listed below)")
    due.add_argument("--priority", choices=["urgent", "high", "normal"])
    due.add_argument("--contract", default="standard", choices=["standard", "24x7"])
    due.add_argument("--received", required=True, help="ISO 8601 instant with offset")
    due.add_argument("--policy", help="policy TOML (default data/sla_policy.toml)")

    db = sub.add_parser("db", help="database")
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    db_sub.add_parser("upgrade", help="apply Alembic migrations")

    client = sub.add_parser("client", help="clients and their contracts")
    client_sub = client.add_subparsers(dest="client_command", required=True, parser_class=_Parser)
    cs = client_sub.add_parser(
        "set", help="record a client's contract by mail domain",
        description="Record (or change) the contract of the client whose mail comes from "
                    "DOMAIN, in the database of TRIAGE_DATABASE_URL.",
        epilog=_CLIENT_SET_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cs.add_argument("domain", help="the client's mail domain, e.g. harborviewdental.com")
    cs.add_argument("--contract", required=True, choices=["standard", "24x7"],
                    help="standard: 08:00-20:00 New York, Monday-Friday, US federal holidays "
                         "closed; 24x7: always open")
    cs.add_argument("--name", help="the client's name, shown to staff (default: the domain)")

    user = sub.add_parser("user", help="staff users of the web app")
    user_sub = user.add_subparsers(dest="user_command", required=True, parser_class=_Parser)
    ua = user_sub.add_parser("add", help="add a staff user (asks for the password)")
    ua.add_argument("name", help="login name: a-z, 0-9, . _ -")
    ua.add_argument("--display-name", help="name shown to colleagues and signed on replies")
    ua.add_argument("--email", help="address for notifications and SLA escalations of "
                                    "assigned work orders")
    ua.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of standard input")
    ua.add_argument("--no-password", action="store_true",
                    help="random password (an API-only account; use with --api-token)")
    ua.add_argument("--reset", action="store_true",
                    help="set a new password for NAME (ends their sessions and revokes their "
                         "API token)")
    ua.add_argument("--api-token", action="store_true",
                    help="issue an API token for scripts (printed once; replaces the old one)")
    user_sub.add_parser("list", help="list staff users, their state and API token's last use")
    ud = user_sub.add_parser("disable", help="stop a user: no logins; sessions end and the "
                                             "API token is revoked")
    ud.add_argument("name", help="login name")
    ue = user_sub.add_parser("enable", help="let a disabled user log in again")
    ue.add_argument("name", help="login name")
    um = user_sub.add_parser("email", help="set the address NAME's notifications (assignments, "
                                           "client replies) and escalations go to")
    um.add_argument("name", help="login name")
    um.add_argument("address", help='e.g. bob@itx.net; "" clears it')
    tok = user_sub.add_parser("token", help="API tokens")
    tok_sub = tok.add_subparsers(dest="token_command", required=True, parser_class=_Parser)
    tr = tok_sub.add_parser("revoke", help="revoke NAME's API token (scripts using it get 401)")
    tr.add_argument("name", help="login name")

    oauth = sub.add_parser("oauth", help="OAuth2 logins of xoauth2 mailboxes")
    oauth_sub = oauth.add_subparsers(dest="oauth_command", required=True, parser_class=_Parser)
    ol = oauth_sub.add_parser(
        "login", help="authorise a delegated login once (Microsoft: device code; Google: "
                      "installed app); stores the refresh token, encrypted",
        description="For a mailbox whose OAuth app has flow = delegated: prints where to sign "
                    "in as the mailbox user, waits, and stores the refresh token in the "
                    "database, encrypted with TRIAGE_OAUTH_TOKEN_KEY.")
    ol.add_argument("--mailbox", help="the mailbox id (default: the first mailbox)")
    ol.add_argument("--smtp", action="store_true",
                    help="authorise SMTP's login (TRIAGE_SMTP_USER) instead of a mailbox")
    ol.add_argument("--port", type=int, default=0,
                    help="Google: the loopback port the browser returns to (default: any)")
    return p


def cmd_train(ns: argparse.Namespace) -> int:
    """``triage train`` writes to the retrained-model folder unless ``--out`` says otherwise:
    the packaged model is tracked in git (and read-only in the image), and that folder is
    where the daemon already looks for a newer model, keeping the better of the two."""
    from classifiers.cli import cmd_train as train
    from classifiers.installed import MODEL_FILE

    if not ns.out:
        from triage.config import load_settings

        folder = load_settings(ns.config).retrained_model_dir
        folder.mkdir(parents=True, exist_ok=True)
        ns.out = str(folder / MODEL_FILE)
        sys.stderr.write(f"[train] writing {ns.out} (--out to write elsewhere)\n")
    return train(ns)


def _command_key(ns: argparse.Namespace) -> str:
    for group in ("sla_command", "db_command", "client_command", "user_command",
                  "oauth_command"):
        sub = getattr(ns, group, None)
        if sub:
            third = getattr(ns, "token_command", None) if sub == "token" else None
            return f"{ns.command} {sub}" + (f" {third}" if third else "")
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
    key = _command_key(ns)
    module_name, func_name = HANDLERS[key].split(":")
    try:
        handler = getattr(importlib.import_module(module_name), func_name)
        return int(handler(ns) or 0)
    except Exception as exc:  # every failure becomes one line (triage.errors)
        return _report(exc, f"triage {key}", debug=ns.debug)


def _report(exc: Exception, prog: str, *, debug: bool) -> int:
    """One line on stderr for ``exc`` and its exit code; the traceback first when debugging."""
    from triage.errors import describe

    code, line = describe(exc)
    if debug or os.environ.get("TRIAGE_LOG_LEVEL", "").upper() == "DEBUG":
        traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.write(f"{prog}: error: {line}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
