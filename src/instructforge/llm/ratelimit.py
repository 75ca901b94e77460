"""Staying under a server's rate limits: token buckets for requests and tokens per minute,
and a concurrency limit that halves when the server says it is overloaded (HTTP 429/503)
and grows back by one slot per round of successes (additive increase, multiplicative
decrease, as TCP does), so a run at a provider's limit keeps to its throughput instead of
hammering it with requests it will refuse::

    limit = AdaptiveLimit(16)
    epoch = await limit.acquire()
    try:
        ...  # send; on 429: limit.overloaded(epoch); on success: limit.succeeded()
    finally:
        limit.release()
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


class TokenBucket:
    """At most ``per_minute`` units a minute, in bursts of at most ``burst`` (default: one
    second's worth), refilled continuously.

    A request for more than the bucket holds waits for a full bucket and takes it into debt,
    so one large request is slow, not stuck.
    """

    def __init__(self, per_minute: float, burst: float | None = None) -> None:
        if not per_minute > 0:
            raise ValueError(f"a rate limit must be > 0 per minute, got {per_minute}")
        self.rate = per_minute / 60.0
        self.capacity = burst if burst is not None else max(1.0, self.rate)
        self.tokens = self.capacity
        self._t = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self._t) * self.rate)
        self._t = now

    async def take(self, n: float = 1.0) -> None:
        need = min(n, self.capacity)
        while True:
            self._refill()
            if self.tokens >= need:
                self.tokens -= n
                return
            await asyncio.sleep((need - self.tokens) / self.rate)


class AdaptiveLimit:
    """Requests in flight, at most :attr:`limit` (between 1 and ``maximum``).

    :meth:`overloaded` halves the limit, once per overload: requests sent before the last
    halving (an older ``epoch``) report what the server thought of the old limit and halve
    nothing more. :meth:`succeeded` adds one slot per ``limit`` successes.

    >>> lim = AdaptiveLimit(16)
    >>> lim.overloaded(lim.epoch); lim.overloaded(0); lim.limit
    8.0
    >>> for _ in range(8): lim.succeeded()
    >>> lim.limit
    9.0
    """

    def __init__(self, maximum: int, adaptive: bool = True) -> None:
        self.maximum = maximum
        self.adaptive = adaptive
        self.limit = float(maximum)
        self.active = 0
        self.epoch = 0
        self.halvings = 0
        self._successes = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def _slots(self) -> int:
        return max(1, int(self.limit))

    async def acquire(self) -> int:
        """Wait for a slot; returns the epoch to report an overload with."""
        while self.active >= self._slots():
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake()  # pass the wake-up this waiter got to another
                elif fut in self._waiters:
                    self._waiters.remove(fut)
                raise
        self.active += 1
        return self.epoch

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def _wake(self) -> None:
        free = self._slots() - self.active
        while free > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1

    def overloaded(self, epoch: int) -> None:
        if self.adaptive and epoch == self.epoch:
            self.limit = max(1.0, float(int(self.limit) // 2))
            self.epoch += 1
            self._successes = 0
            self.halvings += 1

    def succeeded(self) -> None:
        if self.adaptive and self.limit < self.maximum:
            self._successes += 1
            if self._successes >= self.limit:
                self.limit += 1
                self._successes = 0
                self._wake()
