"""Batch mode: the calls a run has in flight go to the provider's Batch API (about half the
price), behind the same ``chat`` / ``complete`` interface, so no method changes::

    llm = BatchLLM(OpenAICompatible(url, "gpt-4o-mini"), Path("runs/x/state/batches.jsonl"))
    out = await llm.chat(messages, params)    # waits for the batch that carries it

Calls arriving together (every chain waiting on the same step) are collected until
``size`` of them wait or ``window`` seconds have passed since the first, then written as
one JSONL file (``POST /files``, purpose ``batch``; each line
``{custom_id, method, url, body}``, ``custom_id`` being the request's cache key) and
submitted (``POST /batches``). The batch is polled every ``poll`` seconds
(``GET /batches/ID``); when it ends, its output and error files are read and each waiting
call gets its line's answer (the engine then caches it as any answer).

Resume: before a batch is created, its file id and custom ids are appended (and fsync'd)
to the journal, then its batch id. A rerun that wants a request whose custom id a
recorded batch holds polls that batch instead of submitting the request again; a file
recorded without its batch id (a crash between the two lines) is matched to the server's
batches (``GET /batches``) by its input file id.

What happens to requests that do not succeed:

- a failed line (in the error file, or an output line whose status is not 200, or an
  unusable answer) goes into a later batch once more; failing again, the call fails with
  the provider's reason (the engine records the input as failed);
- a request left unfinished by a batch that expired or was cancelled goes into a later
  batch (at most :data:`MAX_EXPIRED` times; then the call fails, saying so);
- a batch the provider failed as a whole (status ``failed``) counts as a failed line for
  each of its requests.

Nothing is dropped silently: every call ends with an answer or an :class:`LLMError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructforge.llm.base import (
    Completion,
    LLMError,
    Message,
    SamplingParams,
    WrappedLLM,
    request_key,
)
from instructforge.llm.openai import OpenAICompatible
from instructforge.llm.prices import Price

log = logging.getLogger("instructforge")

DONE = ("completed", "expired", "cancelled", "failed")
UNFINISHED = ("expired", "cancelled")
MAX_FAILED = 2  # batches a request may fail in (a failed line is tried once more)
MAX_EXPIRED = 3  # batches a request may be left unfinished by


class Journal:
    """``state/batches.jsonl``: the batches a run submitted, appended and fsync'd before
    the batch exists (``{"file_id", "endpoint", "custom_ids"}``) and once it does
    (``{"file_id", "batch_id"}``). ``None`` as path: kept in memory only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.files: dict[str, list[str]] = {}  # file id -> custom ids
        self.batch_of: dict[str, str] = {}  # file id -> batch id
        lines = path.read_text(encoding="utf-8").splitlines() if path and path.exists() else []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                self._read(json.loads(line))
            except (ValueError, KeyError, TypeError):
                if n < len(lines):
                    raise LLMError(f"{path}:{n}: not a batch journal line: {line[:200]}"
                                   ) from None
                # the last line, cut by a crash: its batch was never created

    def _read(self, entry: dict[str, Any]) -> None:
        if "custom_ids" in entry:
            self.files[entry["file_id"]] = [str(c) for c in entry["custom_ids"]]
        else:
            self.batch_of[entry["file_id"]] = str(entry["batch_id"])

    def append(self, entry: dict[str, Any]) -> None:
        self._read(entry)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def batches(self, key: str) -> list[str]:
        """The batch ids that carried ``key``, oldest first."""
        return [self.batch_of[f] for f, ids in self.files.items()
                if f in self.batch_of and key in ids]

    def unmatched(self) -> list[str]:
        """File ids recorded without a batch id."""
        return [f for f in self.files if f not in self.batch_of]


@dataclass
class _Call:
    key: str
    kind: str
    path: str
    body: dict[str, Any]
    constraint: str | None
    future: asyncio.Future[Completion]
    failed: list[str] = field(default_factory=list)  # reasons, one per failed batch
    expired: int = 0


