"""``triage demo``: the embedded default on one machine, no servers needed.

A Maildir inbox under ./var seeded once from data/samples/, SQLite at ./var/triage.db,
acknowledgments written as .eml files to ./var/outbox/.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from sqlalchemy import select

from triage.config import DATA_DIR, load_settings
from triage.logs import configure_logging


def seed_inbox(inbox: Path, samples: Path = DATA_DIR / "samples") -> int:
    """Copy the sample mail into ``inbox/new`` the first time; later runs keep the state."""
    if inbox.exists():
        return 0
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    n = 0
    for i, src in enumerate(sorted(samples.glob("*.eml"))):
        name = f"{int(time.time())}.demo{i:04d}.itx-triage"
        shutil.copyfile(src, inbox / "tmp" / name)
        (inbox / "tmp" / name).rename(inbox / "new" / name)
        n += 1
    return n


def cmd_demo(ns: argparse.Namespace) -> int:
    var = Path(ns.var).resolve()
    var.mkdir(parents=True, exist_ok=True)  # the demo's own folder, named on its command line
    settings = load_settings(
        ns.config,
        mailbox_url=f"maildir://{var / 'inbox'}",
        database_url=f"sqlite:///{var / 'triage.db'}",
        smtp_url=f"dir://{var / 'outbox'}",
        attachments_dir=var / "attachments",
        log_format="text",
        poll_interval=5.0,
        corrections_dir=var / "corrections",
        retrained_model_dir=var / "model",
        # The demo serves http://127.0.0.1 only; a Secure cookie would be lost on some browsers.
        web_cookie_secure=False,
    )
    configure_logging(settings.log_format, settings.log_level)
    samples = Path(ns.samples) if getattr(ns, "samples", None) else DATA_DIR / "samples"
    seeded = seed_inbox(var / "inbox", samples)
    print(f"demo: {seeded} sample messages seeded into {var / 'inbox'}" if seeded
          else f"demo: using the existing inbox {var / 'inbox'}")
    from triage.service import run_service

    if not ns.once:
        print(f"demo: acknowledgments go to {var / 'outbox'}; Ctrl-C to stop")
        if settings.web_enabled and settings.ops_port:
            password = ensure_demo_user(settings.database_url)
            print(f"demo: staff web app on http://{settings.ops_host}:{settings.ops_port}/ "
                  f"(user demo, password {password})")
    code = run_service(settings, once=ns.once)
    if ns.once:
        print_summary(settings.database_url)
    return code


DEMO_USER = "demo"
DEMO_PASSWORD = "demo-password"  # a local demo on 127.0.0.1 only; real users: triage user add


def ensure_demo_user(database_url: str) -> str:
    from triage.desk.users import add_user
    from triage.storage.engine import make_engine, make_sessionmaker
    from triage.storage.migrate import upgrade
    from triage.storage.models import User

    engine = make_engine(database_url)
    try:
        upgrade(engine)
        with make_sessionmaker(engine).begin() as s:
            if s.scalar(select(User.id).where(User.name == DEMO_USER)) is None:
                add_user(s, DEMO_USER, DEMO_PASSWORD, display_name="Demo Engineer",
                         email="demo@itx.net")
    finally:
        engine.dispose()
    return DEMO_PASSWORD


def print_summary(database_url: str) -> None:
    from triage.storage.engine import make_engine, make_sessionmaker
    from triage.storage.models import Message, WorkOrder

    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as s:
        for wo in s.scalars(select(WorkOrder).order_by(WorkOrder.id)):
            flag = " (needs review)" if wo.needs_review else ""
            print(f"{wo.number}  {wo.priority:<6} {wo.request_type:<22} "
                  f"{wo.confidence:.2f}  {wo.requester}{flag}")
        for m in s.scalars(select(Message).where(Message.disposition != "work_order")
                           .order_by(Message.id)):
            print(f"{'':10} {m.disposition:<12} {m.reason or '':<22} {m.from_addr}")
    engine.dispose()
