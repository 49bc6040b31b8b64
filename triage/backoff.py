"""Capped exponential backoff with full jitter, shared by every retry loop in the service.

Full jitter (a uniform draw in ``[0, min(cap, base * factor**attempt)]``, as in the AWS
architecture note "Exponential Backoff and Jitter") spreads the retries of several
processes that lost the same server at the same moment, so they do not return in step.
The random source and the sleep are injectable, so tests need neither luck nor waiting.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays for consecutive failures; ``reset()`` after a success.

    ``base`` is the ceiling of the first delay, ``cap`` the largest delay ever returned.
    ``jitter=False`` gives the bare ceilings (useful in logs and tests).
    """

    base: float = 1.0
    cap: float = 300.0
    factor: float = 2.0
    jitter: bool = True
    rng: Callable[[], float] = field(default=random.random, repr=False)
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False)
    attempt: int = 0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base or self.factor < 1:
            raise ValueError("need 0 < base <= cap and factor >= 1")

    def ceiling(self, attempt: int) -> float:
        """Largest delay for the given 0-based attempt (no overflow for huge attempts)."""
        # factor**attempt overflows floats near attempt 1024; the cap is reached long before.
        limit = self.base
        for _ in range(attempt):
            limit *= self.factor
            if limit >= self.cap:
                return self.cap
        return min(limit, self.cap)

    def next_delay(self) -> float:
        """The delay before the next try; advances the attempt counter."""
        ceiling = self.ceiling(self.attempt)
        self.attempt += 1
        return ceiling * self.rng() if self.jitter else ceiling

    async def wait(self) -> float:
        """Sleep for ``next_delay()`` (cancellable); returns the delay slept."""
        delay = self.next_delay()
        await self.sleep(delay)
        return delay

    def reset(self) -> None:
        self.attempt = 0
