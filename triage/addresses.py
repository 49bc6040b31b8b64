"""The address policy: whom automatic mail may go to, and how addresses are counted.

Pure functions, no I/O. Every outgoing mail is checked here at send time (triage.pipeline's
sweep); the store's enqueue-time decision uses the same functions, and the rate limits count
``normalise``d addresses so that one mailbox counts once however it is spelt.

Reasons are short fixed codes (``REASONS``), so they can be a metric label and an event's
``reason`` without quoting the address.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

# Why no automatic mail goes to an address: code -> what an event or a log line says.
REASONS: dict[str, str] = {
    "unparseable": "the address cannot be parsed as one mailbox",
    "multiple_addresses": "the address holds more than one address (a quoted list)",
    "ip_literal": "the domain is an IP address, not a name",
    "dotless_domain": "the domain has no dot (a local or made-up host)",
    "role_address": "an automated or mail-system sender, which nobody reads",
    "own_address": "one of our own addresses or domains",
    "rate_address": "the per-address hourly limit is reached",
    "rate_domain": "the per-domain hourly limit is reached",
    "rate_global": "the global hourly limit is reached",
}

# Why the store queues no acknowledgment for a new work order: the address policy's reasons,
# and two that come before any address is checked (the From field, read by triage.sender).
ACK_REASONS: dict[str, str] = {
    "untrusted_sender": "From is missing or does not name one sender unambiguously",
    "no_sender": "no sender address",
    **REASONS,
}

# Mail providers whose users are not one organisation: the per-domain rate limit does not
# apply to them (one limit for all of gmail.com would let any stranger use up everyone's).
FREEMAIL = frozenset({
    "gmail.com", "googlemail.com", "yahoo.com", "ymail.com", "outlook.com", "hotmail.com",
    "live.com", "msn.com", "aol.com", "icloud.com", "me.com", "mac.com", "proton.me",
    "protonmail.com", "gmx.com", "gmx.net", "mail.com", "zoho.com", "yandex.com",
    "comcast.net", "verizon.net", "att.net", "sbcglobal.net", "cox.net", "earthlink.net",
})

# Automated senders: mail to them is read by no one, and an answer to an automaton is how
# mail loops start (RFC 3834 section 2). Compared after normalising, with "-", "_" and "."
# removed, so "no-reply", "no_reply" and "No.Reply" are one entry.
# - no-reply family: the sender says it reads nothing.
# - mailer-daemon, postmaster: the mail system's own addresses (RFC 5321 section 4.5.1);
#   bounces come from them, and postmaster is for mail-system trouble, not requests.
# - bounce(s), and VERP forms (bounce-123-x@, bounces+x@): return paths, never a person.
# - notification(s), notify: platform notifiers (notifications@github.com and kin) that
#   do not read replies; a person never writes from them.
# - mailing-list machinery (listserv, majordomo, owner-*, *-request, *-owner, *-bounces):
#   RFC 3834 section 2 asks responders never to answer them.
# Not here: info@, support@, admin@, office@, abuse@, webmaster@. Small clients really
# write from those, and a person reads them; refusing them would leave real requests
# unacknowledged.
_ROLE_EXACT = frozenset({
    "noreply", "donotreply", "dontreply", "mailerdaemon", "postmaster", "bounce", "bounces",
    "notification", "notifications", "notify", "listserv", "majordomo",
})
_ROLE_SQUASHED_PREFIXES = ("noreply", "donotreply", "bounce", "mailerdaemon")
_ROLE_PREFIXES = ("owner-",)
_ROLE_SUFFIXES = ("-request", "-owner", "-bounces", "-noreply")

# RFC 5322 atext: what an unquoted local part may hold besides dots.
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+|[^\x00-\x7f]+")
_DOT_ATOM = re.compile(rf"(?:{_ATEXT.pattern})(?:\.(?:{_ATEXT.pattern}))*")
# In a quoted local part these separate addresses or start another one: a quoted string
# holding them is a list or a trick ("v1@a.test,v2@b.test"@x), never one person's mailbox.
_SEPARATORS = re.compile(r"[@,;<>]")
# Legal inside quotes, but no mailbox we could answer has them; some mail systems would
# read the address differently from us.
_ODD_QUOTED = re.compile(r"[\s\"\\()\[\]:]")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class Address:
    """An address taken apart. ``local`` has quoting and escapes removed; ``domain`` is
    case-folded, IDNA-encoded and without a trailing dot."""

    local: str
    domain: str
    quoted: bool


class AddressError(ValueError):
    """Not one parseable mailbox; ``reason`` is a ``REASONS`` code."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


