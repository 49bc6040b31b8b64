"""The address policy (triage.addresses): pure functions, so plain unit tests. Every case
of issue 14 items 4 and 5 is here, with the spellings the issue reports."""

from __future__ import annotations

import pytest

from triage.addresses import (
    REASONS,
    AddressError,
    RateLimits,
    normalise,
    parse,
    rate_keys,
    rate_refusal,
    refusal,
)

OWN = ("helpdesk@itx.net", "helpdesk-lead@itx.net")


@pytest.mark.parametrize("spelling", [
    "victim@example.com", "Victim@Example.COM", "victim+1@example.com",
    "victim+2@example.com", '"victim"@example.com', "victim@example.com.",
    "vic.tim@example.com", "<victim@example.com>", " victim@example.com ",
    '"vic\\tim"@example.com', "VIC.TIM+x+y@EXAMPLE.com.",
])
def test_every_spelling_of_one_mailbox_normalises_to_one_key(spelling: str) -> None:
    assert normalise(spelling) == "victim@example.com"


def test_normalise_keeps_what_tells_mailboxes_apart() -> None:
    keys = {normalise(a) for a in ("victim@example.com", "victim@example.org",
                                   "victor@example.com", "victim-2@example.com")}
    assert len(keys) == 4


def test_idn_domains_compare_in_their_ascii_form() -> None:
    assert normalise("anna@Bücher.de") == normalise("anna@xn--bcher-kva.de")


@pytest.mark.parametrize("addr", [
    "helpdesk@itx.net", "helpdesk+x@itx.net", "helpdesk@itx.net.", '"helpdesk"@itx.net',
    "HELPDESK@ITX.NET", "help.desk@itx.net", "helpdesk-lead@itx.net", "billing@itx.net",
    "someone@mail.itx.net",
])
def test_our_own_addresses_in_any_spelling_are_refused(addr: str) -> None:
    assert refusal(addr, OWN) == "own_address"


def test_own_domains_are_refused_with_their_subdomains_but_not_lookalikes() -> None:
    assert refusal("ops@itx-partner.com", (), ["itx-partner.com."]) == "own_address"
    assert refusal("a@eu.itx-partner.com", (), ["ITX-partner.com"]) == "own_address"
    assert refusal("a@notitx.net", OWN) is None
    assert refusal("support@itx-net-secure.com", OWN) is None


@pytest.mark.parametrize("addr", [
    "noreply@bank.example", "no-reply@bank.example", "No_Reply@bank.example",
    "do-not-reply@shop.example", "donotreply@shop.example", "DoNotReply+x@shop.example",
    "MAILER-DAEMON@mx.example.net", "mailer-daemon@mx.example.net",
    "postmaster@client.example", "bounce@esp.example", "bounces@esp.example",
    "bounces+1234-victim=example.com@esp.example", "bounce-mc.us5_1234.5678@mail.example",
    "notifications@github.com", "notification@service.example",
    "owner-staff@lists.example.org", "staff-request@lists.example.org",
    "staff-bounces@lists.example.org", "listserv@lists.example.org",
])
def test_automated_senders_are_refused(addr: str) -> None:
    assert refusal(addr, OWN) == "role_address"


@pytest.mark.parametrize("addr", [
    "dana@harborviewdental.com", "info@smallbiz.example", "support@client.example",
    "office@client.example", "admin@client.example", "abuse@isp.example",
    "nora.reply@client.example", "bouncy-castle@toys.example", "anna@xn--bcher-kva.de",
])
def test_people_and_role_mailboxes_that_people_read_are_allowed(addr: str) -> None:
    assert refusal(addr, OWN) is None


@pytest.mark.parametrize(("addr", "reason"), [
    ('"v1@a.test,v2@b.test"@x.test', "multiple_addresses"),
    ("v1@a.test,v2@b.test", "multiple_addresses"),
    ('"a;b"@x.test', "multiple_addresses"),
    ('"<evil@x.test>"@y.test', "multiple_addresses"),
    ("user@[192.0.2.1]", "ip_literal"),
    ("user@[IPv6:2001:db8::1]", "ip_literal"),
    ("user@192.0.2.1", "ip_literal"),
    ("user@localhost", "dotless_domain"),
    ("user@intranet.", "dotless_domain"),
    ("", "unparseable"),
    ("no-at-sign", "unparseable"),
    ("user@", "unparseable"),
    ("@example.com", "unparseable"),
    ('"unterminated@x.test', "unparseable"),
    ('"john doe"@x.test', "unparseable"),
    ('""@x.test', "unparseable"),
    ("a..b@x.test", "unparseable"),
    (".a@x.test", "unparseable"),
    ("a b@x.test", "unparseable"),
    ("user@exa_mple.com", "unparseable"),
    ("user@-bad.example", "unparseable"),
    ("user@example..com", "unparseable"),
    ("user@x.test\r\nBcc: a@b.test", "unparseable"),
    ('"x"y@x.test', "unparseable"),
])
def test_addresses_that_are_not_one_nameable_mailbox_are_refused(addr: str, reason: str) -> None:
    assert refusal(addr, OWN) == reason
    with pytest.raises(AddressError) as caught:
        normalise(addr)
    assert caught.value.reason == reason


def test_every_reason_has_a_text_and_parse_keeps_the_parts() -> None:
    a = parse('"Dana.W"@Harbor.Example.')
    assert (a.local, a.domain, a.quoted) == ("Dana.W", "harbor.example", True)
    for addr in ("x@[1.2.3.4]", "x@host", "noreply@x.test", "helpdesk@itx.net", "bad"):
        assert refusal(addr, OWN) in REASONS


def test_rate_keys_skip_the_domain_of_free_mail() -> None:
    assert rate_keys("Vic.Tim+9@GMAIL.com.") == ("victim@gmail.com", None)
    assert rate_keys("dana+x@HarborviewDental.com") == ("dana@harborviewdental.com",
                                                         "harborviewdental.com")


LIMITS = RateLimits(per_address=5, per_domain=20, overall=200)


@pytest.mark.parametrize(("counts", "reason"), [
    ((0, 0, 0), None),
    ((4, 19, 199), None),
    ((5, 0, 0), "rate_address"),
    ((9, 25, 500), "rate_address"),  # the narrowest limit is named
    ((4, 20, 0), "rate_domain"),
    ((4, None, 199), None),  # free mail: no per-domain limit
    ((0, 19, 200), "rate_global"),
    ((0, None, 200), "rate_global"),
])
def test_rate_refusal(counts: tuple[int, int | None, int], reason: str | None) -> None:
    assert rate_refusal(*counts, LIMITS) == reason


def test_a_zero_limit_allows_nothing() -> None:
    assert rate_refusal(0, 0, 0, RateLimits(0, 20, 200)) == "rate_address"
    assert rate_refusal(0, 0, 0, RateLimits(5, 20, 0)) == "rate_global"
