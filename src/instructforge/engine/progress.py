"""Live progress: records done/total, dollars spent, tokens/s, requests in flight, retries by
cause, failed calls, ETA.

On a terminal it is a rich progress bar; elsewhere (CI, pipes) one line every few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from instructforge.engine.context import Usage
from instructforge.llm.base import LLM


class JobProgress:
    def __init__(self, name: str, total: int | None, usage: Usage, enabled: bool = True,
                 llms: Sequence[LLM] = ()) -> None:
        self.llms = list(llms)
        self._shown_status = ""
        self.console = Console(stderr=True)
        self.usage = usage
        self.total = total
        self.done = 0
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self._last_line = self.t0
        self._live = enabled and self.console.is_terminal
        self._progress: Progress | None = None
        if self._live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[tps]:>7.1f} tok/s"),
                TextColumn("{task.fields[cost]}"),
                TextColumn("in flight {task.fields[inflight]:>3}"),
                TextColumn("retries {task.fields[retries]}"),
                TextColumn("errors {task.fields[errors]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=self.console,
                refresh_per_second=4,
            )
            self._task = self._progress.add_task(name, total=total, tps=0.0, inflight=0,
                                                 retries="0", errors=0, cost=self.cost(),
                                                 status=self.status())
        self.name = name

    def __enter__(self) -> JobProgress:
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress:
            self._refresh()
            self._progress.stop()

    def tokens_per_second(self) -> float:
        return self.usage.completion_tokens / max(time.perf_counter() - self.t0, 1e-9)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._progress:
            self._refresh()
        elif self.enabled:
            now = time.perf_counter()
            if now - self._last_line >= 10:
                self._last_line = now
                self.console.print(self.line(), highlight=False, markup=False)

    def status(self) -> str:
        """What the backends wait on (batch mode: the batches submitted / in progress /
        done, with their ids)."""
        seen: list[str] = []
        for llm in self.llms:
            if (s := llm.status()) and s not in seen:
                seen.append(s)
        return "; ".join(seen)

    def tick(self) -> None:
        """Called every second: shows a change in what the backends wait on (a batch
        submitted or done) while no record finishes."""
        status = self.status()
        if status == self._shown_status:
            return
        self._shown_status = status
        if self._progress:
            self._refresh()
        elif self.enabled:
            self._last_line = time.perf_counter()
            self.console.print(self.line(), highlight=False, markup=False)

    def cost(self) -> str:
        """Dollars spent so far (``$0.0123``), or nothing when no model has a price."""
        priced = any(s.cost_usd is not None for s in self.usage.steps.values())
        return f"${self.usage.cost_usd:.4f}" if priced else ""

    def line(self) -> str:
        """The plain progress line (printed every 10 s when not on a terminal)."""
        total = f"/{self.total}" if self.total else ""
        cost = f", {self.cost()}" if self.cost() else ""
        return (f"{self.name}: {self.done}{total} records{cost},"
                f" {self.tokens_per_second():.1f} tok/s,"
                f" in flight {self.usage.in_flight}, retries {self.usage.retries()},"
                f" errors {self.usage.errors}"
                + (f", {status}" if (status := self.status()) else ""))

    def _refresh(self) -> None:
        assert self._progress is not None
        self._progress.update(
            self._task,
            completed=self.done,
            tps=self.tokens_per_second(),
            inflight=self.usage.in_flight,
            retries=self.usage.retries(),
            errors=self.usage.errors,
            cost=self.cost(),
            status=self.status(),
        )
