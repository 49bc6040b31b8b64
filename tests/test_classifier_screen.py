"""Header screen: machine mail is not a request, whatever its words say."""

from __future__ import annotations

import pytest

from classifiers.screen import screen_headers


@pytest.mark.parametrize(
    ("headers", "sender", "kind"),
    [
        ({"Auto-Submitted": "auto-replied"}, "a@b.com", "auto_reply"),
        ({"auto-submitted": "Auto-Generated"}, "a@b.com", "auto_reply"),
        ({"X-Autoreply": "yes"}, "a@b.com", "auto_reply"),
        ({"X-Autorespond": "yes"}, "a@b.com", "auto_reply"),
        ({"Precedence": "auto_reply"}, "a@b.com", "auto_reply"),
        ({"Content-Type": "multipart/report; report-type=delivery-status"}, "x@y.com", "bounce"),
        ({}, "MAILER-DAEMON@mx.example.com", "bounce"),
        ({}, "Mail Delivery System <mailer-daemon@example.com>", "bounce"),
        ({"From": "postmaster@example.com"}, "", "bounce"),
        ({"Return-Path": "<>"}, "a@b.com", "bounce"),
        ({"Precedence": "bulk"}, "news@shop.com", "bulk"),
        ({"Precedence": "List"}, "news@shop.com", "bulk"),
        ({"Precedence": "junk"}, "news@shop.com", "bulk"),
        ({"List-Id": "<announce.example.com>"}, "news@shop.com", "bulk"),
        ({"List-Unsubscribe": "<mailto:u@shop.com>"}, "news@shop.com", "bulk"),
    ],
)
def test_machine_mail_is_screened(headers: dict[str, str], sender: str, kind: str) -> None:
    result = screen_headers(headers, sender)
    assert result is not None
    assert result.kind == kind
    assert result.header


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Auto-Submitted": "no"},
        {"X-Mailer": "Microsoft Outlook 16.0", "In-Reply-To": "<1@itx.net>"},
        {"Return-Path": "<client@example.com>"},
        {"Precedence": "first-class"},
        {"X-Auto-Response-Suppress": "All"},  # Outlook sets this on ordinary mail too
    ],
)
def test_person_mail_passes(headers: dict[str, str]) -> None:
    assert screen_headers(headers, "Client <client@example.com>") is None
