"""The relay or the recipients? Permanent refusals are held until the answer is known.

A relay that refuses everyone (relaying denied after a config change, our sender address
refused, a content filter that rejects our template) answers 5xx to each mail in turn. A
5xx is final for one recipient; dead-lettering each row on it would let one
misconfiguration lose every pending acknowledgment. A refused recipient and a refusing
relay look the same on one mail; they differ across mails:

- A permanent refusal at MAIL, RCPT or DATA is *held*: the row stays pending and backs off
  as after a temporary failure (its attempt counts), and is remembered here.
- The relay then accepts a mail: it works, so the held refusals were the recipients'. They
  are dead-lettered, as a 5xx always was. A single bad recipient among good ones ends as
  before, one mail later.
- Refusals of ``recipients`` (3) different normalised recipients in at least ``domains`` (2)
  domains in a row, with nothing accepted in between and within ``window`` (15 minutes):
  the relay refuses everyone. The outbox pauses as for a connect or AUTH failure, and the
  held rows become due again with their attempts given back, so when the relay is fixed
  they leave in order and none was dead-lettered.

Why three recipients and two domains: one bad address is routine (a typo, a forged From);
two in a row happen (two forged senders in one spam run); three different people, not all
at one domain, each refused with nothing accepted between them is what a relay refusing
everyone produces, and rare otherwise. One domain refusing several recipients is that
domain's trouble (it does not exist, its server refuses us), not the relay's. Fewer would
pause the outbox for ordinary bad addresses; more would let a broken relay burn more tries
before the pause (each held row costs one attempt until the verdict gives it back).

A probe decides sooner and guards the verdict: MAIL, RCPT to a client address the relay
accepted before, then RSET (nothing is handed over). If the relay accepts that address, the
held refusals are the recipients', whatever their number. It is asked when the threshold
is reached, because a burst of forged senders at many domains looks exactly like a broken
relay and, paused and retried, would hold the outbox forever on the same rows; and when a
sweep ends with refusals held, so that a lone bad recipient with no mail behind it is
dead-lettered at once. The probe is used only when every held refusal was at
RCPT: a relay that refuses our content at DATA accepts any RCPT. Without a known address
(a new install) the threshold alone decides.

A held row whose attempts reach the retry limit is dead-lettered like any other, so a
refusal nothing ever explains is not retried forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from triage.addresses import AddressError, normalise

# Stages whose 5xx may be the relay's: MAIL (our sender), RCPT (relaying), DATA (content).
RELAY_STAGES = frozenset({"mail", "rcpt", "data"})


def recipient_key(addr: str) -> tuple[str, str]:
    """(normalised recipient, domain); an address the policy cannot parse counts as itself."""
    try:
        key = normalise(addr)
    except AddressError:
        key = addr.strip().casefold()
    return key, key.rpartition("@")[2]


@dataclass(frozen=True)
class Held:
    """A row refused permanently and held pending while the cause is unknown."""

    outbox_id: int
    attempt: int  # the row's attempts after that claim: settled only if still the same
    recipient: str  # normalised
    domain: str
    stage: str
    answer: str
    at: float  # monotonic seconds


class RefusalStreak:
    """Consecutive permanent refusals since the relay last accepted a mail (in memory, one
    per sending process: a restart forgets it, and the held rows, still pending, are
    judged again when they are next refused)."""

    def __init__(self, recipients: int = 3, domains: int = 2, window: float = 900.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if recipients < 2 or domains < 1 or window <= 0:
            raise ValueError("relay threshold: recipients >= 2, domains >= 1, window > 0")
        self.recipients, self.domains, self.window = recipients, domains, window
        self._clock = clock
        self._held: list[Held] = []

    @property
    def held(self) -> tuple[Held, ...]:
        return tuple(self._held)

    def now(self) -> float:
        return self._clock()

    def add(self, held: Held) -> bool:
        """Remember a held refusal; True when the streak now says the relay refuses everyone.
        Refusals older than the window are forgotten (their rows stay pending and are judged
        again when retried)."""
        horizon = held.at - self.window
        self._held = [h for h in self._held if h.at >= horizon and h.outbox_id != held.outbox_id]
        self._held.append(held)
        return self.reached()

    def reached(self) -> bool:
        return (len({h.recipient for h in self._held}) >= self.recipients
                and len({h.domain for h in self._held}) >= self.domains)

    def probe_can_decide(self) -> bool:
        """Only RCPT refusals: a relay refusing at MAIL or DATA would accept a probe's RCPT."""
        return bool(self._held) and all(h.stage == "rcpt" for h in self._held)

    def take(self) -> list[Held]:
        """The held refusals, forgotten here (the caller settles them)."""
        held, self._held = self._held, []
        return held
