"""Example tasks, used by ``sje up --example`` and the README tour.

``count_primes`` is real CPU work (trial division over a range); ``total`` reduces the
per-range counts; ``fetch_title`` shows an ``async def`` task sharing a child's event loop.
"""

from __future__ import annotations

import asyncio
import math

from sje.tasks import task


@task(retries=2, timeout=60)
def count_primes(bounds: list[int]) -> int:
    """How many primes lie in ``[lo, hi)``."""
    lo, hi = bounds
    count = 0
    for n in range(max(lo, 2), hi):
        if n < 4 or (n % 2 and all(n % d for d in range(3, math.isqrt(n) + 1, 2))):
            count += 1
    return count


@task
def total(counts: list[int]) -> int:
    """Sum of the per-range results (the reduce step)."""
    return sum(counts)


@task
async def pause_and_echo(item: dict[str, float]) -> dict[str, float]:
    """Wait ``item['seconds']`` without holding a process, then echo the item."""
    await asyncio.sleep(item.get("seconds", 0.1))
    return item
