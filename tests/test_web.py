"""The staff web app through its HTTP surface (ASGI test client, real SQLite): login and
lockout, sessions, CSRF, redirects, escaping of client content, attachment downloads, the
JSON API and its OpenAPI document. The browser-level checks are in test_browser.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.routing import iter_route_contexts
from sqlalchemy import select
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.deskenv import PASSWORD, csrf_of, desk_parts, login
from tests.factories import NOW
from triage.desk import logins, users
from triage.storage.models import AttachmentRow, Outbox, WorkOrder
from triage.web.actions import ACTIONS
from triage.web.alerts import done_text
from triage.web.app import SESSION_COOKIE, WebDeps, clean_html, create_web_app, safe_next


# ---- access -----------------------------------------------------------------------------------
def test_every_route_but_login_and_probes_requires_a_login(web) -> None:
    client, app, data = web
    # The stylesheet is public: the login page needs it.
    # Scripts too: optional enhancements, no data.
    open_paths = {"/login", "/healthz", "/readyz", "/metrics", "/static/app.css",
                  "/static/js/{name}.js"}
    checked = 0
    # Every route, those of the included routers too (FastAPI keeps an included router as one
    # entry of app.routes), and the API as its OpenAPI document lists it.
    routes = {(m, r.path) for r in iter_route_contexts(app.routes)
              if isinstance(r.original_route, Route) for m in r.methods or () if m != "HEAD"}
    routes |= {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    assert {("GET", "/queue"), ("POST", "/work-orders/{number}/reply"), ("POST", "/logout"),
            ("GET", "/screened/{message_id}"), ("GET", "/api/openapi.json")} <= routes
    for method, template in sorted(routes):
        if template in open_paths:
            continue
        path = (template.replace("{number}", data["plain"]).replace("{attachment_id}", "1")
                .replace("{message_id}", "1"))
        r = client.request(method, path)
        checked += 1
        if path.startswith("/api/"):
            assert r.status_code == 401, (method, path, r.status_code)
        else:
            assert r.status_code == 303, (method, path, r.status_code)
            assert r.headers["location"].startswith("/login?next="), (method, path)
    assert checked >= 20
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 401  # its own bearer token
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}
                      ).status_code == 200


def test_login_sets_a_safe_session_cookie_and_logout_ends_it(web) -> None:
    client, _, _ = web
    status, location = login(client)
    assert (status, location) == (303, "/queue")
    cookie = next(c for c in client.cookies.jar if c.name == SESSION_COOKIE)
    assert cookie.secure
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert (cookie.get_nonstandard_attr("SameSite") or "").lower() == "lax"
    q = client.get("/queue")
    assert q.status_code == 200 and "Outlook disconnected" in q.text
    stolen = cookie.value
    r = client.post("/logout", data={"csrf_token": csrf_of(q.text)})
    assert r.status_code == 303
    client.cookies.set(SESSION_COOKIE, stolen, domain=cookie.domain)
    assert client.get("/queue").status_code == 303  # the server forgot the session


def test_wrong_password_then_a_delay_for_that_name_and_address_only(web) -> None:
    client, app, _ = web
    status, _ = login(client, password="nope")
    assert status == 401
    for _ in range(logins.FREE_ATTEMPTS - 1):
        assert login(client, password="nope")[0] == 401
    page = client.get("/login")
    token = csrf_of(page.text)
    r = client.post("/login", data={"name": "alice", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 429  # the right password waits too: nothing is checked now
    assert r.headers["retry-after"] == str(int(logins.FIRST_DELAY.total_seconds()))
    assert "wait 2 s" in r.text
    # A colleague at another address is not kept out: that address was never guessed from.
    other = TestClient(app, base_url="https://testserver", follow_redirects=False,
                       client=("192.0.2.7", 50000))
    assert login(other) == (303, "/queue")
    other.close()


def test_login_without_its_csrf_token_is_refused(web) -> None:
    client, _, _ = web
    r = client.post("/login", data={"name": "alice", "password": PASSWORD,
                                    "csrf_token": "forged", "next": "/queue"})
    assert r.status_code == 200 and "expired" in r.text
    assert SESSION_COOKIE not in {c.name for c in client.cookies.jar}


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/",
                                    "/\\evil.example", "javascript:alert(1)", " /queue",
                                    "/\t/evil.example"])
def test_no_open_redirect_after_login(web, target: str) -> None:
    client, _, _ = web
    assert login(client, next_=target) == (303, "/queue")


def test_safe_next_keeps_local_paths() -> None:
    assert safe_next("/work-orders/ITX-000001?x=1") == "/work-orders/ITX-000001?x=1"
    assert safe_next(None) == "/queue"


def test_login_returns_to_the_page_asked_for(web) -> None:
    client, _, data = web
    r = client.get(f"/work-orders/{data['plain']}")
    assert r.status_code == 303
    target = r.headers["location"].split("next=", 1)[1]
    from urllib.parse import unquote

    assert login(client, next_=unquote(target)) == (303, f"/work-orders/{data['plain']}")


# ---- CSRF -------------------------------------------------------------------------------------
def test_forms_need_the_session_csrf_token(web) -> None:
    client, _, data = web
    login(client)
    n = data["plain"]
    r = client.post(f"/work-orders/{n}/note", data={"text": "hi", "csrf_token": "wrong"})
    assert r.status_code == 403
    r = client.post(f"/work-orders/{n}/note", data={"text": "hi"})
    assert r.status_code in (403, 422)
    page = client.get(f"/work-orders/{n}")
    r = client.post(f"/work-orders/{n}/note", data={"text": "hi <b>there</b>",
                                                   "csrf_token": csrf_of(page.text)})
    assert r.status_code == 303 and "done=" in r.headers["location"]
    page = client.get(f"/work-orders/{n}")
    assert "hi &lt;b&gt;there&lt;/b&gt;" in page.text


def test_api_with_a_cookie_needs_the_csrf_header_but_a_bearer_token_does_not(web) -> None:
    client, _, data = web
    login(client)
    n = data["plain"]
    body = {"request_type": "server_down", "priority": "urgent"}
    assert client.post(f"/api/v1/work-orders/{n}/reclassify", json=body).status_code == 403
    token = client.get("/api/v1/me").json()["csrf_token"]
    r = client.post(f"/api/v1/work-orders/{n}/reclassify", json=body,
                    headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.json()["request_type"] == "server_down"
    fresh = TestClient(client.app, base_url="https://testserver")
    r = fresh.post(f"/api/v1/work-orders/{n}/replies", json={"body": "On it."},
                   headers={"Authorization": f"Bearer {data['token']}"})
    assert r.status_code == 200, r.text
    assert r.json()["first_response_at"] is not None
    assert [e["actor"] for e in r.json()["events"]][-1] == "bob"
    # The bearer token is for the API only.
    assert fresh.get("/queue", headers={"Authorization": f"Bearer {data['token']}"},
                     follow_redirects=False).status_code == 303
    assert fresh.get("/api/v1/me", headers={"Authorization": "Bearer itx_wrong"}
                     ).status_code == 401


def test_api_errors_are_clear(web) -> None:
    client, _, data = web
    login(client)
    token = client.get("/api/v1/me").json()["csrf_token"]
    h = {"X-CSRF-Token": token}
    r = client.post(f"/api/v1/work-orders/{data['plain']}/reclassify",
                    json={"request_type": "nope", "priority": "urgent"}, headers=h)
    assert r.status_code == 422 and "unknown request type" in r.json()["detail"]
    r = client.post("/api/v1/work-orders/ITX-999999/notes", json={"text": "x"}, headers=h)
    assert r.status_code == 404
    assert client.get("/api/v1/work-orders?type=nope").status_code == 422


def test_each_action_row_has_a_form_route_an_api_route_and_a_done_key(web) -> None:
    """The action table drives both routes: a row is served as a form and as an API call,
    and its redirect's done key is one the page shows."""
    _, app, _ = web
    routes = {(m, r.path) for r in iter_route_contexts(app.routes) for m in r.methods or ()}
    assert len(ACTIONS) == 9
    for a in ACTIONS:
        assert ("POST", f"/work-orders/{{number}}/{a.name}") in routes, a.name
        assert ("POST", f"/api/v1/work-orders/{{number}}/{a.api_name}") in routes, a.name
        for key in (a.done, *a.more_done):
            assert done_text(key) == key, key
    # One route each: no module registers an action's path a second time.
    paths = [(m, r.path) for r in iter_route_contexts(app.routes) for m in r.methods or ()]
    assert len(paths) == len(set(paths))


