"""When to try again: a small immutable policy that returns a time, never sleeps."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped; ``None`` once attempts are used up."""

    base_delay: float = 30.0
    factor: float = 2.0
    max_delay: float = 6 * 3600.0
    max_attempts: int = 12
    jitter: float = 0.5  # share of the delay that is randomised

    def next_attempt(
        self,
        attempts: int,
        now: datetime,
        *,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> datetime | None:
        """The time of attempt ``attempts + 1``; a server-given delay wins over the backoff."""
        if attempts >= self.max_attempts:
            return None
        if retry_after is not None:
            return now + timedelta(seconds=max(0.0, retry_after))
        delay = min(self.max_delay, self.base_delay * self.factor ** max(0, attempts - 1))
        spread = delay * self.jitter
        delay = delay - spread + (rng or random).random() * spread
        return now + timedelta(seconds=delay)
