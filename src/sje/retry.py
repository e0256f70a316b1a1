"""Retry policy: exponential backoff with full jitter, the same for every broker."""

from __future__ import annotations

import random


def retry_delay(
    attempt: int, retries: int, backoff: float, backoff_max: float, rng: random.Random | None = None
) -> float | None:
    """Seconds to wait before the next attempt, or None when ``attempt`` was the last one.

    ``attempt`` counts from 1; ``retries=N`` allows at most N+1 attempts. The delay grows as
    ``backoff * 2**(attempt-1)``, capped at ``backoff_max``, and is drawn uniformly from its
    upper half so that many failing tasks do not retry in lock-step.
    """
    if attempt > retries:
        return None
    ceiling = min(backoff_max, backoff * 2.0 ** (attempt - 1))
    draw: float = (rng or random).uniform(0.5, 1.0)
    return ceiling * draw
