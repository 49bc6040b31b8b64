"""Merging two work orders from the work-order page in real Chromium (tests/browser.py: a
database seeded through the real pipeline, the app on a real port), without script."""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import func, select

from tests.browser import Site, log_in, running_site
from triage.storage.models import Client, Message, WorkOrder


def request(n: int, frm: str, subject: str, text: str) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = frm, "helpdesk@itx.net", subject
    m["Message-ID"] = f"<merge-{n}@brightline-dental.com>"
    m["Date"] = f"Wed, 25 Nov 2026 1{n}:00:00 -0500"
    m.set_content(text)
    return m.as_bytes()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The sample mail and two requests from one client about the same printer."""
    extra = [request(1, "Pat Lee <pat@brightline-dental.com>", "Front desk printer offline",
                     "The front desk printer shows offline since this morning."),
             request(2, "Sam Roy <sam@brightline-dental.com>", "Printer at reception",
                     "Reception cannot print anything, the printer says offline.")]
    with running_site(tmp_path_factory.mktemp("merge"), extra=extra) as s:
        yield s


def pair_of_one_client(site: Site) -> tuple[str, str]:
    """Two open work orders of one client, earlier first."""
    with site.c.reads() as s:
        client_id = s.scalar(
            select(WorkOrder.client_id).join(Client, Client.id == WorkOrder.client_id)
            .where(WorkOrder.status != "resolved", Client.domain == "brightline-dental.com")
            .group_by(WorkOrder.client_id).having(func.count() >= 2).limit(1))
        assert client_id is not None, "the sample inbox has a client with two requests"
        first, later = s.scalars(select(WorkOrder.number).where(
            WorkOrder.client_id == client_id, WorkOrder.status != "resolved")
            .order_by(WorkOrder.received_at, WorkOrder.id).limit(2)).all()
    assert first and later
    return first, later


def other_clients(site: Site, number: str) -> str:
    with site.c.reads() as s:
        client_id = s.scalar(select(WorkOrder.client_id).where(WorkOrder.number == number))
        other = s.scalar(select(WorkOrder.number).where(WorkOrder.client_id != client_id)
                         .order_by(WorkOrder.id).limit(1))
    assert other
    return other


def test_merge_two_work_orders_from_the_page(site: Site, page: Page) -> None:
    first, later = pair_of_one_client(site)
    later_subjects = [m for (m,) in site.c.reads().execute(
        select(Message.subject).join(WorkOrder, WorkOrder.id == Message.work_order_id)
        .where(WorkOrder.number == later))]
    assert later_subjects
    log_in(page, site, path=f"/work-orders/{later}")
    # Another client's work order is refused on the page, nothing changed.
    stranger = other_clients(site, later)
    page.fill("form.merge input[name=other]", stranger)
    with page.expect_navigation():
        page.click("form.merge button[type=submit]")
    expect(page.locator(".flash.error")).to_contain_text("different clients")
    assert site.work_order(stranger).merged_into_id is None
    # From the later one's page, naming the earlier: the later one joins the earlier.
    page.fill("form.merge input[name=other]", first)
    with page.expect_navigation():
        page.click("form.merge button[type=submit]")
    assert page.url.endswith(f"/work-orders/{first}?done=merged")
    expect(page.locator(".flash.ok")).to_contain_text("merged")
    subjects = page.locator("article.msg.in p.msg-subject").all_text_contents()
    assert set(later_subjects) <= set(subjects)
    expect(page.locator("ol.audit li").last).to_contain_text(later)
    # The merged one: its number still opens a page that points on, with no actions left.
    page.goto(site.url(f"/work-orders/{later}"))
    banner = page.locator(".flash.merged")
    expect(banner).to_contain_text(f"Merged into {first}")
    expect(page.locator("section.actions")).to_have_count(0)
    expect(page.locator("form.reply")).to_have_count(0)
    with page.expect_navigation():
        banner.locator("a").click()
    assert page.url.endswith(f"/work-orders/{first}")
    wo = site.work_order(later)
    assert wo.status == "resolved" and wo.merged_into_id == site.work_order(first).id