def test_openapi_is_served_to_staff(web) -> None:
    client, _, _ = web
    assert client.get("/api/openapi.json").status_code == 401
    login(client)
    doc = client.get("/api/openapi.json").json()
    paths = set(doc["paths"])
    assert {"/api/v1/work-orders", "/api/v1/work-orders/{number}",
            "/api/v1/work-orders/{number}/replies",
            "/api/v1/work-orders/{number}/reclassify"} <= paths
    assert not any(p.startswith("/work-orders") for p in paths)  # pages stay out


# ---- pages and escaping -----------------------------------------------------------------------
def test_client_content_is_escaped_and_html_is_cleaned(web) -> None:
    client, _, data = web
    login(client)
    for path in ("/queue", f"/work-orders/{data['hostile']}"):
        r = client.get(path)
        assert r.status_code == 200
        assert "<script>window.__xss" not in r.text
        assert "&lt;script&gt;window.__xss=1;alert(1)&lt;/script&gt;" in r.text
        assert "onerror=\"alert" not in r.text
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
    page = client.get(f"/work-orders/{data['hostile']}").text
    assert "javascript:alert(3)" not in page
    assert "tracker.example" not in page and "remote images blocked" in page
    assert "&lt;b&gt;Evil&lt;/b&gt;" in page


