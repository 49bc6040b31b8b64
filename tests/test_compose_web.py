"""Composing replies through the HTTP surface (ASGI test client, real SQLite): the canned
reply pages and API, inserting a canned reply without script, a reply with files and a
status, and the upload limits refused with a clear 4xx. Chromium: test_browser_compose.py."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from tests.deskenv import csrf_of, login, mime_mail, staff_web, store_mail
from tests.factories import NOW, req
from triage.desk.uploads import UploadLimits
from triage.storage.models import AttachmentRow, Outbox, WorkOrder

LIMITS = UploadLimits(max_files=2, max_file_bytes=1000, max_total_bytes=1500)


@pytest.fixture
def web(tmp_path: Path):
    """``(client, number, api_token, sessions)``: alice logged in; one urgent password reset
    whose sender's name carries markup; the upload limits small."""
    with staff_web(tmp_path, upload_limits=LIMITS) as w:
        data = mime_mail(1, "Locked out", "I cannot log in", name="Dana <Ops>")
        number = store_mail(w.parts.store, 1, data, req("password_reset", "urgent"),
                            uidvalidity=1, at=NOW).work_order
        assert number
        assert login(w.client)[0] == 303
        yield w.client, number, w.api_token, w.parts.sessions


def textarea(page: str) -> str:
    m = re.search(r'<textarea id="reply-body"[^>]*>(.*?)</textarea>', page, re.S)
    assert m
    return html.unescape(m.group(1))


def test_canned_replies_are_managed_suggested_and_inserted_without_script(web) -> None:
    client, number, _, _ = web
    page = client.get("/canned")
    assert page.status_code == 200 and "None yet." in page.text
    token = csrf_of(page.text)
    form = {"name": "Reset steps", "body": "Hello {{ client_name }},\nyour {{ number }} "
            "is in hand; we call back by {{ callback_due }}.\n{{ agent }}",
            "request_types": ["password_reset"]}
    assert client.post("/canned", data={**form, "csrf_token": "forged"}).status_code == 403
    r = client.post("/canned", data={**form, "csrf_token": token})
    assert r.status_code == 303 and r.headers["location"].startswith("/canned/")
    reset_id = int(r.headers["location"].split("/")[2].split("?")[0])
    r = client.post("/canned", data={"csrf_token": token, "name": "Another",
                                     "body": "Any news?", "request_types": ["other"]})
    assert r.status_code == 303
    other_id = int(r.headers["location"].split("/")[2].split("?")[0])
    # A template that reaches beyond its variables: 422, the reason, the text kept.
    r = client.post("/canned", data={"csrf_token": token, "name": "Bad",
                                     "body": "{{ agent.__class__ }}"})
    assert r.status_code == 422
    assert "an attribute is not allowed" in r.text and "{{ agent.__class__ }}" in \
        html.unescape(r.text)
    # Bounded ids: a 4xx that says why.
    assert client.get("/canned/0").status_code == 422
    assert client.get("/canned/999999").status_code == 404

    # The work order (a password reset) suggests its type's template first.
    wo_page = client.get(f"/work-orders/{number}").text
    group = re.search(r'<optgroup label="Suggested for password reset">(.*?)</optgroup>',
                      wo_page, re.S)
    assert group and f'value="{reset_id}"' in group.group(1)
    assert f'value="{other_id}"' not in group.group(1)
    # Insert without script: the page again, the text after what was typed, filled in.
    r = client.post(f"/work-orders/{number}/reply/canned",
                    data={"csrf_token": csrf_of(wo_page), "canned": str(reset_id),
                          "body": "Typed first."})
    assert r.status_code == 200
    text = textarea(r.text)
    assert text.startswith(f"Typed first.\n\nHello Dana <Ops>,\nyour {number} is in hand; "
                           "we call back by Fri 27 Nov 2026 11:00 EST.")
    assert text.endswith("Alice <A>")
    assert "&lt;Ops&gt;" in r.text  # escaped in the page
    # Changed to fail when rendered (a bad filter argument): 422 with the reason.
    r = client.post(f"/canned/{other_id}", data={"csrf_token": token, "name": "Another",
                                                 "body": "{{ subject|truncate('x') }}"})
    assert r.status_code == 303
    r = client.post(f"/work-orders/{number}/reply/canned",
                    data={"csrf_token": token, "canned": str(other_id), "body": "kept"})
    assert r.status_code == 422 and "template error" in r.text and textarea(r.text) == "kept"
    assert client.post(f"/canned/{other_id}/delete",
                       data={"csrf_token": token}).status_code == 303
    assert client.get(f"/canned/{other_id}").status_code == 404


