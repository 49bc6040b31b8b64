"""The queue and a work order in real headless Chromium at 800, 1280, 1400 and 1600 px: no
sideways scrolling, no clipped clock or due cells, a usable subject column; and what the
technician reads there: the acknowledgment as sent (collapsed), the thread in causal order,
"client replied" in the queue.

The site is seeded through the real pipeline (tests/browser.py), acknowledgments written as
.eml files by the daemon's folder transport, so the page is compared with the mail itself.
"""

from __future__ import annotations

import email
from collections.abc import Iterator
from email import policy as email_policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from tests.browser import Site, log_in, new_page, no_sideways_scroll, sample_id

WIDTHS = (800, 1280, 1400, 1600)
SUBJECT_MIN_PX = 150  # about 20 characters of a subject on one line


@pytest.fixture
def signed_in(browser: Browser, site: Site) -> Iterator[Page]:
    with new_page(browser) as page:
        log_in(page, site)
        yield page


def not_clipped(page: Page, selector: str) -> int:
    """Every element matching ``selector`` shows all its content and ends inside the window;
    returns how many there were."""
    found = page.locator(selector).evaluate_all("""els => els.map(e => ({
        text: e.innerText, scroll: e.scrollWidth, client: e.clientWidth,
        right: e.getBoundingClientRect().right}))""")
    inner = page.evaluate("innerWidth")
    for f in found:
        assert f["scroll"] <= f["client"], f"{selector} {f['text']!r} is cut: {f}"
        assert f["right"] <= inner, f"{selector} {f['text']!r} ends outside the window: {f}"
    return len(found)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_queue_fits_the_window(site: Site, signed_in: Page, width: int) -> None:
    page = signed_in
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(site.url("/queue"))
    no_sideways_scroll(page)
    assert not_clipped(page, "table.queue td.col-due") >= 10
    assert not_clipped(page, "table.queue td.col-sla") >= 10
    widths = page.locator("table.queue td.col-subject").evaluate_all(
        "els => els.map(e => e.getBoundingClientRect().width)")
    assert widths and min(widths) >= SUBJECT_MIN_PX, widths
    # What a narrow window folds away is still on the row, under the subject.
    meta = page.locator("table.queue tbody tr[data-number] td.col-subject").first.evaluate(
        "td => getComputedStyle(td, '::after').content")
    assert (meta not in ("none", "normal", "")) == (width < 1100), meta
    assert page.locator("table.queue th.col-type").is_visible() == (width >= 1100)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_running_clocks_fit_their_box(site: Site, signed_in: Page, width: int) -> None:
    number = site.number_of(sample_id("03-"))  # website down: three running clocks
    page = signed_in
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(site.url(f"/work-orders/{number}"))
    no_sideways_scroll(page)
    assert not_clipped(page, "table.clocks.live td.left") >= 2
    assert not_clipped(page, "table.clocks.live td.used") >= 2
    assert not_clipped(page, "table.clocks.live tr.due-line td") >= 2
    boxes = page.locator("table.clocks.live tbody").evaluate_all("""bodies => bodies.map(b => {
        const r = c => b.querySelector(c).getBoundingClientRect();
        const box = b.closest('section').getBoundingClientRect();
        return {left: r('td.left'), used: r('td.used'), box: box,
                table: b.closest('table').getBoundingClientRect()};
    })""")
    for b in boxes:
        # "12h 00m left" must not run into "0 %", and the table stays inside its box.
        assert b["left"]["right"] <= b["used"]["left"] + 0.5, b
        assert b["table"]["right"] <= b["box"]["right"] + 0.5, b


def sent_text(site: Site, number: str) -> str:
    """The text part of the acknowledgment the folder transport wrote for ``number``."""
    folder = Path(site.settings.smtp_url[len("dir://"):])
    for path in sorted(folder.glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email_policy.default)
        assert isinstance(msg, EmailMessage)
        if msg["X-ITX-Work-Order"] == number and msg["Auto-Submitted"] == "auto-replied":
            part = msg.get_body(("plain",))
            assert part is not None
            return str(part.get_content())
    raise AssertionError(f"no acknowledgment for {number} in {folder}")


def test_the_acknowledgment_reads_as_sent_and_the_follow_up_comes_after_it(
        site: Site, signed_in: Page) -> None:
    number = site.number_of(sample_id("01-"))  # sample 05 is Dana's follow-up to it
    page = signed_in
    page.goto(site.url(f"/work-orders/{number}"))
    kinds = page.locator("section.thread article[data-kind]").evaluate_all(
        "els => els.map(e => e.dataset.kind)")
    assert kinds[:3] == ["in", "ack", "in"], kinds
    details = page.locator("article[data-kind=ack] details.ack")
    assert details.get_attribute("open") is None  # collapsed
    assert not page.locator("article[data-kind=ack] pre.body").is_visible()
    details.locator("summary").click()
    shown = page.locator("article[data-kind=ack] pre.body").inner_text()
    sent = sent_text(site, number)
    assert number in shown
    assert [ln.rstrip() for ln in shown.strip().splitlines()] == \
        [ln.rstrip() for ln in sent.strip().splitlines()]
    assert page.locator(".wo-head .badge.replied").is_visible()


def test_the_queue_says_who_wrote_back_and_names_the_client(
        site: Site, signed_in: Page) -> None:
    page = signed_in
    page.goto(site.url("/queue"))
    dana = site.number_of(sample_id("01-"))
    quiet = site.number_of(sample_id("03-"))  # nobody wrote back on it
    row = page.locator(f"table.queue tr[data-number='{dana}']")
    assert row.locator(".badge.replied").is_visible()
    assert page.locator(f"table.queue tr[data-number='{quiet}'] .badge.replied").count() == 0
    # harborviewdental.com has no recorded name: the requester's name stands in.
    assert row.locator("td.col-client").inner_text().strip() == "Dana Whitfield"
