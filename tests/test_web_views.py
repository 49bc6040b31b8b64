"""Saved views and bulk actions through the HTTP surface (ASGI test client, real SQLite; the
desk layer is tested on both databases in test_views.py): the navigation's counts, saving,
renaming and deleting views by form and API, the queue's bulk form with its per-row report,
the bulk API, and every bound a clear 4xx."""

from __future__ import annotations

import re

from starlette.testclient import TestClient

from tests.deskenv import PASSWORD, csrf_of, login
from triage.desk.bulk import MAX_ROWS


def nav(html: str) -> dict[str, str]:
    """The navigation's views: name -> count."""
    return {name: count for name, count in re.findall(
        r'class="view-link"[^>]*><bdi>([^<]*)</bdi> <b class="nav-count">(\d+)</b>', html)}


def version_of(client: TestClient, number: str) -> int:
    return int(client.get(f"/api/v1/work-orders/{number}").json()["version"])


def test_the_navigation_counts_each_view_on_every_page(web) -> None:
    client, _, data = web
    login(client)
    q = client.get("/queue")
    # Both work orders are urgent and unassigned (the web fixture, tests/deskenv.py).
    assert nav(q.text) == {"Mine": "0", "Unassigned urgent": "2"}
    assert 'href="/queue?assignee=alice"' in q.text
    token = csrf_of(q.text)
    r = client.post(f"/work-orders/{data['plain']}/assign",
                    data={"csrf_token": token, "assignee": "alice"})
    assert r.status_code == 303
    page = client.get(f"/work-orders/{data['plain']}")
    assert nav(page.text) == {"Mine": "1", "Unassigned urgent": "1"}
    assert nav(client.get("/screened").text) == {"Mine": "1", "Unassigned urgent": "1"}


def test_views_are_saved_from_the_queue_renamed_and_deleted(web) -> None:
    client, app, _ = web
    login(client)
    q = client.get("/queue?type=website_down&status=all")
    token = csrf_of(q.text)
    # The queue's save form carries its filters.
    form = re.search(r'<form class="save-view".*?</form>', q.text, re.S)
    assert form is not None
    assert '<input type="hidden" name="type" value="website_down">' in form.group(0)
    assert '<input type="hidden" name="status" value="all">' in form.group(0)
    r = client.post("/views", data={"csrf_token": token, "name": "Sites <down>",
                                    "type": "website_down", "status": "all"})
    assert (r.status_code, r.headers["location"]) == (303, "/views?done=view+saved")
    page = client.get("/views?done=view+saved")
    assert "Done: view saved." in page.text
    assert nav(page.text)["Sites &lt;down&gt;"] == "1"
    assert 'href="/queue?type=website_down&amp;status=all"' in page.text
    view_id = int(re.search(r'data-view="(\d+)"', page.text).group(1))  # type: ignore[union-attr]
    # Refused, each with a clear status and the page again.
    assert client.post("/views", data={"name": "x", "type": "website_down"}).status_code == 422
    assert client.post("/views", data={"csrf_token": "forged", "name": "x"}).status_code == 403
    r = client.post("/views", data={"csrf_token": token, "name": "sites <DOWN>"})
    assert r.status_code == 409 and "already have a view named" in r.text
    r = client.post("/views", data={"csrf_token": token, "name": "Odd", "type": "fax"})
    assert r.status_code == 422 and "unknown type" in r.text
    assert client.post("/views", data={"csrf_token": token, "name": "n" * 201}).status_code == 422
    assert client.get("/views?done=<script>").text.count("Done:") == 0
    # Rename, then delete; another user cannot touch it.
    r = client.post(f"/views/{view_id}/rename", data={"csrf_token": token, "name": "Sites"})
    assert r.headers["location"] == "/views?done=view+renamed"
    assert "Sites" in nav(client.get("/views").text)
    other = TestClient(app, base_url="https://testserver", follow_redirects=False)
    login(other, "bob", PASSWORD)
    other_token = csrf_of(other.get("/queue").text)
    assert other.post(f"/views/{view_id}/delete",
                      data={"csrf_token": other_token}).status_code == 404
    assert "Sites" not in nav(other.get("/queue").text)
    other.close()
    assert client.post(f"/views/{view_id}/delete", data={"csrf_token": token}
                       ).headers["location"] == "/views?done=view+deleted"
    assert nav(client.get("/views").text) == {"Mine": "0", "Unassigned urgent": "2"}
    assert client.post("/views/0/delete", data={"csrf_token": token}).status_code == 422
    assert client.post(f"/views/{2**31}/delete", data={"csrf_token": token}).status_code == 422


