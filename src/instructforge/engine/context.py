"""What a step sees: cached, counted LLM calls.

Every LLM call a method makes goes through :meth:`Context.chat` / :meth:`Context.complete`::

    out = await ctx.chat(llm, [{"role": "user", "content": q}], params, step="respond")

The call is looked up in the run's request cache (and the optional shared cache) first;
identical calls in flight at the same time are made once; tokens, requests, retries (by
cause), errors and dollars (at the backend's ``price``) are counted per (model, step) for
``usage.json``. Only answers are cached: a call that failed (after the backend's retries) is
made again by the next run. With a :class:`~instructforge.engine.budget.Budget`, a call that
reaches a model is first admitted by it (cache hits cost nothing and always go).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from instructforge.engine.budget import Budget
from instructforge.engine.cache import RequestCache, request_key
from instructforge.llm.base import LLM, Completion, LLMError, Message, SamplingParams
from instructforge.llm.prices import approx_tokens


@dataclass
class StepUsage:
    requests: int = 0
    cached: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: int = 0  # finish_reason == "length"
    # Constrained calls (choices / json_schema) the server answered without the constraint:
    # it refused it (fallback) or the backend was told not to send it (off).
    unconstrained: int = 0
    seconds: float = 0.0
    # Attempts the backend made again (429/5xx, timeouts, dropped connections, unusable
    # answers), and by cause: {"HTTP 503": 4, "timeout": 2, "malformed": 1, ...}.
    retries: int = 0
    retry_causes: dict[str, int] = field(default_factory=dict)
    # Dollars the model's answers cost at its price; None while its price is unknown.
    cost_usd: float | None = None

    def count_retries(self, causes: Mapping[str, int]) -> None:
        for cause, n in causes.items():
            self.retries += n
            self.retry_causes[cause] = self.retry_causes.get(cause, 0) + n

    def add(self, counts: Mapping[str, Any]) -> None:
        """Add another ``as_dict()`` to this one (unknown keys are ignored)."""
        for k, v in counts.items():
            if k == "retry_causes":
                self.retry_causes = dict(Counter(self.retry_causes) + Counter(v))
            elif k == "cost_usd":
                if v is not None:
                    self.cost_usd = (self.cost_usd or 0.0) + v
            elif k in self.__dataclass_fields__:
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, Any]:
        d = {k: round(v, 3) if isinstance(v, float) else dict(sorted(v.items()))
             if isinstance(v, dict) else v for k, v in self.__dict__.items()}
        d["cost_usd"] = None if self.cost_usd is None else round(self.cost_usd, 6)
        return d


@dataclass
class Usage:
    """Token and request counts per model and step."""

    steps: dict[tuple[str, str], StepUsage] = field(default_factory=lambda: defaultdict(StepUsage))
    in_flight: int = 0

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.steps.values())

    @property
    def cost_usd(self) -> float:
        """Dollars spent on the models whose price is known."""
        return sum(s.cost_usd or 0.0 for s in self.steps.values())

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.steps.values())

    def retries(self) -> str:
        """Retries so far and their causes, most frequent first: ``"7 (timeout 4, HTTP 503
        3)"``, or ``"0"``."""
        causes: Counter[str] = Counter()
        for s in self.steps.values():
            causes.update(s.retry_causes)
        if not causes:
            return "0"
        detail = ", ".join(f"{c} {n}" for c, n in causes.most_common())
        return f"{sum(causes.values())} ({detail})"

    def add(self, by_model_step: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
        """Add counts in the shape of :meth:`as_dict` (another run's, another shard's)."""
        for model, steps in by_model_step.items():
            for step, counts in steps.items():
                self.steps[(model, step)].add(counts)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, dict[str, Any]] = {}
        for (model, step), u in sorted(self.steps.items()):
            out.setdefault(model, {})[step] = u.as_dict()
        return out


class Context:
    """Gives steps cached, counted access to LLMs. One per job run."""

    def __init__(self, cache: RequestCache | None, shared: RequestCache | None = None,
                 budget: Budget | None = None) -> None:
        self.cache = cache
        self.shared = shared
        self.budget = budget
        self.usage = Usage()
        self._pending: dict[str, asyncio.Future[Completion]] = {}

    async def chat(
        self, llm: LLM, messages: list[Message], params: SamplingParams, *, step: str
    ) -> Completion:
        return await self._call(llm, "chat", messages, params, step)

    async def complete(self, llm: LLM, text: str, params: SamplingParams, *, step: str) -> Completion:
        return await self._call(llm, "complete", text, params, step)

    async def _call(
        self, llm: LLM, kind: str, prompt: Any, params: SamplingParams, step: str
    ) -> Completion:
        key = request_key(llm.model_id, kind, prompt, params.to_dict())
        u = self.usage.steps[(llm.model_id, step)]
        if llm.price is not None and u.cost_usd is None:
            u.cost_usd = 0.0
        hit = self._lookup(key)
        if hit is not None:
            u.cached += 1
            return hit
        pending = self._pending.get(key)
        if pending is not None:  # the same request is already on its way: share it
            u.cached += 1
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The caller that made it gave it up (a discarded speculative call): make it.
                u.cached -= 1
                return await self._call(llm, kind, prompt, params, step)
        most = 0.0
        if self.budget is not None and llm.price is not None:
            most = llm.price.cost(approx_tokens(prompt), params.max_tokens)
            await self.budget.admit(most)
        fut: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        self.usage.in_flight += 1
        t0 = time.perf_counter()
        cost = 0.0
        try:
            if kind == "chat":
                out = await llm.chat(prompt, params)
            else:
                out = await llm.complete(prompt, params)
        except LLMError as e:
            u.errors += 1
            u.count_retries(e.retries)
            e.step = e.step or step
            e.model = e.model or llm.model_id
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        except BaseException:  # cancelled: a waiter makes the call itself
            fut.cancel()
            raise
        else:
            if llm.price is not None:
                cost = llm.price.cost(out.prompt_tokens, out.completion_tokens)
                u.cost_usd = (u.cost_usd or 0.0) + cost
        finally:
            if self.budget is not None and llm.price is not None:
                self.budget.settle(most, cost)
            self.usage.in_flight -= 1
            self._pending.pop(key, None)
            u.seconds += time.perf_counter() - t0
        u.requests += 1
        u.count_retries(out.retries)
        u.prompt_tokens += out.prompt_tokens
        u.completion_tokens += out.completion_tokens
        u.truncated += out.finish_reason == "length"
        u.unconstrained += out.extra.get("constraint") in ("fallback", "off")
        for c in (self.cache, self.shared):
            if c is not None:
                c.put(key, llm.model_id, kind, out)
        fut.set_result(out)
        return out

    def _lookup(self, key: str) -> Completion | None:
        for c in (self.cache, self.shared):
            if c is not None:
                hit = c.get(key)
                if hit is not None:
                    if c is self.shared and self.cache is not None:
                        self.cache.put(key, hit.model, "shared", hit)
                    return hit
        return None
