"""A backend's request limit, admitting a started input's next call before a new input's first.

A job runs many inputs at once (an Evol-Instruct chain per seed), each making calls one after
another. When every request slot is taken, waiting calls are admitted in this order:

1. the next call of an input that has already made one (its chain goes on), fewest calls
   made first, so started chains move on together;
2. the first call of an input not yet started, in the order the inputs started.

So a run keeps about as many chains going as fill the slots, and finishes the chains it
started before it starts others. The engine tells the limiter which input a call belongs to
with :func:`input_turn` (a context variable, so it reaches the tasks an input starts); calls
outside any input (a backend used alone) queue first come, first served::

    limiter = PriorityLimiter(12)
    async with limiter:
        ...  # one request on the wire
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class Turn:
    """One input's place in the queue: ``order`` (when it started) and calls admitted."""

    order: int
    calls: int = 0

    def key(self) -> tuple[int, int]:
        return (0, self.calls) if self.calls else (1, self.order)


_turn: ContextVar[Turn | None] = ContextVar("instructforge_turn", default=None)


def input_turn(order: int) -> Turn:
    """Mark the calls the current task (and the tasks it starts) makes as one input's,
    the ``order``-th to start."""
    turn = Turn(order)
    _turn.set(turn)
    return turn


class PriorityLimiter:
    """At most ``value`` holders at once; waiters are admitted in the order of the module
    docstring (first come, first served among equals)."""

    def __init__(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"a limit must be >= 1, got {value}")
        self._value = value
        self._waiters: list[tuple[tuple[int, int], int, asyncio.Future[None]]] = []
        self._arrival = itertools.count()

    async def acquire(self) -> None:
        turn = _turn.get()
        if self._value > 0 and not self._waiters:
            self._value -= 1
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            key = turn.key() if turn else (1, -1)
            heapq.heappush(self._waiters, (key, next(self._arrival), fut))
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():  # admitted, then cancelled: pass it on
                    self.release()
                raise
        if turn is not None:
            turn.calls += 1

    def release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():  # a cancelled waiter's future is done: skip it
                fut.set_result(None)
                return
        self._value += 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()
