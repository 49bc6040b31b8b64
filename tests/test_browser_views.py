"""Saved views and bulk actions in real Chromium (tests/browser.py: the sample mail and 50
more requests ingested through the real pipeline, the app on a real port): a
bulk reassignment of 50 rows with the script's "select all", the same form without script
reporting a row someone else changed meanwhile, and a view saved from the queue, counted in
the navigation, renamed and deleted; each on SQLite and on PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from tests.browser import OTHER_STAFF, Site, log_in, running_site
from tests.conftest import throwaway_pg_database
from triage.storage.models import Event, User, WorkOrder

EXTRA = 50


def request_mail(i: int) -> bytes:
    m = EmailMessage()
    m["From"] = f"Staff {i} <staff{i}@client{i % 7}.example>"
    m["To"] = "helpdesk@itx.net"
    m["Subject"] = f"Printer in room {100 + i} is not printing"
    m["Message-ID"] = f"<bulk-{i}@client{i % 7}.example>"
    m["Date"] = "Mon, 30 Nov 2026 10:00:00 -0500"
    m.set_content(f"Hello, the printer in room {100 + i} stopped printing this morning. "
                  "Can someone look at it please?\n\nThanks")
    return m.as_bytes()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    extra = [request_mail(i) for i in range(EXTRA)]
    with contextlib.ExitStack() as stack:
        url = (stack.enter_context(throwaway_pg_database())
               if request.param == "postgresql" else None)
        site = running_site(tmp_path_factory.mktemp("views"), extra=extra, spacing=600,
                            database_url=url)
        # Seeding runs the pipeline under asyncio.run, which Playwright's loop (already
        # running here for the second database) forbids on this thread.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            entered = pool.submit(stack.enter_context, site).result()
        yield entered


def assigned_events(site: Site, numbers: list[str]) -> dict[str, list[Event]]:
    with site.c.reads() as s:
        rows = s.execute(select(WorkOrder.number, Event)
                         .join(Event, Event.work_order_id == WorkOrder.id)
                         .where(WorkOrder.number.in_(numbers), Event.action == "assigned")
                         .order_by(Event.id)).all()
    out: dict[str, list[Event]] = {n: [] for n in numbers}
    for number, event in rows:
        out[number].append(event)
    return out


def test_a_bulk_reassign_of_50_rows(site: Site, page: Page) -> None:
    log_in(page, site)
    rows = page.locator("table.queue tbody tr[data-number]")
    expect(rows).to_have_count(50)
    numbers = rows.evaluate_all("rows => rows.map(r => r.dataset.number)")
    before = {n: site.work_order(n).version for n in numbers}
    page.check("th.col-number input.select-all")  # the script's "select all"
    expect(page.locator("fieldset.bulk-actions .selected-count")).to_have_text("(50 selected)")
    page.select_option("fieldset.bulk-actions select[name=assignee]", OTHER_STAFF[0])
    with page.expect_navigation():
        page.click("fieldset.bulk-actions button[value=assign]")
    expect(page.locator("h1")).to_have_text("Bulk assign")
    expect(page.locator(".flash.ok")).to_have_text("50 done.")
    expect(page.locator("table.bulk-result tr.outcome-done")).to_have_count(50)
    with site.c.reads() as s:
        ben = s.scalar(select(User.id).where(User.name == OTHER_STAFF[0]))
        got = {n: a for n, a in s.execute(select(WorkOrder.number, WorkOrder.assignee_id)
                                          .where(WorkOrder.number.in_(numbers)))}
    assert got == dict.fromkeys(numbers, ben)
    # One audited action per work order: one event by alice, one new version each.
    events = assigned_events(site, numbers)
    for n in numbers:
        assert [(e.actor, e.detail) for e in events[n]] == [("alice", {"to": "ben"})], n
        assert site.work_order(n).version == before[n] + 1 == events[n][0].wo_version
    # Back on the queue, the defaults count for whoever is signed in.
    with page.expect_navigation():
        page.click("text=Back to the queue")
    mine = page.locator("header nav a.view-link", has_text="Mine").locator(".nav-count")
    expect(mine).to_have_text("0")
    assert page.evaluate("() => window.__xss") is None


def test_without_script_the_bulk_form_reports_a_row_changed_meanwhile(
        site: Site, no_script: Page) -> None:
    page = no_script
    log_in(page, site, path="/queue?assignee=none")
    expect(page.locator("input.select-all")).to_have_count(0)  # no script here
    boxes = page.locator("table.queue tbody input[name=wo]")
    numbers = [v.split("@")[0] for v in boxes.evaluate_all("bs => bs.map(b => b.value)")[:3]]
    assert len(numbers) == 3
    for n in numbers:
        page.check(f"input[name=wo][value^='{n}@']")
    # Another technician changes the second one after this page was loaded.
    site.c.desk.note(numbers[1], OTHER_STAFF[0], "Called them, toner replaced")
    page.select_option("fieldset.bulk-actions select[name=status]", "waiting_client")
    with page.expect_navigation():
        page.click("fieldset.bulk-actions button[value=status]")
    expect(page.locator(".flash.error")).to_have_text("2 done, 1 not done — see each row below.")
    refused = page.locator(f"table.bulk-result tr[data-number='{numbers[1]}']")
    expect(refused).to_have_class(re.compile("outcome-conflict"))
    expect(refused.locator("td.why")).to_contain_text("ben note")
    assert [site.work_order(n).status for n in numbers] == [
        "waiting_client", "new", "waiting_client"]


def test_a_view_saved_from_the_queue_is_counted_renamed_and_deleted(
        site: Site, page: Page) -> None:
    log_in(page, site, path="/queue?status=all&q=printing")
    total = int(page.locator("p.summary").first.inner_text().split()[0])
    assert total >= EXTRA
    page.fill("form.save-view input[name=name]", "Printers ‮gnitnirp")
    with page.expect_navigation():
        page.click("form.save-view button[type=submit]")
    expect(page.locator(".flash.ok")).to_have_text("Done: view saved.")
    link = page.locator("header nav a.view-link", has_text="Printers")
    expect(link.locator(".nav-count")).to_have_text(str(total))
    expect(link.locator(".bidi-ctl")).to_have_count(1)  # the override shown, not obeyed
    with page.expect_navigation():
        link.click()
    assert page.url.endswith("/queue?status=all&q=printing")
    expect(page.locator("p.summary").first).to_contain_text(f"{total} work orders")
    # Rename and delete on the views page.
    page.goto(site.url("/views"))
    row = page.locator("table.views tr", has_text="Printers")
    row.locator("input[name=name]").fill("Printing")
    with page.expect_navigation():
        row.locator("button", has_text="Rename").click()
    expect(page.locator(".flash.ok")).to_have_text("Done: view renamed.")
    expect(page.locator("header nav a.view-link", has_text="Printing")).to_have_count(1)
    row = page.locator("table.views tr", has_text="Printing")
    with page.expect_navigation():
        row.locator("button", has_text="Delete").click()
    expect(page.locator(".flash.ok")).to_have_text("Done: view deleted.")
    expect(page.locator("header nav a.view-link")).to_have_count(2)  # the defaults
