"""A deterministic benchmark corpus built from the hand-written training emails.

    python bench/corpus.py --count 2000 --out /tmp/corpus   # writes 000001.eml ... + stats

The training JSONL holds only subject, body, From and a few telling headers; a real inbox
message is heavier. Each generated message therefore gets what a mail server adds: a
Received chain, Authentication-Results, DKIM and ARC signatures (1-4 KB of headers in all),
a Message-ID and Date, one of nine charsets and transfer encodings, sometimes an HTML
alternative or a quoted thread, and ~5 % carry a 50-500 KB attachment. The same ``seed``
and ``count`` always give the same bytes, so runs on different days compare.

Senders are made unique per pass over the corpus (``name`` -> ``name2``, ...): the daemon caps
acknowledgments per sender per hour, and a backlog of 10,000 requests from 1,282 people
would measure the cap, not the pipeline.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import quopri
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.header import Header
from email.utils import format_datetime, parseaddr
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
TRAINING = REPO / "data" / "training"
BASE_DATE = datetime(2026, 11, 23, 13, 0, tzinfo=UTC)  # a Monday; fixed for determinism

# (charset, transfer encoding, weight). Bodies are English; the 8-bit charsets matter for
# signatures and typographic quotes, which some of these cannot encode (then: utf-8).
CHARSETS: list[tuple[str, str, int]] = [
    ("utf-8", "quoted-printable", 28),
    ("utf-8", "8bit", 14),
    ("utf-8", "base64", 10),
    ("us-ascii", "7bit", 12),
    ("iso-8859-1", "quoted-printable", 10),
    ("windows-1252", "quoted-printable", 10),
    ("iso-8859-15", "8bit", 5),
    ("iso-8859-2", "quoted-printable", 3),
    ("koi8-r", "8bit", 2),
    ("shift_jis", "base64", 2),
    ("gb2312", "base64", 2),
    ("big5", "7bit", 2),
]
SIGNOFFS = ["Merci, René", "Thanks — Zoë", "Grüße, Jürgen", "Cheers, Åsa", "“Thanks!” – Inés",
            "Best, François", "Saludos, Begoña", "Thanks, Łukasz"]
MAILERS = ["Microsoft Outlook 16.0", "Apple Mail (2.3774.200.91.1.1)", "iPhone Mail (21H16)",
           "Mozilla Thunderbird 128.4", "Microsoft Outlook for Mac 16.89", "Gmail"]
ATTACHMENTS = [("application/pdf", "scan{}.pdf"), ("image/png", "screenshot{}.png"),
               ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "invoice{}.xlsx"), ("image/jpeg", "IMG_{}.jpg"), ("application/zip", "logs{}.zip")]
RELAYS = ["mail-sor-f41.google.com", "NAM12-BN8-obe.outbound.protection.outlook.com",
          "mx-out.secureserver.net", "smtp.comcast.net", "mta7.am0.yahoodns.net",
          "relay.mailchannels.net", "o1.email.sendgrid.net", "mail.zoho.com"]


@dataclass(frozen=True)
class Record:
    subject: str
    body: str
    sender: str
    headers: dict[str, str]
    label: str


def load_records(folder: Path = TRAINING) -> list[Record]:
    """Every training email, in file then line order (sorted file names: stable)."""
    out: list[Record] = []
    for path in sorted(folder.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    d = json.loads(line)
                    out.append(Record(d["subject"], d["body"], d["from"], d["headers"],
                                      d["label"]))
    return out


def _b64sig(rng: random.Random, nbytes: int) -> str:
    return base64.b64encode(rng.randbytes(nbytes)).decode()


def _fold(name: str, value: str, width: int = 76) -> str:
    """Fold a long header of unbroken tokens (signatures) into continuation lines."""
    line = f"{name}: {value}"
    parts = [line[i : i + width] for i in range(0, len(line), width)]
    return "\r\n\t".join(parts)


def _trace_headers(rng: random.Random, domain: str, when: datetime) -> list[str]:
    """Received/ARC/DKIM/Authentication-Results headers, 1-4 KB in all."""
    target = rng.randint(1024, 4096)
    out: list[str] = []
    hops = rng.randint(2, 6)
    t = when
    for hop in range(hops):
        relay = rng.choice(RELAYS)
        ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        qid = "".join(rng.choice("0123456789ABCDEF") for _ in range(10))
        out.append(f"Received: from {relay} ({relay} [{ip}])\r\n\tby "
                   f"{'mx1.itx.net' if hop == 0 else f'smtp{hop}.{domain}'} (Postfix) with "
                   f"ESMTPS id {qid}\r\n\tfor <helpdesk@itx.net>; {format_datetime(t)}")
        t -= timedelta(seconds=rng.randint(1, 40))
    out.append(f"Authentication-Results: mx1.itx.net;\r\n\tdkim=pass header.d={domain} "
               f"header.s=s1 header.b={_b64sig(rng, 6)};\r\n\tspf=pass (mx1.itx.net: domain of "
               f"{domain} designates sender) smtp.mailfrom={domain};\r\n\tdmarc=pass (p=NONE) "
               f"header.from={domain}")
    size = sum(len(h) for h in out)
    arc = 1
    while size < target:
        sig = _b64sig(rng, rng.choice((128, 256)))
        if arc <= 2 and rng.random() < 0.6:
            h = _fold("ARC-Seal", f"i={arc}; a=rsa-sha256; d={domain}; s=arc-2024; t="
                      f"{int(when.timestamp())}; cv={'none' if arc == 1 else 'pass'}; b={sig}")
            arc += 1
        else:
            h = _fold("DKIM-Signature", f"v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; "
                      f"s=s{rng.randint(1, 9)}; h=from:to:subject:date:message-id:mime-version;"
                      f" bh={_b64sig(rng, 32)}; b={sig}")
        out.append(h)
        size += len(h)
    return out


def _encode_header_text(text: str, charset: str) -> str:
    if text.isascii():
        return text
    try:
        text.encode(charset)
    except (UnicodeEncodeError, LookupError):
        charset = "utf-8"
    return Header(text, charset).encode()


def _body_bytes(text: str, charset: str, cte: str) -> tuple[bytes, str, str]:
    """The encoded body, the charset really used and its CTE (falls back to utf-8 + QP)."""
    try:
        data = text.encode(charset)
    except UnicodeEncodeError:
        charset, cte = "utf-8", "quoted-printable"
        data = text.encode(charset)
    if cte == "7bit" and not data.isascii():
        cte = "quoted-printable" if charset != "big5" else "base64"
    if cte == "quoted-printable":
        data = quopri.encodestring(data.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
    elif cte == "base64":
        data = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return data, charset, cte


def _html(text: str) -> str:
    paras = "".join(
        "<p>" + p.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        .replace("\n", "<br>") + "</p>" for p in text.split("\n\n")
    )
    return (f"<html><head><meta charset=\"utf-8\"><style>p{{margin:0 0 1em;font-family:Calibri,"
            f"sans-serif}}</style></head><body><div class=\"WordSection1\">{paras}</div>"
            f"</body></html>")


def _quoted_thread(rng: random.Random, records: list[Record], n: int) -> str:
    """A long quoted history (forwarded chains make the mid-size messages of a real inbox)."""
    out = []
    for depth in range(1, n + 1):
        r = rng.choice(records)
        prefix = "> " * depth
        out.append(f"\n\n{prefix}On Mon, Nov 16, 2026, {r.sender} wrote:\n" + "\n".join(
            prefix + line for line in r.body.splitlines()))
    return "".join(out)


def make_message(i: int, rec: Record, records: list[Record], rng: random.Random,
                 cycle: int) -> bytes:
    """One message: record ``rec`` dressed as it would reach the helpdesk's mailbox."""
    name, addr = parseaddr(rec.sender)
    local, _, domain = addr.partition("@")
    domain = domain or "example.com"
    if cycle:
        addr = f"{local}{cycle + 1}@{domain}"
    when = BASE_DATE + timedelta(seconds=i * 17 + rng.randint(0, 16))
    charset, cte, _ = rng.choices(CHARSETS, weights=[w for *_, w in CHARSETS])[0]

    text = rec.body.replace("\r\n", "\n")
    if rng.random() < 0.12 and charset not in ("us-ascii", "big5"):
        text += "\n\n" + rng.choice(SIGNOFFS)
    if rng.random() < 0.10:
        text += _quoted_thread(rng, records, rng.randint(2, 8))
    text = text.replace("\n", "\r\n") + "\r\n"

    head = _trace_headers(rng, domain, when)
    from_hdr = (f"{_encode_header_text(name, charset)} <{addr}>" if name else addr)
    head += [
        f"From: {from_hdr}",
        "To: ITX Helpdesk <helpdesk@itx.net>",
        f"Subject: {_encode_header_text(rec.subject, charset)}",
        f"Date: {format_datetime(when)}",
        f"Message-ID: <{i:06d}.{rng.getrandbits(48):012x}@{domain}>",
        "MIME-Version: 1.0",
    ]
    if rng.random() < 0.6:
        head.append(f"X-Mailer: {rng.choice(MAILERS)}")
    content_type = None
    for k, v in rec.headers.items():
        if k.lower() == "content-type":
            content_type = v
        elif k.lower() not in ("x-mailer",) or rng.random() < 0.5:
            head.append(f"{k}: {v}")

    if content_type and content_type.startswith("multipart/report"):
        boundary = content_type.split('boundary="', 1)[1].rstrip('"')
        body, cs, enc = _body_bytes(text, charset, cte)
        payload = (
            f"This is a MIME-encapsulated message.\r\n\r\n--{boundary}\r\n"
            f"Content-Type: text/plain; charset={cs}\r\nContent-Transfer-Encoding: {enc}\r\n\r\n"
        ).encode() + body + (
            f"\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
            f"Reporting-MTA: dns; mx1.{domain}\r\n\r\nFinal-Recipient: rfc822; "
            f"someone@{domain}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--{boundary}--\r\n"
        ).encode()
        head.append(f"Content-Type: {content_type}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + payload

    body, cs, enc = _body_bytes(text, charset, cte)
    plain = (f"Content-Type: text/plain; charset=\"{cs}\"\r\n"
             f"Content-Transfer-Encoding: {enc}\r\n\r\n").encode() + body
    if rng.random() < 0.3:  # multipart/alternative with an HTML twin
        hbody, hcs, henc = _body_bytes(_html(text), cs, "quoted-printable")
        alt_b = f"alt_{i:06d}_{rng.getrandbits(32):08x}"
        part = (f"Content-Type: multipart/alternative; boundary=\"{alt_b}\"\r\n\r\n"
                f"--{alt_b}\r\n").encode() + plain + (
            f"\r\n--{alt_b}\r\nContent-Type: text/html; charset=\"{hcs}\"\r\n"
            f"Content-Transfer-Encoding: {henc}\r\n\r\n").encode() + hbody + (
            f"\r\n--{alt_b}--\r\n").encode()
    else:
        part = plain

    if rng.random() < 0.05:  # an attachment of 50-500 KB
        ctype, pattern = rng.choice(ATTACHMENTS)
        filename = pattern.format(rng.randint(100, 9999))
        blob = base64.encodebytes(rng.randbytes(rng.randint(50_000, 500_000)))
        mix_b = f"mix_{i:06d}_{rng.getrandbits(32):08x}"
        head.append(f"Content-Type: multipart/mixed; boundary=\"{mix_b}\"")
        payload = (f"This is a multi-part message in MIME format.\r\n\r\n--{mix_b}\r\n"
                   ).encode() + part + (
            f"\r\n--{mix_b}\r\nContent-Type: {ctype}; name=\"{filename}\"\r\n"
            f"Content-Disposition: attachment; filename=\"{filename}\"\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n").encode() + blob.replace(
            b"\n", b"\r\n") + f"\r\n--{mix_b}--\r\n".encode()
        return ("\r\n".join(head) + "\r\n").encode() + payload

    # Without an attachment the part's own Content-Type line joins the top-level header.
    return ("\r\n".join(head) + "\r\n").encode() + part


def generate(count: int, seed: int = 7, records: list[Record] | None = None) -> Iterator[bytes]:
    """``count`` messages; a shuffled pass over the corpus, then another, senders renamed."""
    records = records if records is not None else load_records()
    rng = random.Random(seed)
    order = list(range(len(records)))
    for i in range(count):
        cycle, pos = divmod(i, len(records))
        if pos == 0:
            rng.shuffle(order)
        yield make_message(i, records[order[pos]], records, rng, cycle)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, help="write NNNNNN.eml files here")
    args = ap.parse_args()
    sizes: list[int] = []
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for i, raw in enumerate(generate(args.count, args.seed)):
        sizes.append(len(raw))
        if args.out:
            (args.out / f"{i + 1:06d}.eml").write_bytes(raw)
    sizes.sort()
    big = sum(1 for s in sizes if s > 50_000)
    sys.stdout.write(
        f"{len(sizes)} messages, {sum(sizes) / 1e6:.1f} MB; median {sizes[len(sizes) // 2]} B, "
        f"p90 {sizes[int(len(sizes) * 0.9)]} B, max {sizes[-1]} B; {big} over 50 KB\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