def test_clean_html_removes_active_content() -> None:
    out, blocked = clean_html('<p onclick="x()">hi</p><svg onload=alert(1)></svg>'
                              '<iframe src="https://x"></iframe><style>a{}</style>'
                              '<a href="https://ok.example">ok</a><img src="cid:1">')
    assert blocked
    assert "onclick" not in out and "svg" not in out and "iframe" not in out
    assert "<style" not in out and "<img" not in out
    assert 'href="https://ok.example"' in out and 'rel="noopener noreferrer nofollow"' in out


def test_attachments_download_as_attachments_and_only_from_their_work_order(web) -> None:
    client, _, data = web
    login(client)
    with data["sessions"]() as s:
        att = s.scalar(select(AttachmentRow))
        assert att is not None
    r = client.get(f"/work-orders/{data['hostile']}/attachments/{att.id}")
    assert r.status_code == 200 and r.content == b"%PDF-1.4 fake"
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-content-type-options"] == "nosniff"
    disp = r.headers["content-disposition"]
    assert disp.startswith("attachment;")
    assert '"' not in disp.split('filename="', 1)[1].split('";', 1)[0]
    assert client.get(f"/work-orders/{data['plain']}/attachments/{att.id}").status_code == 404


def test_queue_filters_and_validation(web) -> None:
    client, _, data = web
    login(client)
    r = client.get("/queue?type=website_down")
    assert data["hostile"] in r.text and data["plain"] not in r.text
    r = client.get("/queue?priority=urgent&type=email_problem")
    assert data["plain"] in r.text and data["hostile"] not in r.text
    assert client.get("/queue?sla=nonsense").status_code == 422
    r = client.get(f"/queue?q={data['plain']}")
    assert data["plain"] in r.text and data["hostile"] not in r.text


