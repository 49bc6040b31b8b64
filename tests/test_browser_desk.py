"""The desk features of issue 19 in real Chromium (tests/browser.py: a database seeded
through the real pipeline, the app on a real port): two technicians colliding on one work
order, full-text search from the queue's box, a canned reply inserted without script, a bulk
reassignment of 50 rows, and the client's history beside a work order."""

from __future__ import annotations

from playwright.sync_api import Page, expect
from sqlalchemy import select

from tests.browser import OTHER_STAFF, XSS_MESSAGE_ID, Site, log_in
from triage.storage.models import Event, Message, Outbox, WorkOrder


def any_open_number(site: Site) -> str:
    with site.c.reads() as s:
        n = s.scalar(select(WorkOrder.number).where(WorkOrder.status != "resolved")
                     .order_by(WorkOrder.id))
    assert n
    return n


def test_two_technicians_collide_and_the_second_sees_what_changed(
        site: Site, page: Page, second: Page) -> None:
    number = any_open_number(site)
    log_in(page, site, path=f"/work-orders/{number}")
    log_in(second, site, OTHER_STAFF[0], OTHER_STAFF[1], path=f"/work-orders/{number}")
    before = site.work_order(number).version
    # Alice starts typing a reply while Ben, on his own page, adds a note and assigns himself.
    page.fill("#reply-body", "Hi, could you restart the PC and try again?")
    second.fill("#note-text", "Spoke to them <b>by phone</b>; on it.")
    with second.expect_navigation():
        second.click("form.note button[type=submit]")
    expect(second.locator(".flash.ok")).to_contain_text("note added")
    second.select_option("form[action$='/assign'] select[name=assignee]", OTHER_STAFF[0])
    with second.expect_navigation():
        second.click("form[action$='/assign'] button[type=submit]")
    assert site.work_order(number).version == before + 2
    with page.expect_navigation():
        page.click("form.reply button[name=send]")
    # Refused: the changes since Alice's page, Ben's note as text, her words still there.
    expect(page.locator(".flash.error")).to_contain_text("changed since this page was loaded")
    changes = page.locator("section.conflict ol.changes li")
    expect(changes).to_have_count(2)
    expect(changes.nth(0)).to_contain_text(OTHER_STAFF[0])
    expect(changes.nth(0)).to_contain_text("Spoke to them <b>by phone</b>; on it.")
    expect(changes.nth(1)).to_contain_text("assigned")
    expect(page.locator("#reply-body")).to_have_value(
        "Hi, could you restart the PC and try again?")
    wo = site.work_order(number)
    with site.c.reads() as s:
        assert s.scalar(select(Outbox.id).where(
            Outbox.work_order_id == wo.id, Outbox.kind == "reply",
            Outbox.context["agent"].as_string() == "Alice Moreno")) is None
    # Having seen the changes, she sends it again from the page she now has.
    with page.expect_navigation():
        page.click("form.reply button[name=send]")
    expect(page.locator(".flash.ok")).to_contain_text("reply queued")
    expect(page.locator("article.msg.reply pre.body").last).to_have_text(
        "Hi, could you restart the PC and try again?")
    with site.c.reads() as s:
        last = s.scalars(select(Event).where(Event.work_order_id == wo.id)
                         .order_by(Event.id.desc())).first()
    assert last is not None and last.action == "replied" and last.actor == "alice"


def test_the_queue_search_box_finds_words_in_bodies_with_highlights(
        site: Site, page: Page) -> None:
    log_in(page, site)
    # The hostile sample's body says "front desk printer stopped printing" beside scripts.
    page.fill("form.filters input[name=q]", "stopped printing")
    with page.expect_navigation():
        page.click("form.filters button[type=submit]")
    expect(page.locator("p.summary")).to_contain_text("best match first")
    rows = page.locator("table.queue tbody tr[data-number]")
    numbers = rows.evaluate_all("rows => rows.map(r => r.dataset.number)")
    assert site.number_of(XSS_MESSAGE_ID) in numbers
    with site.c.reads() as s:  # every row found has a message with both words (stemmed)
        for number in numbers:
            texts = [(m.subject + " " + m.body_text).lower() for m in s.scalars(
                select(Message).join(WorkOrder, WorkOrder.id == Message.work_order_id)
                .where(WorkOrder.number == number))]
            assert any("stop" in t and "print" in t for t in texts), number
    marks = page.locator("td.subject .snippet mark").all_text_contents()
    assert {m.lower() for m in marks} >= {"stopped", "printing"}
    assert page.evaluate("() => window.__xss") is None  # the snippet's scripts stay text
    snippet = page.locator(f"tr[data-number='{site.number_of(XSS_MESSAGE_ID)}'] .snippet")
    expect(snippet.locator("script")).to_have_count(0)
