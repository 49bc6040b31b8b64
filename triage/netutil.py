"""Network helpers shared by the IMAP, SMTP and settings code."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: the only hosts a password may go to in clear.

    Names other than localhost are never resolved: DNS must not decide whether to send a
    password in clear text."""
    if host.lower().rstrip(".") in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