class BatchLLM(WrappedLLM):
    """``inner``'s calls, made through its server's Batch API (see the module docstring).

    ``journal``: the run's ``state/batches.jsonl`` (None: no resume). ``price`` becomes the
    batch price (``inner.price`` times its ``batch`` factor)."""

    def __init__(self, inner: OpenAICompatible, journal: Path | None = None, *,
                 size: int = 10_000, window: float = 2.0, poll: float = 30.0,
                 completion_window: str = "24h") -> None:
        super().__init__(inner)
        self.server = inner
        if inner.price is not None:
            p = inner.price
            self.price = Price(p.input * p.batch, p.output * p.batch, 1.0)
        self.journal = Journal(journal)
        self.size, self.window, self.poll = size, window, poll
        self.completion_window = completion_window
        self.submitted: list[str] = []  # batch ids this process created
        self.finished: list[str] = []  # batch ids whose results were read
        self._loop: asyncio.AbstractEventLoop | None = None

    def _state(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # one set of queues and tasks per event loop
            self._loop = loop
            self._queue: dict[str, list[_Call]] = defaultdict(list)
            self._timers: dict[str, asyncio.Task[None]] = {}
            self._waiting: dict[str, dict[str, _Call]] = defaultdict(dict)  # batch -> calls
            self._polls: dict[str, asyncio.Task[None]] = {}
            self._live: dict[str, _Call] = {}  # custom id -> its call, until answered
            self._matched = asyncio.Lock()
            self._unmatched_checked = False

    async def chat(self, messages: list[Message], params: SamplingParams) -> Completion:
        return await self._call("chat", messages, params)

    async def complete(self, text: str, params: SamplingParams) -> Completion:
        return await self._call("complete", text, params)

    async def _call(self, kind: str, prompt: Any, params: SamplingParams) -> Completion:
        self._state()
        await self._match_unrecorded()
        path, body, constraint = await self.server.request_body(kind, prompt, params)
        # The engine's cache key: stable across runs, so a rerun finds its batch.
        key = request_key(self.model_id, kind, prompt, params.to_dict())
        same = self._live.get(key)
        if same is not None and not same.future.done():
            # One line per custom id (a provider refuses a file that repeats one).
            return await asyncio.shield(same.future)
        call = _Call(key, kind, path, body, constraint,
                     asyncio.get_running_loop().create_future())
        self._live[key] = call
        call.future.add_done_callback(lambda _: self._live.pop(key, None))
        earlier = self.journal.batches(key)
        if earlier:
            # A rerun: poll the last batch that holds it (a failure there is tried again).
            log.info("request %s… is in batch %s already: polling it", key[:12], earlier[-1])
            self._await_batch(earlier[-1], [call])
        else:
            self._enqueue(call)
        return await call.future

    async def _match_unrecorded(self) -> None:
        """Files recorded without their batch id (a crash right after creating it): find
        their batch among the server's, so it is polled rather than paid for again."""
        if self._unmatched_checked or not self.journal.unmatched():
            return
        async with self._matched:
            if self._unmatched_checked:
                return
            data = await self.server.call_api("GET", "/batches?limit=100")
            for b in data.get("data", []) if isinstance(data, dict) else []:
                f = b.get("input_file_id")
                if f in self.journal.unmatched() and b.get("id"):
                    self.journal.append({"file_id": f, "batch_id": b["id"]})
            self._unmatched_checked = True

    # -- collecting and submitting ----------------------------------------------------------
    def _enqueue(self, call: _Call) -> None:
        q = self._queue[call.path]
        q.append(call)
        if len(q) >= self.size:
            self._start(self._submit(call.path))
        elif call.path not in self._timers:
            self._timers[call.path] = self._start(self._after_window(call.path))

    def _start(self, coro: Any) -> asyncio.Task[Any]:
        return asyncio.get_running_loop().create_task(coro)

    async def _after_window(self, path: str) -> None:
        await asyncio.sleep(self.window)
        await self._submit(path)

    async def _submit(self, path: str) -> None:
        timer = self._timers.pop(path, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        calls, self._queue[path] = self._queue[path][: self.size], self._queue[path][self.size:]
        if self._queue[path]:
            self._timers[path] = self._start(self._after_window(path))
        if not calls:
            return
        endpoint = f"/v1{path}"
        lines = "".join(json.dumps({"custom_id": c.key, "method": "POST", "url": endpoint,
                                    "body": c.body}, ensure_ascii=False) + "\n"
                        for c in calls)
        try:
            file_id = await self.server.upload_file("batch.jsonl", lines.encode())
            self.journal.append({"file_id": file_id, "endpoint": endpoint,
                                 "custom_ids": [c.key for c in calls]})
            batch = await self.server.call_api(
                "POST", "/batches", {"input_file_id": file_id, "endpoint": endpoint,
                                     "completion_window": self.completion_window})
            if not isinstance(batch, dict) or not isinstance(batch.get("id"), str):
                raise LLMError(f"{self.server.base_url}/batches answered no batch id: "
                               f"{str(batch)[:200]}")
            self.journal.append({"file_id": file_id, "batch_id": batch["id"]})
        except LLMError as e:
            for c in calls:
                _fail(c, e)
            return
        self.submitted.append(batch["id"])
        log.info("batch %s submitted: %d requests to %s", batch["id"], len(calls), endpoint)
        self._await_batch(batch["id"], calls)

    # -- polling and reading ----------------------------------------------------------------
    def _await_batch(self, batch_id: str, calls: list[_Call]) -> None:
        for c in calls:
            self._waiting[batch_id][c.key] = c
        if batch_id not in self._polls:
            self._polls[batch_id] = self._start(self._watch(batch_id))

    async def _watch(self, batch_id: str) -> None:
        try:
            while True:
                batch = await self.server.call_api("GET", f"/batches/{batch_id}")
                status = batch.get("status") if isinstance(batch, dict) else None
                if status in DONE:
                    break
                await asyncio.sleep(self.poll)
            log.info("batch %s %s", batch_id, status)
            answers = await self._read_files(batch)
        except LLMError as e:
            self._polls.pop(batch_id, None)
            for c in self._waiting.pop(batch_id, {}).values():
                _fail(c, e)
            return
        self._polls.pop(batch_id, None)
        self.finished.append(batch_id)
        whole = _batch_error(batch) if status == "failed" else None
        for key, c in self._waiting.pop(batch_id, {}).items():
            line = answers.get(key)
            if isinstance(line, Completion):
                c.future.done() or c.future.set_result(line)
            elif line is not None or whole is not None or status == "completed":
                reason = line or whole or "no line for this request in the output"
                self._failed(c, f"batch {batch_id}: {reason}")
            else:  # expired or cancelled before this request was done
                c.expired += 1
                if c.expired >= MAX_EXPIRED:
                    _fail(c, LLMError(f"batch {batch_id} {status} before answering this "
                                      f"request, {c.expired} batches in a row"))
                else:
                    log.info("batch %s %s: request %s… goes into a new batch", batch_id,
                             status, key[:12])
                    self._enqueue(c)

    def _failed(self, c: _Call, reason: str) -> None:
        c.failed.append(reason)
        if len(c.failed) >= MAX_FAILED:
            _fail(c, LLMError(f"the provider failed this request in {len(c.failed)} "
                              f"batches; last: {reason}"))
        else:
            log.info("%s; the request goes into a later batch once more", reason)
            self._enqueue(c)

    async def _read_files(self, batch: dict[str, Any]) -> dict[str, Completion | str]:
        """custom id -> its answer, or why it failed, from the batch's output and error
        files (in any order)."""
        out: dict[str, Completion | str] = {}
        calls = self._waiting.get(str(batch.get("id")), {})
        for name in ("error_file_id", "output_file_id"):  # an answer wins over an error
            file_id = batch.get(name)
            if not file_id:
                continue
            text = await self.server.file_text(file_id)
            for line in text.splitlines():
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    key = str(entry["custom_id"])
                except (ValueError, KeyError, TypeError):
                    log.warning("batch %s: unreadable line in %s: %s", batch.get("id"),
                                name, line[:200])
                    continue
                out[key] = self._read_line(entry, calls.get(key))
        return out

    def _read_line(self, entry: dict[str, Any], call: _Call | None) -> Completion | str:
        error = entry.get("error")
        response = entry.get("response") if isinstance(entry.get("response"), dict) else {}
        body = response.get("body")
        status = response.get("status_code")
        if error or status != 200:
            detail = error or (body.get("error") if isinstance(body, dict) else body)
            if isinstance(detail, dict):
                detail = ": ".join(str(detail[k]) for k in ("code", "message") if detail.get(k))
            return f"HTTP {status}: {detail}" if status else str(detail)
        if call is None:
            return "answered, but no call waits for it"
        try:
            return self.server.read_completion(body, call.kind, call.constraint)
        except LLMError as e:
            return str(e)

    async def release_loop(self) -> None:
        await self._cancel()
        await super().release_loop()

    async def aclose(self) -> None:
        await self._cancel()
        await super().aclose()

    async def _cancel(self) -> None:
        """Stop waiting (a submitted batch goes on at the provider; a rerun polls it)."""
        if self._loop is not asyncio.get_running_loop():
            return
        tasks = [*self._timers.values(), *self._polls.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop = None

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "batch": True}

    def status(self) -> str:
        """``batches: 3 submitted, 1 in progress (batch_abc), 2 done``."""
        if self._loop is None and not self.submitted and not self.finished:
            return ""
        waiting = sorted(self._polls) if self._loop is not None else []
        shown = ", ".join(waiting[:3]) + (", ..." if len(waiting) > 3 else "")
        return (f"batches: {len(self.submitted)} submitted, {len(waiting)} in progress"
                f"{f' ({shown})' if waiting else ''}, {len(self.finished)} done")


def _fail(call: _Call, error: LLMError) -> None:
    if not call.future.done():
        call.future.set_exception(error)


def _batch_error(batch: dict[str, Any]) -> str:
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return f"batch failed: {data[0].get('code', '')}: {data[0].get('message', '')}"
    return "batch failed (no reason given)"