def test_the_bulk_form_reports_each_row(web) -> None:
    client, _, data = web
    login(client)
    q = client.get("/queue")
    token = csrf_of(q.text)
    boxes = re.findall(r'<input type="checkbox" name="wo" value="([^"]+)"', q.text)
    plain, hostile = data["plain"], data["hostile"]
    assert sorted(boxes) == sorted([f"{plain}@1", f"{hostile}@1"])
    # Someone else notes on one of them after the page was loaded.
    client.post(f"/work-orders/{hostile}/note", data={"csrf_token": token, "text": "on it"})
    r = client.post("/queue/bulk", data={"csrf_token": token, "action": "assign",
                                         "assignee": "bob", "wo": boxes,
                                         "back": "/queue?priority=urgent"})
    assert r.status_code == 200
    assert "1 done, 1 not done" in r.text
    row = re.search(rf'<tr class="outcome-conflict" data-number="{hostile}">.*?</tr>', r.text,
                    re.S)
    assert row is not None and "alice note" in row.group(0)
    assert 'class="outcome-done" data-number="' + plain in r.text
    assert 'href="/queue?priority=urgent"' in r.text
    api = client.get(f"/api/v1/work-orders/{plain}").json()
    assert api["assignee"] == "bob" and api["version"] == 2
    assert client.get(f"/api/v1/work-orders/{hostile}").json()["assignee"] is None
    # Sent again, the row it changed is refused: the form's version is older now.
    again = client.post("/queue/bulk", data={"csrf_token": token, "action": "assign",
                                             "assignee": "bob", "wo": [f"{plain}@1"]})
    assert 'class="outcome-conflict"' in again.text
    # "Nobody" unassigns; an unchosen assignee is not taken for it.
    r = client.post("/queue/bulk", data={"csrf_token": token, "action": "assign",
                                         "assignee": "", "wo": [f"{plain}@2"]})
    assert r.status_code == 422 and "choose whom to assign to" in r.text
    r = client.post("/queue/bulk", data={"csrf_token": token, "action": "assign",
                                         "assignee": "none", "wo": [f"{plain}@2"]})
    assert r.status_code == 200 and "1 done" in r.text
    # A foreign "back" link is not followed.
    r = client.post("/queue/bulk", data={"csrf_token": token, "action": "resolve",
                                         "wo": [f"{plain}@3"], "back": "https://evil.example/"})
    assert 'href="/queue">Back to the queue' in r.text
    assert client.get(f"/api/v1/work-orders/{plain}").json()["status"] == "resolved"


