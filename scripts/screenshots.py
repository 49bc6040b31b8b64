#!/usr/bin/env python
"""Regenerate the README screenshots of the staff web app (docs/screenshots/*.png).

The 24 sample emails go through the real pipeline (parse, screen, classify, open work
orders, acknowledge) into a throwaway SQLite database; a little staff activity is added with
the real desk actions; then Debian's Chromium (headless, via Playwright) logs in and saves
the queue, one work order (a second technician has it open), its reply form with a canned
reply inserted, the Screened view, the canned replies and the result of a bulk action at
1280x900, and the queue again at 800 px wide (queue-narrow.png, the layout under its
breakpoint). The clock is set to a Tuesday afternoon in New York (and runs on from there),
so the SLA column shows a working day, not the hour the script happens to run.

    python scripts/screenshots.py [--out docs/screenshots] [--at 2026-11-24T14:40:00-05:00]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def moving_clock(start: datetime) -> Callable[[], datetime]:
    """``start``, then on with the real time (events keep their order and spacing)."""
    t0 = time.monotonic()

    def now() -> datetime:
        return start + timedelta(seconds=time.monotonic() - t0)

    return now


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    ap.add_argument("--at", default="2026-11-24T14:40:00-05:00",
                    help="the app's 'now' (ISO 8601 with an offset)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--narrow-width", type=int, default=800)
    ap.add_argument("--height", type=int, default=900)
    ns = ap.parse_args(argv)

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from playwright.sync_api import sync_playwright
    from sqlalchemy import select

    from tests.browser import (
        CHROMIUM,
        OTHER_STAFF,
        STAFF,
        STAFF_DISPLAY,
        launch_chromium,
        log_in,
        running_site,
    )
    from triage.config import DATA_DIR
    from triage.desk.canned import CannedReplies
    from triage.desk.views import save_view
    from triage.storage.models import User, WorkOrder

    if not CHROMIUM.exists():
        print(f"screenshots: {CHROMIUM} is missing (apt-get install chromium)", file=sys.stderr)
        return 1
    clock = moving_clock(datetime.fromisoformat(ns.at))
    # Sample order, except that Jack's "Outlook not receiving" (the work order shown) came in
    # last; 01 and 02 stay first (later samples quote ITX-000001 and ITX-000002).
    samples = sorted((DATA_DIR / "samples").glob("*.eml"))
    samples.sort(key=lambda f: f.name.startswith("04-"))
    ns.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="itx-screens-") as tmp, \
            running_site(Path(tmp), clock=clock, spacing=900.0, samples=samples) as site:
        desk = site.c.desk
        with site.c.reads() as s:
            by_subject = {wo.subject: wo.number for wo in s.scalars(select(WorkOrder))}

        def number(fragment: str) -> str:
            return next(n for subj, n in by_subject.items() if fragment in subj)

        # The morning's desk work, through the same actions the pages call.
        ben, ben_name = OTHER_STAFF[0], OTHER_STAFF[2]
        reset = number("Locked out of remote desktop")
        desk.assign(reset, STAFF, STAFF)
        desk.reply(reset, STAFF, "Hi Dana, your account is unlocked and the password reset; "
                   "I have just called you with the temporary one.", agent_name=STAFF_DISPLAY)
        desk.resolve(reset, STAFF)
        h202 = number("H202")
        desk.assign(h202, STAFF, ben)
        desk.reply(h202, ben, "Hi Irene, the database server manager had stopped; restarted, "
                   "and multi-user mode works again.", agent_name=ben_name)
        desk.resolve(h202, ben)
        desk.assign(number("SERVER DOWN"), STAFF, ben)
        desk.assign(number("Drake Tax"), STAFF, STAFF)
        desk.reply(number("new Windows VPS"), STAFF, "Hi Vikas, which Windows Server version "
                   "and how much RAM and disk do you need?", wait_for_client=True,
                   agent_name=STAFF_DISPLAY)
        shown = number("Outlook not receiving new mail")  # urgent type, high: a workaround
        desk.assign(shown, STAFF, STAFF)
        desk.reply(shown, STAFF, "Hi Jack,\n\nThanks for the details. Webmail working means the "
                   "mailbox is fine; it is your Outlook profile. I'll connect to your desktop "
                   "at 3 pm to rebuild it, if that suits you.\n\nAlice, ITX Helpdesk",
                   agent_name=STAFF_DISPLAY)
        desk.note(shown, STAFF, "Exchange shows the mailbox healthy; the Outlook profile's "
                               "cache is corrupt (OST 49.8 GB). Rebuild the profile.")
        canned = CannedReplies(site.c.sessions, site.c.policy, site.c.clock)
        canned.create(STAFF, "Outlook profile rebuild",
                      "Hi {{ client_name }},\n\nYour mailbox is fine on the server; your "
                      "Outlook profile needs rebuilding. I will connect to your computer to do "
                      "it. Reply with a time that suits you.\n\n{{ agent }}, ITX Helpdesk",
                      ["email_problem"])
        canned.create(STAFF, "Password reset done",
                      "Hi {{ client_name }},\n\nYour password for {{ company }} is reset; "
                      "I have just called you with the temporary one.\n\n{{ agent }}",
                      ["password_reset"])
        canned.create(STAFF, "Waiting on your reply",
                      "Hi {{ client_name }},\n\nWe are waiting on your answer to continue "
                      "with {{ number }} ({{ subject }}).\n\n{{ agent }}, ITX Helpdesk")
        with site.c.sessions.begin() as s:
            alice = s.scalars(select(User).where(User.name == STAFF)).one()
            save_view(s, alice.id, "Email, high", {"type": "email_problem",
                                                   "priority": "high"}, site.c.policy)

        with sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                context = browser.new_context(
                    viewport={"width": ns.width, "height": ns.height}, device_scale_factor=1)
                page = context.new_page()
                log_in(page, site)
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(ns.out / "queue.png"))
                # A colleague has the same work order open: the page shows who (presence).
                other = browser.new_context(viewport={"width": ns.width, "height": ns.height})
                other_page = other.new_page()
                log_in(other_page, site, name=ben, password=OTHER_STAFF[1])
                other_page.goto(site.url(f"/work-orders/{shown}"))
                other_page.wait_for_load_state("networkidle")
                page.goto(site.url(f"/work-orders/{shown}"))
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(ns.out / "work-order.png"))
                page.select_option("#canned-pick", label="Outlook profile rebuild")
                page.click("button.insert-canned")
                page.wait_for_function(
                    "document.querySelector('#reply-body').value.includes('Outlook profile')")
                page.locator("form.reply").scroll_into_view_if_needed()
                page.screenshot(path=str(ns.out / "compose.png"))
                other.close()
                page.goto(site.url("/canned"))
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(ns.out / "canned.png"))
                page.goto(site.url("/queue"))
                page.wait_for_load_state("networkidle")
                boxes = page.locator("form.bulk input[name='wo']")
                for i in range(min(4, boxes.count())):
                    boxes.nth(i).check()
                page.select_option("form.bulk select[name='assignee']", ben)
                page.click("form.bulk button[name='action'][value='assign']")
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(ns.out / "bulk.png"))
                page.goto(site.url("/screened"))
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(ns.out / "screened.png"))
                page.set_viewport_size({"width": ns.narrow_width, "height": ns.height})
                page.goto(site.url("/queue"))
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(ns.out / "queue-narrow.png"))
                context.close()
            finally:
                browser.close()
    for name in ("queue.png", "work-order.png", "compose.png", "screened.png", "canned.png",
                 "bulk.png", "queue-narrow.png"):
        print(ns.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
