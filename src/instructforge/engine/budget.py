"""A budget cap: no call is sent that could take a run's spending past ``max_cost`` dollars.

Before each call that reaches a model, :class:`~instructforge.engine.context.Context` asks
the budget to admit the call's most it could cost (prompt tokens, roughly, plus
``max_tokens`` of answer, at the model's price). The call goes when what was spent, plus the
most the calls in flight could cost, plus this one, fits under the cap. When it does not, the
call waits for the calls in flight to finish (their real cost is usually far below their
most); if it still does not fit with nothing in flight, the budget is spent: this and every
later call raise :class:`BudgetExceeded`, the job lets the calls in flight finish, writes
everything, and stops. What was spent stays within one call's cost of the cap, never over it
when answers stay within ``max_tokens`` and prompts within the estimate::

    budget = Budget(max_cost=2.0, spent=0.5)   # 0.5 spent by earlier invocations
    await budget.admit(0.01)                   # ... the call ...
    budget.settle(0.01, actual=0.004)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from instructforge.errors import InstructForgeError
from instructforge.llm.base import LLM

EXIT_BUDGET = 4  # the run stopped at its --max-cost; rerun with a higher cap to continue


class BudgetExceeded(InstructForgeError, RuntimeError):
    """The next call could take spending past ``--max-cost``; the job stops cleanly."""

    exit_code = EXIT_BUDGET


class Budget:
    """Spending so far (``spent``, dollars) against ``max_cost``; see the module docstring."""

    def __init__(self, max_cost: float, spent: float = 0.0) -> None:
        if not max_cost > 0:
            raise ValueError(f"max_cost must be > 0 dollars, got {max_cost}")
        self.max_cost = max_cost
        self.spent = spent
        self.reserved = 0.0  # the most the calls in flight could cost
        self.in_flight = 0
        self.exhausted = False
        self._changed: asyncio.Event | None = None

    @staticmethod
    def check(llms: Sequence[LLM]) -> None:
        """Refuse, before any call, a budget over models whose price is unknown."""
        unknown = [llm.model_id for llm in llms if llm.price is None]
        if unknown:
            raise InstructForgeError(
                f"--max-cost needs the price of {', '.join(unknown)}: give --price IN,OUT (USD "
                "per million prompt and completion tokens) or add the model to a prices file "
                "named by INSTRUCTFORGE_PRICES (see the README, 'Paying for an API')")

    async def admit(self, most: float) -> None:
        """Wait until a call that may cost up to ``most`` dollars fits under the cap; raise
        :class:`BudgetExceeded` when it cannot."""
        if self._changed is None:
            self._changed = asyncio.Event()
        while True:
            if self.exhausted:
                raise self.error()
            if self.spent + self.reserved + most <= self.max_cost:
                self.reserved += most
                self.in_flight += 1
                return
            if self.in_flight == 0:
                self.exhausted = True
                raise self.error()
            self._changed.clear()
            await self._changed.wait()

    def settle(self, most: float, actual: float) -> None:
        """A call admitted with ``most`` finished (``actual`` dollars; 0 if it failed)."""
        self.reserved = max(0.0, self.reserved - most)
        self.in_flight -= 1
        self.spent += actual
        if self._changed is not None:
            self._changed.set()

    def error(self) -> BudgetExceeded:
        return BudgetExceeded(
            f"budget reached: ${self.spent:.4f} spent of --max-cost ${self.max_cost:g}, and the "
            "next call could cost more than is left. Calls in flight were finished and "
            "everything finished is kept; rerun the same command with a higher --max-cost to "
            "continue (finished calls are replayed from the cache, not paid again).")
