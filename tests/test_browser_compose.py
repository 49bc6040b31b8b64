"""Composing replies in real Chromium (tests/browser.py: the real pipeline seeds the
database, the app runs on a real port): a canned reply written on its page, inserted into
a reply by the script (no page load) and without script (the form posts), sent with a
status; a reply with a file chosen in the file input, listed on the thread."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from tests.browser import STAFF_DISPLAY, Site, log_in, no_sideways_scroll
from triage.desk.canned import CannedReplies, listing
from triage.storage.models import AttachmentRow, Outbox, WorkOrder


def open_work_order(site: Site, skip: int = 0) -> WorkOrder:
    with site.c.reads() as s:
        wo = s.scalars(select(WorkOrder).where(WorkOrder.status != "resolved",
                                               WorkOrder.requester != "")
                       .order_by(WorkOrder.id).offset(skip)).first()
        assert wo is not None
        s.expunge(wo)
    return wo


def write_canned(page: Page, site: Site, name: str, body: str, request_type: str) -> None:
    page.goto(site.url("/canned"))
    page.fill("#canned-name", name)
    page.fill("#canned-body", body)
    page.check(f"input[name=request_types][value={request_type}]")
    with page.expect_navigation():
        page.click("form.canned-edit button[type=submit]")
    expect(page.locator(".flash.ok")).to_contain_text("canned saved")
    expect(page.locator("table.canned")).to_contain_text(name)


def test_a_canned_reply_is_inserted_by_the_script_and_sent_with_a_status(
        site: Site, page: Page) -> None:
    problems: list[str] = []  # script errors, CSP refusals, failed loads (but the favicon)
    page.on("console", lambda m: problems.append(m.text)
            if m.type == "error" and "Failed to load resource" not in m.text else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
    wo = open_work_order(site)
    log_in(page, site, path="/canned")
    write_canned(page, site, "Browser greeting",
                 "Hello {{ client_name }}, {{ number }} is with us.\n{{ agent }}",
                 wo.request_type)
    page.goto(site.url(f"/work-orders/{wo.number}"))
    expect(page.locator("#canned-pick optgroup").first).to_have_attribute(
        "label", f"Suggested for {wo.request_type.replace('_', ' ')}")
    page.select_option("#canned-pick", label="Browser greeting")
    page.fill("#reply-body", "Thanks for writing.")
    page.evaluate("window.__samePage = true")
    page.click("button.insert-canned")
    expect(page.locator(".canned-status")).to_have_text("Inserted.")
    assert page.evaluate("window.__samePage") is True  # no page load: the script did it
    name = wo.requester_name or wo.requester
    greeting = f"Hello {name}, {wo.number} is with us.\n{STAFF_DISPLAY}"
    # After what was typed, as the server does it without script.
    expect(page.locator("#reply-body")).to_have_value(f"Thanks for writing.\n\n{greeting}")
    # Where the cursor is, when it was placed inside the text.
    page.locator("#reply-body").evaluate("b => { b.focus(); b.setSelectionRange(0, 0); }")
    page.click("button.insert-canned")
    expect(page.locator("#reply-body")).to_have_value(
        f"{greeting}Thanks for writing.\n\n{greeting}")
    with page.expect_navigation():
        page.click("button.send-wait")
    expect(page.locator(".flash.ok")).to_contain_text("reply queued, waiting on client")
    expect(page.locator("article.msg.reply pre.body").last).to_contain_text(
        f"{wo.number} is with us.")
    assert site.work_order(wo.number).status == "waiting_client"
    assert problems == []


def test_a_canned_reply_is_inserted_without_script(site: Site, no_script: Page) -> None:
    wo = open_work_order(site, skip=1)
    log_in(no_script, site, path="/canned")
    write_canned(no_script, site, "No-script note", "Dear {{ client_name }} ({{ number }})",
                 wo.request_type)
    no_script.goto(site.url(f"/work-orders/{wo.number}"))
    no_script.select_option("#canned-pick", label="No-script note")
    no_script.fill("#reply-body", "First line.")
    with no_script.expect_navigation():
        no_script.click("button.insert-canned")
    name = wo.requester_name or wo.requester
    expect(no_script.locator("#reply-body")).to_have_value(
        f"First line.\n\nDear {name} ({wo.number})")
    with no_script.expect_navigation():
        no_script.click("form.reply button[name=send]")
    expect(no_script.locator(".flash.ok")).to_contain_text("reply queued")


def test_a_reply_with_an_attachment_is_listed_and_queued_with_it(site: Site,
                                                                 page: Page) -> None:
    wo = open_work_order(site, skip=2)
    log_in(page, site, path=f"/work-orders/{wo.number}")
    page.fill("#reply-body", "The settings file is attached.")
    page.set_input_files("#reply-files", files=[
        {"name": "outlook-settings.txt", "mimeType": "text/plain",
         "buffer": b"server=mail.itx.net\n"}])
    with page.expect_navigation():
        page.click("button.send-resolve")
    expect(page.locator(".flash.ok")).to_contain_text("reply queued and resolved")
    link = page.locator("article.msg.reply ul.attachments a").last
    expect(link).to_have_text("outlook-settings.txt")
    with page.expect_download() as got:
        link.click()
    path = got.value.path()
    assert path is not None and path.read_bytes() == b"server=mail.itx.net\n"
    with site.c.reads() as s:
        row = s.scalars(select(Outbox).where(Outbox.work_order_id == wo.id,
                                             Outbox.kind == "reply")
                        .order_by(Outbox.id.desc())).first()
        assert row is not None
        assert [a["filename"] for a in row.context["attachments"]] == ["outlook-settings.txt"]
        assert s.scalar(select(AttachmentRow.size).where(AttachmentRow.outbox_id == row.id)) \
            == len(b"server=mail.itx.net\n")
    assert site.work_order(wo.number).status == "resolved"


@pytest.mark.parametrize("width", [800, 1400])
def test_the_compose_pages_fit_the_window(site: Site, page: Page, width: int) -> None:
    wo = open_work_order(site)
    with site.c.reads() as s:
        have = listing(s)
    if not have:  # run alone: the reply form shows the picker only when there is one
        CannedReplies(site.c.sessions, site.c.policy, site.c.clock).create(
            "alice", "Layout", "Hello {{ client_name }}")
    page.set_viewport_size({"width": width, "height": 900})
    log_in(page, site, path="/canned")
    no_sideways_scroll(page)
    page.goto(site.url(f"/work-orders/{wo.number}"))
    no_sideways_scroll(page)
    for selector in ("button.insert-canned", "button.send", "button.send-wait",
                     "#reply-files"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["x"] + box["width"] <= width, (selector, box)
