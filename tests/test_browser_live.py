"""The live queue and presence in real Chromium (tests/browser.py: the app on a real port,
its database seeded through the real pipeline): a mail delivered to the real Dovecot and
taken in by the daemon's poll appears in an open queue without a reload, with its counts;
two technicians' browsers see each other on a work order, typing included, and a page left
behind by a change says so."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from tests.browser import OTHER_STAFF, STAFF_DISPLAY, Site, log_in, running_site
from triage.config import DATA_DIR, Settings
from triage.storage.models import WorkOrder
from triage.wiring import build

pytestmark = pytest.mark.imap

LIVE_MESSAGE_ID = "live-1@lakeside-vet.example"
# The script polls every 10 s and beats every 20 s; a wait for one of them allows two.
LIVE_WAIT = 45_000


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    samples = sorted((DATA_DIR / "samples").glob("*.eml"))[:4]
    with running_site(tmp_path_factory.mktemp("live"), samples=samples) as s:
        yield s


def new_request() -> bytes:
    m = EmailMessage(policy=SMTP)
    m["From"] = "Priya Raman <priya@lakeside-vet.example>"
    m["To"] = "helpdesk@itx.net"
    m["Subject"] = "Server down: nobody can reach the file share"
    m["Message-ID"] = f"<{LIVE_MESSAGE_ID}>"
    m["Date"] = "Tue, 01 Dec 2026 09:00:00 -0500"
    m.set_content("Since 8am our office server does not answer. Nobody can open the shared "
                  "drive or the practice software. Please call me. Priya")
    return m.as_bytes()


def daemon_poll(site: Site, dovecot, tmp: Path) -> int:  # type: ignore[no-untyped-def]
    """One pass of the daemon's poll (fetch from Dovecot, store, mark) into the site's
    database, by a daemon of its own as a second process sharing the database would be."""
    settings = Settings(
        database_url=site.settings.database_url,
        mailbox_url=f"imap+plain://{dovecot.user}@127.0.0.1:{dovecot.port}/INBOX",
        mailbox_password=dovecot.password, smtp_url=f"dir://{tmp / 'outbox'}",
        attachments_dir=site.settings.attachments_dir, ops_port=0, log_format="text",
        ingest_worker="thread")  # the site's clock, in this process
    c = build(settings, clock=site.c.clock)

    async def poll() -> int:
        await c.runner.mailbox.connect()
        try:
            return await c.runner.process_waiting()
        finally:
            await c.runner.mailbox.close()

    try:  # on a thread of its own: Playwright's sync API runs a loop on this one
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(lambda: asyncio.run(poll())).result(120)
    finally:
        c.engine.dispose()


def test_a_new_mail_appears_in_an_open_queue_without_a_reload(
        site: Site, page: Page, dovecot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log_in(page, site)
    page.evaluate("() => { window.__sameDocument = true; }")
    expect(page.locator("#live-status")).to_have_count(1)  # the script is running
    active = page.locator("section.counts a.count").first.locator("b")
    before = int(active.inner_text())
    dovecot.append(new_request())
    assert daemon_poll(site, dovecot, tmp_path) == 1
    number = site.number_of(LIVE_MESSAGE_ID)
    row = page.locator(f"tr[data-number='{number}']")
    expect(row).to_be_visible(timeout=LIVE_WAIT)
    expect(row).to_have_class(re.compile(r"\blive-new\b"))
    expect(row.locator("td.col-subject")).to_contain_text("nobody can reach the file share")
    expect(active).to_have_text(str(before + 1))
    expect(page.locator("#live-status")).to_contain_text("1 new")
    # A change by someone else (assigned in another process) updates the row in place.
    site.c.desk.assign(number, OTHER_STAFF[0], OTHER_STAFF[0])
    expect(row.locator("td.col-assignee")).to_have_text(OTHER_STAFF[0], timeout=LIVE_WAIT)
    expect(row).to_have_class(re.compile(r"\blive-changed\b"))
    assert page.evaluate("() => window.__sameDocument") is True  # never reloaded


def test_two_technicians_see_each_other_on_a_work_order(
        site: Site, page: Page, second: Page) -> None:
    with site.c.reads() as s:
        number = s.scalar(select(WorkOrder.number).where(WorkOrder.status != "resolved")
                          .order_by(WorkOrder.id))
    assert number
    log_in(page, site, path=f"/work-orders/{number}")
    log_in(second, site, OTHER_STAFF[0], OTHER_STAFF[1], path=f"/work-orders/{number}")
    here, there = page.locator("#presence"), second.locator("#presence")
    expect(there).to_contain_text(f"{STAFF_DISPLAY} (viewing)", timeout=LIVE_WAIT)
    expect(here).to_contain_text(f"{OTHER_STAFF[2]} (viewing)", timeout=LIVE_WAIT)
    # Ben starts a reply: Alice sees him replying.
    second.locator("#reply-body").press_sequentially("Hello Dana, ")
    expect(here.locator(".who-here.replying bdi")).to_have_text(OTHER_STAFF[2],
                                                               timeout=LIVE_WAIT)
    # Ben adds a note: Alice's page says it is out of date before she sends anything.
    second.fill("#note-text", "Called, no answer")
    with second.expect_navigation():
        second.click("form.note button[type=submit]")
    expect(here.locator(".stale")).to_contain_text("changed since this page was loaded",
                                                   timeout=LIVE_WAIT)
    expect(here.locator(".stale a")).to_have_attribute("href", f"/work-orders/{number}")
    # Ben's post brought him back to the page, so he is still here (no "left" on a post).
    expect(here.locator(".who-here bdi")).to_have_text([OTHER_STAFF[2]])
