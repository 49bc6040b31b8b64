"""The live queue's poll, presence and the API's collision guard through the HTTP surface
(ASGI test client, real SQLite; the app of tests/deskenv.py). The browser-level checks are in
test_browser_live.py, the desk layer on both databases in test_live.py."""

from __future__ import annotations

import re
from datetime import timedelta

from starlette.testclient import TestClient

from tests.deskenv import csrf_of, login
from triage.desk import live


def bearer(data: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {data['token']}"}


# ---- the API's collision guard ----------------------------------------------------------------
def test_api_actions_take_a_version_and_refuse_a_stale_one_with_the_changes(web) -> None:
    client, _, data = web
    n, auth = data["plain"], bearer(data)
    got = client.get(f"/api/v1/work-orders/{n}", headers=auth)
    assert got.status_code == 200 and got.headers["etag"] == '"1"'
    assert got.json()["version"] == 1
    ok = client.post(f"/api/v1/work-orders/{n}/notes", headers=auth,
                     json={"text": "called them", "version": 1})
    assert ok.status_code == 200 and ok.json()["version"] == 2
    # The same version again is stale: nothing is done, and the answer says what changed.
    stale = client.post(f"/api/v1/work-orders/{n}/assign", headers=auth,
                        json={"assignee": "alice", "version": 1})
    assert stale.status_code == 409 and stale.headers["etag"] == '"2"'
    detail = stale.json()["detail"]
    assert detail["number"] == n and detail["your_version"] == 1
    assert detail["current_version"] == 2
    assert [(c["actor"], c["action"], c["detail"]["text"], c["version"])
            for c in detail["changes"]] == [("bob", "note", "called them", 2)]
    assert "changed since" in detail["message"]
    assert client.get(f"/api/v1/work-orders/{n}", headers=auth).json()["assignee"] is None
    # If-Match carries the same guard, for the actions without a body too.
    for header in ('"1"', 'W/"1"'):
        r = client.post(f"/api/v1/work-orders/{n}/resolve", headers={**auth, "If-Match": header})
        assert r.status_code == 409, header
    r = client.post(f"/api/v1/work-orders/{n}/resolve", headers={**auth, "If-Match": '"2"'})
    assert r.status_code == 200 and r.json()["status"] == "resolved" and r.json()["version"] == 3
    r = client.post(f"/api/v1/work-orders/{n}/reopen", headers=auth, json={"version": 2})
    assert r.status_code == 409
    r = client.post(f"/api/v1/work-orders/{n}/reopen", headers=auth, json={"version": 3})
    assert r.status_code == 200 and r.json()["status"] == "open"
    # No version at all: no check (scripts written before the guard keep working).
    r = client.post(f"/api/v1/work-orders/{n}/status", headers=auth, json={"status": "open"})
    assert r.status_code == 200
    r = client.post(f"/api/v1/work-orders/{n}/notes", headers={**auth, "If-Match": "*"},
                    json={"text": "any version"})
    assert r.status_code == 200



def test_the_api_merge_takes_the_same_guard(web) -> None:
    client, _, data = web
    first, later, auth = data["plain"], data["hostile"], bearer(data)  # one client
    client.post(f"/api/v1/work-orders/{later}/notes", headers=auth, json={"text": "x"})
    stale = client.post(f"/api/v1/work-orders/{later}/merge", headers=auth,
                        json={"other": first, "version": 1})
    assert stale.status_code == 409 and stale.headers["etag"] == '"2"'
    assert stale.json()["detail"]["changes"][0]["action"] == "note"
    r = client.post(f"/api/v1/work-orders/{later}/merge", headers={**auth, "If-Match": '"1"'},
                    json={"other": first})
    assert r.status_code == 409
    assert client.get(f"/api/v1/work-orders/{later}", headers=auth).json()["merged_into"] is None
    r = client.post(f"/api/v1/work-orders/{later}/merge", headers={**auth, "If-Match": '"2"'},
                    json={"other": first})
    assert r.status_code == 200 and r.json()["survivor"] == first

def test_api_versions_out_of_bounds_are_clear_4xx(web) -> None:
    client, _, data = web
    n, auth = data["plain"], bearer(data)
    for header in ("seven", '"0"', f'"{2**31}"', '"-1"', '"1.5"'):
        r = client.post(f"/api/v1/work-orders/{n}/notes", headers={**auth, "If-Match": header},
                        json={"text": "x"})
        assert r.status_code == 422 and "If-Match" in r.json()["detail"], header
    r = client.post(f"/api/v1/work-orders/{n}/notes", headers={**auth, "If-Match": '"1"'},
                    json={"text": "x", "version": 2})
    assert r.status_code == 422 and "different" in r.json()["detail"]
    for bad in (0, -1, 2**31, "x"):
        r = client.post(f"/api/v1/work-orders/{n}/notes", headers=auth,
                        json={"text": "x", "version": bad})
        assert r.status_code == 422, bad


def test_the_openapi_document_describes_the_guard_and_the_live_routes(web) -> None:
    client, _, _ = web
    login(client)
    doc = client.get("/api/openapi.json").json()
    paths = doc["paths"]
    for path in ("notes", "replies", "assign", "reclassify", "promise", "status",
                 "called-back", "resolve", "reopen", "merge"):
        op = paths[f"/api/v1/work-orders/{{number}}/{path}"]["post"]
        assert "409" in op["responses"] and "changes" in op["responses"]["409"]["description"]
        assert any(p["name"].lower() == "if-match" and p["in"] == "header"
                   for p in op["parameters"]), path
    assert "collision" not in doc["components"]["schemas"]["Note"]["properties"]
    assert "409" in doc["components"]["schemas"]["Note"]["properties"]["version"][
        "description"]
    assert {"/api/v1/changes", "/api/v1/work-orders/{number}/presence"} <= set(paths)


# ---- the live queue's poll --------------------------------------------------------------------
def test_changes_give_a_cursor_then_what_changed_after_it(web) -> None:
    client, _, data = web
    auth = bearer(data)
    start = client.get("/api/v1/changes", headers=auth).json()
    assert start["work_orders"] == [] and start["cursor"] and start["more"] is False
    data["clock"].t += live.OVERLAP + timedelta(minutes=1)
    client.post(f"/api/v1/work-orders/{data['hostile']}/notes", headers=auth,
                json={"text": "looking"})
    got = client.get("/api/v1/changes", params={"since": start["cursor"]}, headers=auth).json()
    # Newest first; the overlap also names the unchanged one, at the version already seen.
    assert [(w["number"], w["version"]) for w in got["work_orders"]] == [
        (data["hostile"], 2), (data["plain"], 1)]
    assert got["cursor"] > start["cursor"]
    data["clock"].t += live.OVERLAP + timedelta(minutes=1)
    client.post(f"/api/v1/work-orders/{data['plain']}/notes", headers=auth, json={"text": "x"})
    got = client.get("/api/v1/changes", params={"since": got["cursor"]}, headers=auth).json()
    # The cursor's own change (the note on hostile) is inside the overlap: listed again, at
    # the version the caller has already seen.
    assert [(w["number"], w["version"]) for w in got["work_orders"]] == [
        (data["plain"], 2), (data["hostile"], 2)]
    for bad in ("yesterday", "2026-11-27T10:00:00", "0001-01-01T00:00:00+00:00",
                "9999-12-31T23:59:59+00:00", "x" * 41):
        r = client.get("/api/v1/changes", params={"since": bad}, headers=auth)
        assert r.status_code == 422, bad


def test_the_queue_page_carries_versions_and_the_script(web) -> None:
    client, _, data = web
    login(client)
    html = client.get("/queue").text
    assert re.search(rf'data-number="{data["plain"]}" data-version="1"', html)
    assert '<script src="/static/js/live.js" defer></script>' in html
    js = client.get("/static/js/live.js")
    assert js.status_code == 200 and "/api/v1/changes" in js.text


# ---- presence ---------------------------------------------------------------------------------
def test_presence_heartbeats_show_each_other_and_need_the_csrf_header(web) -> None:
    client, app, data = web
    n, auth = data["plain"], bearer(data)
    client = TestClient(app, base_url="https://testserver", follow_redirects=False)  # bob: API
    alice = web[0]
    r = client.post(f"/api/v1/work-orders/{n}/presence", headers=auth, json={"state": "replying"})
    assert r.status_code == 200 and r.json() == {"version": 1, "others": []}
    login(alice)  # by cookie: a POST needs the session's CSRF token as a header
    page = alice.get(f"/work-orders/{n}")
    assert re.search(r'class="who-here replying"><bdi>bob</bdi> \(replying\)', page.text)
    assert alice.post(f"/api/v1/work-orders/{n}/presence",
                      json={"state": "viewing"}).status_code == 403
    r = alice.post(f"/api/v1/work-orders/{n}/presence", json={"state": "viewing"},
                   headers={"X-CSRF-Token": csrf_of(page.text)})
    assert r.status_code == 200
    assert [(p["name"], p["state"]) for p in r.json()["others"]] == [("bob", "replying")]
    seen = client.get(f"/api/v1/work-orders/{n}/presence", headers=auth).json()
    assert [(p["name"], p["display_name"], p["state"]) for p in seen["others"]] == [
        ("alice", "Alice <A>", "viewing")]
    # Bob leaves; a minute on, Alice's beat has expired too.
    client.post(f"/api/v1/work-orders/{n}/presence", headers=auth, json={"state": "left"})
    assert alice.get(f"/work-orders/{n}").text.count('class="who-here') == 0
    data["clock"].t += live.PRESENCE_TTL + timedelta(seconds=1)
    assert client.get(f"/api/v1/work-orders/{n}/presence", headers=auth).json()["others"] == []
    client.close()


def test_presence_input_is_bounded(web) -> None:
    client, _, data = web
    auth = bearer(data)
    r = client.post("/api/v1/work-orders/ITX-999999/presence", headers=auth, json={})
    assert r.status_code == 404
    assert client.get("/api/v1/work-orders/ITX-999999/presence", headers=auth).status_code == 404
    for body in ({"state": "dancing"}, {"state": "x" * 10_000}, {"state": 3}):
        r = client.post(f"/api/v1/work-orders/{data['plain']}/presence", headers=auth, json=body)
        assert r.status_code == 422, body
    r = client.post("/api/v1/work-orders/nonsense/presence", headers=auth, json={})
    assert r.status_code == 422