def test_the_canned_reply_api_lists_and_renders(web) -> None:
    client, number, api_token, _ = web
    token = csrf_of(client.get("/canned").text)
    for name, types in (("B general", []), ("A reset", ["password_reset"])):
        client.post("/canned", data={"csrf_token": token, "name": name,
                                     "body": "Hi {{ client_name|upper }}",
                                     "request_types": types})
    bearer = TestClient(client.app, base_url="https://testserver",
                        headers={"Authorization": f"Bearer {api_token}"})
    listing = bearer.get("/api/v1/canned-replies", params={"work_order": number}).json()
    names = [(c["name"], c["suggested"]) for c in listing["canned_replies"]]
    assert names == [("A reset", True), ("B general", False)]
    first = listing["canned_replies"][0]["id"]
    r = bearer.get(f"/api/v1/work-orders/{number}/canned-replies/{first}")
    assert r.status_code == 200 and r.json()["text"] == "Hi DANA <OPS>"
    assert bearer.get(f"/api/v1/work-orders/{number}/canned-replies/999999").status_code \
        == 404
    assert bearer.get("/api/v1/canned-replies",
                      params={"work_order": "ITX-999999"}).status_code == 404
    assert bearer.get("/api/v1/canned-replies",
                      params={"work_order": "nonsense"}).status_code == 422
    # A reply that resolves in the same call; a status a reply cannot set is a 422.
    r = bearer.post(f"/api/v1/work-orders/{number}/replies",
                    json={"body": "Done.", "then": "new"})
    assert r.status_code == 422 and "cannot set the status" in r.json()["detail"]
    r = bearer.post(f"/api/v1/work-orders/{number}/replies",
                    json={"body": "Done.", "then": "resolved"})
    assert r.status_code == 200 and r.json()["status"] == "resolved"
    assert [e["action"] for e in r.json()["events"]][-2:] == ["replied", "resolved"]
    assert r.json()["thread"][-1]["attachments"] == []
    # The page's script calls it with the session cookie.
    assert client.get(f"/api/v1/work-orders/{number}/canned-replies/{first}").json()[
        "text"] == "Hi DANA <OPS>"
    bearer.close()


def test_a_reply_with_files_and_a_status_then_the_limits(web) -> None:
    client, number, _, sessions = web
    page = client.get(f"/work-orders/{number}").text
    stale = re.search(r'name="version" value="(\d+)"', page)  # this page, before the reply
    assert stale
    fields = {"csrf_token": csrf_of(page), "body": "Here are the steps.", "then": "resolved"}
    r = client.post(f"/work-orders/{number}/reply", data=fields, files=[
        ("files", ("steps.txt", b"1. restart\n", "text/plain")),
        ("files", ("a<b>.pdf", b"%PDF-1.4", "application/pdf"))])
    assert r.status_code == 303
    assert r.headers["location"].endswith("done=reply+queued+and+resolved")
    page = client.get(r.headers["location"]).text
    assert "Done: reply queued and resolved." in page
    with sessions() as s:
        wo = s.scalar(select(WorkOrder).where(WorkOrder.number == number))
        assert wo is not None and wo.status == "resolved"
        rows = list(s.scalars(select(AttachmentRow).where(AttachmentRow.outbox_id.is_not(None))
                              .order_by(AttachmentRow.id)))
    assert [r.filename for r in rows] == ["steps.txt", "a<b>.pdf"]
    assert "<bdi>a&lt;b&gt;.pdf</bdi>" in page
    got = client.get(f"/work-orders/{number}/attachments/{rows[0].id}")
    assert got.status_code == 200 and got.content == b"1. restart\n"
    assert got.headers["content-type"] == "application/octet-stream"

    # Over the limits: refused, nothing queued, what was typed kept.
    def refused(files: list[tuple[str, tuple[str, bytes, str]]]) -> tuple[int, str]:
        r = client.post(f"/work-orders/{number}/reply", files=files, data={
            "csrf_token": fields["csrf_token"], "body": "second try"})
        return r.status_code, r.text

    status, text = refused([("files", (f"f{i}", b"x", "text/plain")) for i in range(3)])
    assert status == 422 and "3 files: a reply takes at most 2 files" in text
    assert textarea(text) == "second try"
    status, text = refused([("files", ("big.bin", b"x" * 1001, "application/octet-stream"))])
    assert status == 413 and "is larger than 1000 bytes" in text
    status, text = refused([("files", ("a", b"x" * 900, "text/plain")),
                            ("files", ("b", b"x" * 900, "text/plain"))])
    assert status == 413 and "the files come to" in text
    with sessions() as s:
        assert len(list(s.scalars(select(Outbox).where(Outbox.kind == "reply")))) == 1
    # A body declared far over the limits is refused before it is read.
    r = client.post(f"/work-orders/{number}/reply", content=b"x" * 10,
                    headers={"content-type": "multipart/form-data; boundary=b",
                             "content-length": str(2 * 1024 * 1024)})
    assert r.status_code == 413 and b"Too large: a reply takes at most 2 files" in r.content
    assert "default-src 'none'" in r.headers["content-security-policy"]
    # From a stale page: refused with what changed; the text kept, the files named to choose
    # again (a browser cannot refill a file input).
    r = client.post(f"/work-orders/{number}/reply", files=[
        ("files", ("again.txt", b"x", "text/plain"))], data={
        "csrf_token": fields["csrf_token"], "body": "third try", "version": stale.group(1)})
    assert r.status_code == 409
    assert "choose the files again (<bdi>again.txt</bdi>)" in r.text
    assert textarea(r.text) == "third try"
