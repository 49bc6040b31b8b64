"""Input at the edges never gives a 500 (ids, numbers, dates past what the database or a time
zone can hold), page alerts never come from the URL, and direction controls in client text
are isolated and shown. Uses the staff app of tests/deskenv.py (ASGI test client, real SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update

from tests.deskenv import XSS, csrf_of, login
from triage.storage.models import AttachmentRow, WorkOrder

HUGE = "99999999999999999999999"
PHISH = "Your account is suspended. Call +1 555 0100 now"


def test_ids_and_numbers_out_of_range_are_4xx_with_a_reason(web) -> None:
    client, _, data = web
    login(client)
    n = data["plain"]
    for path in (f"/work-orders/{n}/attachments/{HUGE}", f"/work-orders/{n}/attachments/0",
                 f"/work-orders/{n}/attachments/-1", f"/screened/{HUGE}",
                 "/work-orders/ITX-1%20OR%201=1", f"/work-orders/{'ITX-' + '9' * 40}"):
        r = client.get(path)
        assert r.status_code == 422, (path, r.status_code)
        assert "Not a valid request" in r.text and "9" * 20 not in r.text
    r = client.get(f"/api/v1/screened/{HUGE}")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "message_id"]
    assert client.get("/queue?page=" + HUGE).status_code == 422
    assert client.get("/queue?assignee=" + "x" * 65).status_code == 422
    assert client.get("/api/v1/work-orders/ITX-999999").status_code == 404


def test_promise_dates_past_the_calendar_are_refused_not_stored(web) -> None:
    client, _, data = web
    login(client)
    n = data["plain"]
    page = client.get(f"/work-orders/{n}")
    token = csrf_of(page.text)
    for value in ("9999-12-31T23:59", "0001-01-01T00:00", "2999-01-01T00:00"):
        r = client.post(f"/work-orders/{n}/promise", data={"csrf_token": token,
                                                          "promised": value})
        assert r.status_code == 422, (value, r.status_code)
        assert "promise date must be between" in r.text or "not a date and time" in r.text
    api = client.get("/api/v1/me").json()["csrf_token"]
    for value in ("0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59-12:00",
                  "0001-01-01T00:00:00+14:00"):
        r = client.post(f"/api/v1/work-orders/{n}/promise", json={"promised_at": value},
                        headers={"X-CSRF-Token": api})
        assert r.status_code == 422, (value, r.text)
        assert "promise date must be between" in r.json()["detail"]
    with data["sessions"]() as s:
        assert s.scalar(select(WorkOrder.promised_at).where(WorkOrder.number == n)) is None
    ok = client.post(f"/work-orders/{n}/promise", data={"csrf_token": token,
                                                       "promised": "2026-12-01T17:00"})
    assert ok.status_code == 303


def test_a_stored_out_of_range_date_still_renders(web) -> None:
    """A row written before the bound (or by hand) must not make its page answer 500."""
    client, _, data = web
    login(client)
    n = data["plain"]
    with data["sessions"].begin() as s:
        s.execute(update(WorkOrder).where(WorkOrder.number == n)
                  .values(promised_at=datetime(1, 1, 1, tzinfo=UTC)))
    r = client.get(f"/work-orders/{n}")
    assert r.status_code == 200 and "0001-01-01T00:00:00+00:00" in r.text


def test_alerts_come_only_from_fixed_keys(web) -> None:
    client, _, data = web
    r = client.get("/login", params={"error": PHISH})
    assert r.status_code == 200 and "Call +1 555" not in r.text and 'role="alert"' not in r.text
    login(client)
    n = data["plain"]
    for params in ({"error": PHISH}, {"done": PHISH}):
        r = client.get(f"/work-orders/{n}", params=params)
        assert r.status_code == 200 and "Call +1 555" not in r.text and "flash" not in r.text
    r = client.get(f"/work-orders/{n}", params={"done": "note added"})
    assert "Done: note added." in r.text
    r = client.get("/screened/1", params={"error": PHISH})
    assert "Call +1 555" not in r.text


def test_direction_controls_in_client_text_are_isolated_and_shown(web) -> None:
    client, _, data = web
    login(client)
    with data["sessions"].begin() as s:
        att = s.scalar(select(AttachmentRow))
        assert att is not None
        att.filename = "invoice\u202efdp.exe"
        s.execute(update(WorkOrder).where(WorkOrder.number == data["hostile"])
                  .values(subject="Refund \u202edneS <b>x</b>",
                          requester_name="\u2067Mallory\u2069"))
    page = client.get(f"/work-orders/{data['hostile']}").text
    assert "\u202e" not in page and "\u2067" not in page
    assert ('<bdi>invoice<span class="bidi-ctl" title="direction control">[U+202E]</span>'
            "fdp.exe</bdi>") in page
    assert "[U+2067]</span>Mallory<span" in page
    queue = client.get("/queue").text
    assert "\u202e" not in queue and "<bdi>Refund <span" in queue
    # The escaping still happens inside <bdi>.
    assert "dneS &lt;b&gt;x&lt;/b&gt;</bdi>" in queue
    assert XSS not in page and "<b>x</b>" not in queue