def test_reclassify_and_reply_from_the_page(web) -> None:
    client, _, data = web
    login(client)
    n = data["plain"]
    page = client.get(f"/work-orders/{n}")
    token = csrf_of(page.text)
    r = client.post(f"/work-orders/{n}/reclassify", data={
        "csrf_token": token, "request_type": "new_account", "priority": "normal"})
    assert r.status_code == 303
    r = client.post(f"/work-orders/{n}/reply", data={"csrf_token": token,
                                                    "body": "Hello Dana,\nfixed."})
    assert r.status_code == 303
    page = client.get(r.headers["location"])
    assert "Done: reply queued." in page.text and "Hello Dana,\nfixed." in page.text
    assert "new account" in page.text
    with data["sessions"]() as s:
        wo = s.scalar(select(WorkOrder).where(WorkOrder.number == n))
        assert wo is not None and wo.request_type == "new_account"
        assert wo.first_response_at == NOW
        assert s.scalar(select(Outbox.kind).where(Outbox.kind == "reply")) == "reply"
    r = client.post(f"/work-orders/{n}/promise", data={"csrf_token": token,
                                                      "promised": "2026-12-01T17:00"})
    assert r.status_code == 303 and "done=" in r.headers["location"]
    with data["sessions"]() as s:
        wo = s.scalar(select(WorkOrder).where(WorkOrder.number == n))
        assert wo is not None and wo.promised_at == datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
    r = client.post(f"/work-orders/{n}/promise", data={"csrf_token": token,
                                                      "promised": "not a date"})
    assert r.status_code == 422  # the error is on the answer itself, not carried in a URL
    assert "not a date and time: &#39;not a date&#39;" in r.text and "location" not in r.headers
    assert client.get("/work-orders/ITX-999999").status_code == 404


def test_sessions_expire(web) -> None:
    client, _, data = web
    login(client)
    assert client.get("/queue").status_code == 200
    data["clock"].t = NOW + users.SESSION_TTL + timedelta(minutes=1)
    r = client.get("/queue")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_logging_the_call_back_from_the_page(web) -> None:
    client, _, data = web
    login(client)
    n = data["plain"]  # an urgent email problem: a call back is due within an hour
    page = client.get(f"/work-orders/{n}")
    assert "Log call" in page.text
    r = client.post(f"/work-orders/{n}/called-back", data={"csrf_token": csrf_of(page.text),
                                                          "text": "restarted Outlook with Dana"})
    assert r.status_code == 303 and "done=" in r.headers["location"]
    page = client.get(f"/work-orders/{n}")
    assert "Log call" not in page.text
    assert "Called the client" in page.text and "restarted Outlook with Dana" in page.text
    assert client.get(f"/api/v1/work-orders/{n}").json()["called_back_at"] is not None


def test_scripts_are_served_from_the_templates_js_folder_only(tmp_path: Path) -> None:
    """A page's script is a same-origin file the CSP allows; nothing outside the folder's
    listing (no traversal, no other file type) is served."""
    import shutil

    from triage.resources import TEMPLATES_DIR

    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, templates)
    (templates / "web" / "js").mkdir(exist_ok=True)
    (templates / "web" / "js" / "probe.js").write_text("document.title = 'x';\n")
    with desk_parts(f"sqlite:///{tmp_path / 'js.db'}", tmp_path, NOW) as d:
        app = create_web_app(WebDeps(d.sessions, d.reads, d.policy, d.desk, tmp_path / "att",
                                     d.clock, templates_dir=templates))
        with TestClient(app, base_url="https://testserver") as client:
            r = client.get("/static/js/probe.js")
            assert r.status_code == 200 and "document.title" in r.text
            assert r.headers["content-type"].startswith("text/javascript")
            assert "script-src 'self'" in r.headers["content-security-policy"]
            for bad in ("/static/js/nope.js", "/static/js/..%2Fapp.js",
                        "/static/js/app.css.js"):
                assert client.get(bad).status_code == 404, bad
