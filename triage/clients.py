"""``triage client set``: record a client's contract (standard or 24x7) by mail domain.

Work orders take the contract of the sender's domain when they are opened, so a 24x7 client
must be recorded before its mail arrives to run on the always-open calendar.
"""

from __future__ import annotations

import argparse
import re
import sys

from sqlalchemy import select
from sqlalchemy.orm import Session

from triage.storage.models import Client, utcnow

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
CONTRACTS = ("standard", "24x7")


def set_client(s: Session, domain: str, contract: str, name: str | None = None) -> Client:
    domain = domain.strip().lower()
    if not _DOMAIN.match(domain):
        raise ValueError(f"not a mail domain: {domain!r}")
    if contract not in CONTRACTS:
        raise ValueError(f"contract must be one of {', '.join(CONTRACTS)}, not {contract!r}")
    client = s.scalar(select(Client).where(Client.domain == domain))
    if client is None:
        client = Client(domain=domain, name=name or domain, contract=contract,
                        created_at=utcnow())
        s.add(client)
    else:
        client.contract = contract
        if name:
            client.name = name
    return client


def cmd_client_set(ns: argparse.Namespace) -> int:
    from triage.config import load_settings
    from triage.storage.engine import make_engine, make_sessionmaker
    from triage.storage.migrate import upgrade

    settings = load_settings(ns.config)
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        with make_sessionmaker(engine).begin() as s:
            client = set_client(s, ns.domain, ns.contract, ns.name)
            print(f"{client.domain}: {client.name} ({client.contract})")
    except ValueError as e:
        print(f"triage client set: error: {e}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0
