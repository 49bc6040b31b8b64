"""Cost of the send-time address policy per outbox row (triage.addresses.SendPolicy).

The sender checks every claimed row before it is sent, on the event loop; this says what
that adds to each mail (an SMTP delivery here costs ~1-2 ms).

    python bench/bench_addresses.py
"""

from __future__ import annotations

import time

from triage.addresses import SendPolicy, normalise
from triage.config import Settings

ADDRESSES = [
    "dana@harborviewdental.com", "Raj.Patel+billing@PatelCPA.com", '"maria"@sunrise.example.',
    "noreply@bank.example", "helpdesk+x@itx.net", "user@[192.0.2.1]", "kim@bücher.de",
]


def per_call(fn, n: int = 20_000) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(ADDRESSES[i % len(ADDRESSES)])
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    s = Settings()
    policy = SendPolicy.of(s.own_addresses(), s.own_domain_names(), staff=[s.lead_address])
    for _ in range(2):  # the first round warms up
        refusal_us = per_call(policy.refusal)
        normalise_us = per_call(lambda a: normalise(a) if "[" not in a else None)
    print(f"SendPolicy.refusal: {refusal_us:.1f} us per address")
    print(f"normalise: {normalise_us:.1f} us per address")


if __name__ == "__main__":
    main()
