"""The staff web app in a real browser (Debian's Chromium, headless, driven by Playwright):
log in, filter the queue, reclassify, reply, and hostile mail that must not run a script.

The database is seeded through the real pipeline (tests/browser.py), so every page shows the
classifier's own decisions; what the browser shows is checked against the database.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, expect
from sqlalchemy import func, select

from tests.browser import (
    STAFF,
    STAFF_DISPLAY,
    STAFF_PASSWORD,
    XSS_FILENAME,
    XSS_HTML,
    XSS_MESSAGE_ID,
    XSS_SENDER_NAME,
    XSS_SUBJECT,
    XSS_TEXT,
    Site,
    log_in,
    new_page,
    sample_id,
)
from triage.desk.screened import awaiting_count
from triage.storage.models import Event, Message, Outbox, WorkOrder
from triage.web.app import LOGIN_CSRF_COOKIE, SESSION_COOKIE

ROWS = "table.queue tbody tr[data-number]"


def shown_numbers(page: Page) -> set[str]:
    return {n for n in page.locator(ROWS).evaluate_all(
        "rows => rows.map(r => r.dataset.number)")}


def active_numbers(site: Site, **where: str) -> set[str]:
    with site.c.reads() as s:
        stmt = select(WorkOrder.number).where(WorkOrder.status != "resolved")
        for column, value in where.items():
            stmt = stmt.where(getattr(WorkOrder, column) == value)
        return set(s.scalars(stmt))


# ---- login -------------------------------------------------------------------------------
def test_login_wrong_password_then_right_one_sets_a_protected_session_cookie(
        site: Site, page: Page) -> None:
    page.goto(site.url("/queue"))
    assert page.url == site.url("/login?next=%2Fqueue")  # not signed in: sent to the login form

    page.fill("input[name=name]", STAFF)
    page.fill("input[name=password]", "not the password")
    with page.expect_navigation() as nav:
        page.click("form[action='/login'] button[type=submit]")
    assert nav.value is not None and nav.value.status == 401
    expect(page.locator(".flash.error")).to_have_text("Wrong user name or password.")
    assert SESSION_COOKIE not in {c["name"] for c in page.context.cookies()}

    page.fill("input[name=name]", STAFF)
    page.fill("input[name=password]", STAFF_PASSWORD)
    with page.expect_navigation():
        page.click("form[action='/login'] button[type=submit]")
    assert page.url == site.url("/queue")
    expect(page.locator("header.top .who")).to_have_text(STAFF_DISPLAY)
    expect(page.locator(ROWS)).to_have_count(len(active_numbers(site)))

    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies[SESSION_COOKIE]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Lax"
    assert session["secure"] is True  # Chromium keeps a Secure cookie from http://127.0.0.1
    assert session["path"] == "/"
    assert LOGIN_CSRF_COOKIE not in cookies  # the login form's token is spent
    # HttpOnly in practice: the page's own script cannot read the session.
    assert SESSION_COOKIE not in page.evaluate("document.cookie")


# ---- queue -------------------------------------------------------------------------------
def test_filter_the_queue_by_type_and_by_priority(site: Site, page: Page) -> None:
    log_in(page, site)
    everything = shown_numbers(page)
    assert everything == active_numbers(site)

    page.select_option("form.filters select[name=type]", "website_down")
    with page.expect_navigation():
        page.click("form.filters button[type=submit]")
    assert "type=website_down" in page.url
    websites = shown_numbers(page)
    assert websites == active_numbers(site, request_type="website_down")
    assert 0 < len(websites) < len(everything)
    for cell in page.locator(f"{ROWS} td:nth-child(4)").all_inner_texts():
        assert cell == "website down"
    expect(page.locator("form.filters select[name=type]")).to_have_value("website_down")

    page.select_option("form.filters select[name=type]", "")
    page.select_option("form.filters select[name=priority]", "high")
    with page.expect_navigation():
        page.click("form.filters button[type=submit]")
    high = shown_numbers(page)
    assert high == active_numbers(site, priority="high")
    assert high and not high & websites  # the rows changed: none of the urgent websites
    assert set(page.locator(f"{ROWS} .prio").all_inner_texts()) == {"high"}


# ---- one work order ----------------------------------------------------------------------
def test_reclassify_changes_type_priority_due_times_and_the_audit_trail(
        site: Site, page: Page) -> None:
    number = site.number_of(sample_id("03-"))  # "Your connection is not private"
    before = site.work_order(number)
    assert (before.request_type, before.priority) == ("website_down", "urgent")
    assert before.callback_due is None  # website_down has a 4 h restore and no call back

    log_in(page, site)
    page.click(f"{ROWS}[data-number='{number}'] a")
    assert page.url == site.url(f"/work-orders/{number}")
    due_before = page.locator("table.clocks").first.inner_text()

    form = page.locator("form.reclassify")
    form.locator("select[name=request_type]").select_option("email_problem")
    form.locator("select[name=priority]").select_option("high")
    with page.expect_navigation():
        form.locator("button[type=submit]").click()

    expect(page.locator(".flash.ok")).to_have_text("Done: reclassified.")
    expect(page.locator("header.wo-head .type")).to_have_text("email problem")
    expect(page.locator("header.wo-head .prio")).to_have_text("high")
    last = page.locator("ol.audit li").last
    expect(last).to_contain_text(f"{STAFF} reclassified")
    expect(last).to_contain_text("type=email_problem")
    expect(last).to_contain_text("priority=high")
    expect(last).to_contain_text("was_type=website_down")
    expect(last).to_contain_text("was_priority=urgent")

    after = site.work_order(number)
    assert (after.request_type, after.priority) == ("email_problem", "high")
    assert after.callback_due is not None  # email_problem: call back within 1 business hour
    assert after.fulfil_due != before.fulfil_due  # 48 h for high instead of a 4 h restore
    due_after = page.locator("table.clocks").first.inner_text()
    assert due_after != due_before
    assert "Call back" in due_after and "Call back" not in due_before


def test_reply_shows_in_the_thread_queues_an_outbox_row_and_records_first_response(
        site: Site, page: Page) -> None:
    number = site.number_of(sample_id("06-"))  # "SERVER DOWN - can't connect to DMS"
    assert site.work_order(number).first_response_at is None
    text = "Hi Marco,\nwe are on the server now and will call you within the hour.\nAlice"

    log_in(page, site, path=f"/work-orders/{number}")  # `next` brings us back here
    assert page.url == site.url(f"/work-orders/{number}")
    expect(page.locator("dt:text-is('First response') + dd")).to_have_text("—")
    page.fill("#reply-body", text)
    with page.expect_navigation():
        page.click("form.reply button[name=send]")

    expect(page.locator(".flash.ok")).to_have_text("Done: reply queued.")
    reply = page.locator("article.msg.out.reply")
    expect(reply).to_have_count(1)
    expect(reply.locator("header")).to_contain_text(f"Reply by {STAFF_DISPLAY}")
    expect(reply.locator("pre.body")).to_have_text(text)
    expect(page.locator("dt:text-is('First response') + dd")).not_to_have_text("—")
    expect(page.locator("ol.audit li").last).to_contain_text(f"{STAFF} replied")

    with site.c.reads() as s:
        wo = s.scalar(select(WorkOrder).where(WorkOrder.number == number))
        assert wo is not None and wo.first_response_at is not None
        assert wo.status == "open"
        rows = list(s.scalars(select(Outbox).where(Outbox.work_order_id == wo.id,
                                                   Outbox.kind == "reply")))
        assert len(rows) == 1
        assert rows[0].to_addr == wo.requester == "marco@dinapoliford.com"
        assert rows[0].context["body"] == text
        assert rows[0].context["agent"] == STAFF_DISPLAY
        assert rows[0].status == "pending"
        replied = s.scalar(select(Event).where(Event.work_order_id == wo.id,
                                               Event.action == "replied"))
        assert replied is not None and replied.detail["first_response"] is True


def test_a_form_with_a_tampered_csrf_token_is_refused(site: Site, page: Page) -> None:
    number = site.number_of(sample_id("13-"))  # "New printer for the treatment room"
    log_in(page, site, path=f"/work-orders/{number}")
    page.locator("form.note input[name=csrf_token]").evaluate("e => e.value = 'forged'")
    page.fill("#note-text", "should not be saved")
    with page.expect_navigation() as nav:
        page.click("form.note button[type=submit]")
    assert nav.value is not None and nav.value.status == 403
    with site.c.reads() as s:
        wo_id = s.scalar(select(WorkOrder.id).where(WorkOrder.number == number))
        assert s.scalar(select(Event).where(Event.work_order_id == wo_id,
                                            Event.action == "note")) is None


# ---- hostile content ---------------------------------------------------------------------
@contextlib.contextmanager
def watched(browser: Browser, *, bypass_csp: bool = False
            ) -> Iterator[tuple[Page, list[str], list[str]]]:
    """A page in a fresh context that records every dialog and console message."""
    with new_page(browser, bypass_csp=bypass_csp) as pg:
        dialogs: list[str] = []
        console: list[str] = []

        def on_dialog(d: Dialog) -> None:
            dialogs.append(d.message)
            d.dismiss()

        def on_console(m: ConsoleMessage) -> None:
            console.append(m.text)

        pg.on("dialog", on_dialog)
        pg.on("console", on_console)
        pg.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        yield pg, dialogs, console


@pytest.fixture(params=["csp", "no-csp"])
def watched_page(request: pytest.FixtureRequest, browser: Browser
                 ) -> Iterator[tuple[Page, list[str], list[str]]]:
    """With ``no-csp`` the browser ignores the Content-Security-Policy, so only the escaping
    and the HTML cleaning stand between a payload and a running script."""
    with watched(browser, bypass_csp=request.param == "no-csp") as w:
        yield w


def no_script_ran(page: Page, dialogs: list[str], console: list[str]) -> None:
    page.wait_for_load_state("networkidle")  # broken images have failed, onerror had its chance
    assert dialogs == []
    assert page.evaluate("typeof window.__xss") == "undefined"
    # The CSP had nothing to refuse (it logs each refusal), and no script failed.
    assert [m for m in console if "Content Security Policy" in m or "pageerror" in m] == []
    # Nothing that could run a script made it into the page, whatever the CSP says.
    assert page.evaluate("""() => {
        const bad = [];
        for (const el of document.querySelectorAll('main, main *')) {
            if (['SCRIPT', 'IFRAME', 'SVG', 'svg', 'IMG', 'OBJECT', 'EMBED', 'MATH', 'math']
                    .includes(el.tagName)) bad.push(el.tagName);
            for (const a of el.attributes) {
                if (a.name.startsWith('on') || a.name === 'style'
                        || /^\\s*javascript:/i.test(a.value)) bad.push(el.tagName + ' ' + a.name);
            }
        }
        return bad;
    }""") == []


def test_script_payloads_in_mail_are_shown_as_text_and_never_run(
        site: Site, watched_page: tuple[Page, list[str], list[str]]) -> None:
    page, dialogs, console = watched_page
    number = site.number_of(XSS_MESSAGE_ID)
    log_in(page, site)

    no_script_ran(page, dialogs, console)
    row = page.locator(f"{ROWS}[data-number='{number}']")
    expect(row.locator("td.subject")).to_have_text(XSS_SUBJECT)

    row.locator("a").first.click()
    page.wait_for_url(site.url(f"/work-orders/{number}"))
    message = page.locator("article.msg.in").first
    html = message.locator("details.html")
    html.locator("summary").click()  # show the cleaned HTML version
    body = html.locator(".html-body")
    expect(body).to_be_visible()
    no_script_ran(page, dialogs, console)

    # Every payload is there, as text.
    expect(page).to_have_title(f"{number} · ITX Triage")
    expect(page.locator("h1 .subject")).to_have_text(XSS_SUBJECT)
    expect(message.locator("header b")).to_have_text(XSS_SENDER_NAME)
    expect(message.locator(".msg-subject")).to_have_text(XSS_SUBJECT)
    expect(message.locator("pre.body")).to_have_text(XSS_TEXT.strip())
    expect(page.locator("dt:text-is('Requester') + dd")).to_contain_text(XSS_SENDER_NAME)
    link = message.locator("ul.attachments a")
    expect(link).to_have_text(XSS_FILENAME)
    # The HTML version keeps its text and safe links, and says what it blocked.
    expect(html.locator("summary")).to_contain_text("remote images blocked")
    expect(body).to_contain_text("Printer broken since Monday.")
    hrefs = body.locator("a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert "https://itx.net/" in hrefs
    assert all(h is None or h.startswith(("https:", "http:", "mailto:")) for h in hrefs)
    body.get_by_text("click me").click()  # its javascript: href was removed: nothing happens
    assert page.url == site.url(f"/work-orders/{number}")
    no_script_ran(page, dialogs, console)

    with page.expect_download() as download:
        link.click()
    name = download.value.suggested_filename
    assert name.endswith(".pdf") and '"' not in name and "/" not in name
    assert Path(download.value.path()).read_bytes().startswith(b"%PDF-1.4")
    no_script_ran(page, dialogs, console)


def test_the_payloads_do_run_when_not_escaped(browser: Browser) -> None:
    """The control for the test above: the same payloads, unescaped, in a page of its own
    (no CSP), do raise dialogs and set the global, so 'none there' means something."""
    with watched(browser) as (page, dialogs, _):
        page.set_content(f"<main>{XSS_HTML}<b>{XSS_SUBJECT}</b></main>")
        page.wait_for_load_state("networkidle")
        page.wait_for_function("window.__xss === 1")
        assert {"html-script", "subject"} <= set(dialogs)


# ---- screened mail -----------------------------------------------------------------------
def test_a_screened_message_is_opened_as_a_work_order_from_the_screened_view(
        site: Site, page: Page) -> None:
    """Nothing screened is invisible: the message is listed with why, opened from its page,
    and the work order counts its due dates from the original arrival and is acknowledged."""
    with site.c.reads() as s:
        screened = list(s.scalars(select(Message).where(Message.disposition == "non_request")
                                  .order_by(Message.received_at.desc())))
        awaiting = awaiting_count(s, site.c.clock())
    assert screened, "the sample mail has non-requests"
    # The text model's screening if there is one (the case that can hide a request).
    m = next((x for x in screened if x.screened_by == "model"), screened[0])
    arrived = m.received_at
    assert arrived < site.c.clock() - timedelta(minutes=30)  # long enough ago to tell apart

    log_in(page, site)
    link = page.locator("header.top nav a.screened-link")
    if awaiting:
        expect(link.locator(".nav-count")).to_have_text(str(awaiting))
    with page.expect_navigation():
        link.click()
    assert page.url == site.url("/screened")
    rows = page.locator("table.screened tbody tr[data-message]")
    with site.c.reads() as s:
        listed = s.scalar(select(func.count()).select_from(Message).where(
            Message.disposition.in_(("non_request", "quarantined"))))
    expect(rows).to_have_count(int(listed or 0))
    row = page.locator(f"table.screened tbody tr[data-message='{m.id}']")
    expect(row.locator("td.subject")).to_have_text(m.subject)
    expect(row).to_have_attribute("data-kind", m.reason or "")
    expect(row.locator("td.reason")).not_to_be_empty()

    with page.expect_navigation():
        row.locator("td.subject a").click()
    assert page.url == site.url(f"/screened/{m.id}")
    expect(page.locator("article.msg.in pre.body")).to_have_text(m.body_text.strip())
    form = page.locator("form.open-wo")
    form.locator("select[name=request_type]").select_option("email_problem")
    with page.expect_navigation():
        form.locator("button[type=submit]").click()

    expect(page.locator(".flash.ok")).to_have_text("Done: opened from Screened.")
    number = page.url.rsplit("/", 1)[-1].split("?")[0]
    wo = site.work_order(number)
    assert (wo.request_type, wo.requester) == ("email_problem", m.from_addr)
    assert wo.received_at == arrived
    due = site.c.policy.due("email_problem", wo.priority, wo.contract, arrived)
    assert (wo.response_due, wo.callback_due, wo.fulfil_due) == (
        due.response_due, due.callback_due, due.fulfil_due)
    tz = site.c.policy.calendar(wo.contract).tz
    shown = arrived.astimezone(tz).strftime("%a %d %b %Y %H:%M %Z")
    expect(page.locator("dt:text-is('Received') + dd")).to_have_text(shown)
    expect(page.locator("table.clocks").first).to_contain_text(
        due.response_due.astimezone(tz).strftime("%a %d %b %Y %H:%M %Z"))
    expect(page.locator("ol.audit li").last).to_contain_text(f"{STAFF} opened from screened")
    with site.c.reads() as s:
        acks = list(s.scalars(select(Outbox).where(Outbox.work_order_id == wo.id,
                                                   Outbox.kind == "ack")))
        assert [(a.to_addr, a.status) for a in acks] == [(m.from_addr, "pending")]
        assert s.scalar(select(Message.disposition).where(Message.id == m.id)) == "work_order"

    # It left the list, and a second submit of the same form opens nothing new.
    page.goto(site.url("/screened"))
    expect(page.locator(f"table.screened tbody tr[data-message='{m.id}']")).to_have_count(0)
    page.goto(site.url(f"/screened/{m.id}"))
    expect(page.locator(".flash.ok")).to_contain_text(f"Opened as {number}")
    expect(page.locator("form.open-wo")).to_have_count(0)


def test_a_direction_override_in_an_attachment_name_is_shown_not_obeyed(
        site: Site, page: Page) -> None:
    """``invoice<U+202E>fdp.exe`` must not read as ``invoice…exe.pdf``: Chromium shows the
    control as a mark and the name is isolated from what surrounds it."""
    from triage.storage.models import AttachmentRow

    number = site.number_of(XSS_MESSAGE_ID)
    with site.c.sessions.begin() as s:
        att = s.scalar(select(AttachmentRow).join(Message)
                       .where(Message.work_order_id == select(WorkOrder.id)
                              .where(WorkOrder.number == number).scalar_subquery()))
        assert att is not None
        att_id, before = att.id, att.filename
        att.filename = "invoice\u202efdp.exe"
    try:
        log_in(page, site)
        page.goto(site.url(f"/work-orders/{number}"))
        link = page.locator(f"ul.attachments a[href$='/attachments/{att_id}']")
        expect(link).to_have_text("invoice[U+202E]fdp.exe")
        assert link.locator("bdi").evaluate("e => getComputedStyle(e).unicodeBidi") == "isolate"
        assert "\u202e" not in link.inner_text()
    finally:
        with site.c.sessions.begin() as s:
            row = s.get(AttachmentRow, att_id)
            assert row is not None
            row.filename = before