def test_bulk_bounds_are_clear_4xx(web) -> None:
    client, _, data = web
    login(client)
    token = csrf_of(client.get("/queue").text)
    plain = data["plain"]
    form = {"csrf_token": token, "action": "resolve"}
    many = [f"ITX-{i:06d}@1" for i in range(1, MAX_ROWS + 2)]
    r = client.post("/queue/bulk", data={**form, "wo": many})
    assert r.status_code == 422 and f"at most {MAX_ROWS} work orders" in r.text
    r = client.post("/queue/bulk", data=form)
    assert r.status_code == 422 and "no work orders selected" in r.text
    for bad in ("<script>", "ITX-000001@0", "ITX-000001@" + "9" * 12):
        r = client.post("/queue/bulk", data={**form, "wo": [bad]})
        assert r.status_code == 422 and "<script>" not in r.text.split("<main>")[1]
    r = client.post("/queue/bulk", data={**form, "action": "explode", "wo": [f"{plain}@1"]})
    assert r.status_code == 422 and "unknown bulk action" in r.text
    assert client.post("/queue/bulk", data={"action": "resolve", "wo": [f"{plain}@1"]}
                       ).status_code == 422  # no CSRF field at all
    assert client.post("/queue/bulk", data={**form, "csrf_token": "forged",
                                            "wo": [f"{plain}@1"]}).status_code == 403
    assert client.get(f"/api/v1/work-orders/{plain}").json()["status"] == "new"


def test_views_and_bulk_api(web) -> None:
    client, _, data = web
    fresh = TestClient(client.app, base_url="https://testserver")
    h = {"Authorization": f"Bearer {data['token']}"}  # bob's
    r = fresh.get("/api/v1/views", headers=h)
    assert r.status_code == 200
    assert [(v["name"], v["count"], v["default"]) for v in r.json()["views"]] == [
        ("Mine", 0, True), ("Unassigned urgent", 2, True)]
    r = fresh.post("/api/v1/views", headers=h,
                   json={"name": "Down", "filters": {"type": "website_down"}})
    assert r.status_code == 201, r.text
    view = r.json()
    assert (view["name"], view["count"], view["href"]) == (
        "Down", 1, "/queue?type=website_down")
    assert fresh.post("/api/v1/views", headers=h, json={"name": "down"}).status_code == 409
    assert fresh.post("/api/v1/views", headers=h,
                      json={"name": "x", "filters": {"sla": "late"}}).status_code == 422
    r = fresh.patch(f"/api/v1/views/{view['id']}", headers=h,
                    json={"name": "Mail", "filters": {"type": "email_problem"}})
    assert (r.status_code, r.json()["name"], r.json()["count"]) == (200, "Mail", 1)
    # Bulk: one row with the version seen, one without, one unknown.
    plain, hostile = data["plain"], data["hostile"]
    r = fresh.post("/api/v1/work-orders/bulk", headers=h, json={
        "action": "reclassify", "priority": "high",
        "work_orders": [{"number": plain, "version": 1}, {"number": hostile},
                        {"number": "ITX-999999"}]})
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["done"], got["failed"]) == (2, 1)
    assert [(x["number"], x["outcome"], x["version"]) for x in got["results"]] == [
        (plain, "done", 2), (hostile, "done", 2), ("ITX-999999", "not_found", None)]
    r = fresh.post("/api/v1/work-orders/bulk", headers=h, json={
        "action": "resolve", "work_orders": [{"number": plain, "version": 1}]})
    assert r.json()["results"][0]["outcome"] == "conflict"
    r = fresh.post("/api/v1/work-orders/bulk", headers=h, json={
        "action": "resolve", "work_orders": [{"number": f"ITX-{i:06d}"}
                                             for i in range(MAX_ROWS + 1)]})
    assert r.status_code == 422 and f"at most {MAX_ROWS}" in r.json()["detail"]
    r = fresh.post("/api/v1/work-orders/bulk", headers=h, json={
        "action": "resolve", "work_orders": [{"number": "bogus"}]})
    assert r.status_code == 422 and "not a work order" in r.json()["detail"]
    assert fresh.delete(f"/api/v1/views/{view['id']}", headers=h).status_code == 204
    assert fresh.delete(f"/api/v1/views/{view['id']}", headers=h).status_code == 404
    # A cookie caller needs the CSRF header, as for every API change.
    login(client)
    assert client.post("/api/v1/views", json={"name": "x"}).status_code == 403
    assert client.post("/api/v1/work-orders/bulk", json={
        "action": "resolve", "work_orders": []}).status_code == 403