def parse(addr: str) -> Address:
    """An addr-spec (optionally in angle brackets) taken apart; raises AddressError."""
    s = addr.strip()
    if s.startswith("<") and s.endswith(">"):
        s = s[1:-1].strip()
    if not s or any(c in s for c in "\r\n\0"):
        raise AddressError("unparseable", "empty or holds a control character")
    quoted = s.startswith('"')
    if quoted:
        local, rest = _quoted(s)
        if _SEPARATORS.search(local):
            raise AddressError("multiple_addresses", "quoted local part holds a separator")
        if _ODD_QUOTED.search(local) or not local:
            raise AddressError("unparseable", "quoted local part is empty or odd")
        if not rest.startswith("@"):
            raise AddressError("unparseable", "nothing after the quoted local part")
        domain = rest[1:]
    else:
        local, at, domain = s.rpartition("@")
        if not at:
            raise AddressError("unparseable", "no @")
        if any(c in local for c in "@,;<>\"") or "," in domain or ";" in domain:
            raise AddressError("multiple_addresses", "more than one address")
        if not _DOT_ATOM.fullmatch(local):
            raise AddressError("unparseable", "local part is not a dot-atom")
    return Address(local, _domain(domain), quoted)


def _quoted(s: str) -> tuple[str, str]:
    """The unescaped content of the leading quoted string, and what follows it."""
    out: list[str] = []
    i = 1
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out.append(s[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), s[i + 1:]
        out.append(c)
        i += 1
    raise AddressError("unparseable", "unterminated quoted local part")


def _domain(raw: str) -> str:
    d = raw.strip()
    if d.startswith("[") and d.endswith("]"):
        raise AddressError("ip_literal", "domain is an address literal")
    d = d.rstrip(".").casefold()  # "example.com." is the same domain, fully qualified
    if d[-1:].isdigit() or ":" in d:  # no top-level domain ends in a digit
        try:
            ipaddress.ip_address(d)
        except ValueError:
            pass
        else:
            raise AddressError("ip_literal", "domain is an IP address")
    if not d:
        raise AddressError("unparseable", "no domain")
    if not d.isascii():
        try:
            d = d.encode("idna").decode("ascii")
        except UnicodeError:
            raise AddressError("unparseable", "domain is not a valid IDN") from None
    labels = d.split(".")
    if len(labels) < 2:
        raise AddressError("dotless_domain", "domain has no dot")
    if len(d) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise AddressError("unparseable", "domain is not a host name")
    return d


def normalise(addr: str) -> str:
    """One key per mailbox, for rate limits and for recognising our own addresses.

    Case-folded throughout (local parts are case-sensitive only in theory; no mail system
    in use treats them so); quoting removed (``"victim"@x`` is ``victim@x``); the trailing
    dot of the domain removed; a ``+tag`` removed (Gmail, Outlook, Fastmail, Postfix and
    Exim all deliver ``a+tag`` to ``a``). Dots in the local part are removed on every
    domain, not only on gmail.com: Google delivers ``vic.tim@`` to ``victim@`` for Gmail
    and for every Google Workspace domain, and which custom domains those are cannot be
    told from the address. Merging two real people whose addresses differ only by dots
    (``j.smith``/``jsmith``) costs them a shared hourly budget; not merging lets anyone
    multiply our mail to one victim. The result is a key, never an address to send to.

    Raises AddressError for what ``parse`` rejects.
    """
    return _key(parse(addr))


def _key(a: Address) -> str:
    local = a.local.casefold().split("+", 1)[0].replace(".", "")
    return f"{local}@{a.domain}"


def _is_role(local: str) -> bool:
    """``local`` normalised (lower case, no +tag); compared without separators."""
    squashed = re.sub(r"[-_.]", "", local)
    return (squashed in _ROLE_EXACT or squashed.startswith(_ROLE_SQUASHED_PREFIXES)
            or local.startswith(_ROLE_PREFIXES) or local.endswith(_ROLE_SUFFIXES))


def _under(domain: str, own: str) -> bool:
    return domain == own or domain.endswith("." + own)


def refusal(addr: str, own_addresses: Iterable[str] = (),
            own_domains: Iterable[str] = ()) -> str | None:
    """The ``REASONS`` code for not sending any automatic mail to ``addr``, or None.

    ``own_addresses`` and ``own_domains`` are ours (from_address, the lead and on-call
    addresses, from_address's domain): mail to them in any spelling (``helpdesk+x@itx.net``,
    ``helpdesk@itx.net.``, ``"helpdesk"@itx.net``, ``HELPDESK@mail.itx.net``) would come
    back into the helpdesk as a new request. The domains of ``own_addresses`` and the
    subdomains of all of them count as ours too.
    """
    return SendPolicy.of(own_addresses, own_domains).refusal(addr)


def _own_domain(d: str) -> str:
    try:
        return _domain(d)
    except AddressError:
        return d.strip().rstrip(".").casefold()


@dataclass(frozen=True)
class SendPolicy:
    """``refusal`` with our own addresses normalised once, for the sender's every row.

    ``staff`` are the own addresses that staff mail (SLA escalations, on-call pages) is
    meant for: the own-address rule, which keeps acknowledgments from looping back into
    the helpdesk, does not stop mail addressed to them as staff."""

    own_keys: frozenset[str]
    own_domains: frozenset[str]
    staff_keys: frozenset[str] = frozenset()

    @classmethod
    def of(cls, own_addresses: Iterable[str], own_domains: Iterable[str] = (),
           staff: Iterable[str] = ()) -> SendPolicy:
        keys, domains = set(), {_own_domain(d) for d in own_domains}
        for o in own_addresses:
            try:
                keys.add(normalise(o))
                domains.add(parse(o).domain)
            except AddressError:
                continue
        staff_keys = set()
        for o in staff:
            with contextlib.suppress(AddressError):
                staff_keys.add(normalise(o))
        return cls(frozenset(keys), frozenset(d for d in domains if d), frozenset(staff_keys))

    def refusal(self, addr: str, *, to_staff: bool = False) -> str | None:
        """As module-level ``refusal``; ``to_staff``: staff mail, allowed to ``staff``."""
        try:
            a = parse(addr)
        except AddressError as e:
            return e.reason
        key = _key(a)
        if to_staff and key in self.staff_keys:
            return None
        if key in self.own_keys or any(_under(a.domain, d) for d in self.own_domains):
            return "own_address"
        if _is_role(a.local.casefold().split("+", 1)[0]):
            return "role_address"
        return None


def rate_keys(addr: str) -> tuple[str, str | None]:
    """What a rate limit counts ``addr`` under: its normalised address, and its domain, or
    None for a free-mail domain (whose users are not one organisation). Raises
    AddressError for what ``parse`` rejects."""
    key = normalise(addr)
    domain = key.rsplit("@", 1)[1]
    return key, (None if domain in FREEMAIL else domain)


@dataclass(frozen=True)
class RateLimits:
    """Automatic mails allowed per hour. A limit of 0 allows none (as ack_rate_per_hour)."""

    per_address: int
    per_domain: int
    overall: int


def rate_refusal(address_count: int, domain_count: int | None, overall_count: int,
                 limits: RateLimits) -> str | None:
    """The ``REASONS`` code when one more automatic mail would exceed a limit, else None.

    The counts are the mails already queued in the last hour: to the normalised address,
    to its domain (None: a free-mail domain, not limited per domain), and to anyone. The
    address is checked first, so the reason names the narrowest limit that was hit.
    """
    if address_count >= limits.per_address:
        return "rate_address"
    if domain_count is not None and domain_count >= limits.per_domain:
        return "rate_domain"
    if overall_count >= limits.overall:
        return "rate_global"
    return None
