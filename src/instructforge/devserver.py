"""A tiny, fast OpenAI-compatible server that answers instantly: for tests, benchmarks and
for trying a pipeline's plumbing without a model.

It is a real HTTP/1.1 server on 127.0.0.1 (keep-alive, asyncio streams). It can inject faults
in order (``faults=[...]``, any request) or at random (``fault_rate``, completion requests
only, drawn from ``fault_mix`` by a generator seeded with ``seed``, so one seed gives one
sequence of faults). The faults:

- ``"429"``, ``"500"``, ``"503"``, ``"401"``, ``"400"``: that HTTP status;
- ``"timeout"``: answer nothing for ``timeout_sleep`` seconds, then drop the connection;
- ``"hang"``: never answer (until the client gives up and closes the connection);
- ``"drop"``: close the connection at once;
- HTTP 200 with an unusable body: ``"empty_choices"`` (``choices: []``), ``"null_content"``
  (``content: null`` / ``text: null``), ``"empty_answer"`` (``""`` with no finish reason),
  ``"no_choices"`` (an object without ``choices``), ``"list_body"`` (``[]``),
  ``"null_body"`` (``null``), ``"not_json"`` (an HTML page).

It logs every prompt it answers (and every request body), and counts injected faults by
kind in ``injected``, so tests can see which calls reached it::

    with DevServer(faults=["429", "drop"]) as srv:
        llm = OpenAICompatible(srv.url, "dev")
        ...
        assert srv.served == 1

``flavour="llamacpp"`` / ``"vllm"`` answers ``GET /props`` / ``GET /version`` as those servers
do (constrained decoding is chosen by them), and ``reject_constraints=True`` answers HTTP 400
to any request carrying a constraint field, like a server without structured output.

``rate_limit=N`` enforces a provider's rate limit: completion requests beyond ``N`` per
``rate_window`` seconds (a token bucket of ``N``, refilled continuously, as providers
meter) are answered HTTP 429, counted in ``throttled``.

It also speaks OpenAI's Files and Batch APIs: ``POST /v1/files`` (multipart, purpose
``batch``), ``GET /v1/files/ID/content``, ``POST /v1/batches``, ``GET /v1/batches[/ID]`` and
``POST /v1/batches/ID/cancel``. A batch goes validating -> in_progress -> finalizing ->
completed over ``batch_polls`` looks at it (0: completed at the first), answering each
line as the endpoint would; its output lines come in reverse order (as a provider's may
come in any order). ``submitted`` counts each custom id's submissions; ``batch_failures``
fails the first N lines answered (to the error file), ``batch_fail_text`` fails every line
whose body contains that text, and ``batch_expire`` lets the first N batches expire with
only the first half of their lines answered; ``batch_fail_batches`` fails the first N
batches as a whole (status ``failed``, with ``errors``, no output).

``python -m instructforge.devserver --port 8999`` runs it standalone.
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import email.policy
import itertools
import json
import random
import threading
import time
from collections import Counter, deque
from typing import Any

# Request fields that ask for constrained decoding (llama.cpp, vLLM old and new, OpenAI).
CONSTRAINT_FIELDS = ("grammar", "json_schema", "response_format", "structured_outputs",
                     "guided_choice", "guided_json", "guided_regex", "guided_grammar")


STATUS_FAULTS = ("400", "401", "429", "500", "503")
BODY_FAULTS = ("empty_choices", "null_content", "empty_answer", "no_choices", "list_body",
               "null_body", "not_json")
# What a flaky server does, for ``fault_rate``: errors, hangs, drops and unusable bodies.
FAULT_MIX = ("429", "500", "503", "drop", "hang", *BODY_FAULTS)


class DevServer:
    """Answers ``/v1/chat/completions`` and ``/v1/completions`` with ``answer``."""

    def __init__(
        self,
        *,
        answer: str = "This is a fixed answer from the development server.",
        model: str = "dev",
        faults: list[str] | None = None,
        delay: float = 0.0,
        timeout_sleep: float = 5.0,
        completions: bool = True,
        port: int = 0,
        log_prompts: bool = True,
        flavour: str = "openai",
        version: str = "0.11.0",
        reject_constraints: bool = False,
        fault_rate: float = 0.0,
        fault_mix: tuple[str, ...] = FAULT_MIX,
        seed: int = 0,
        rate_limit: int | None = None,
        rate_window: float = 60.0,
        batch_polls: int = 0,
        batch_failures: int = 0,
        batch_fail_text: str | None = None,
        batch_expire: int = 0,
        batch_fail_batches: int = 0,
    ) -> None:
        self.answer = answer
        self.model = model
        self.faults: deque[str] = deque(faults or [])
        self.delay = delay
        self.timeout_sleep = timeout_sleep
        self.completions = completions
        self.port = port
        self.log_prompts = log_prompts
        self.flavour = flavour
        self.version = version  # what a "vllm" flavour reports on GET /version
        self.reject_constraints = reject_constraints
        self.fault_rate = fault_rate  # may be changed while serving (0: faults off)
        self.fault_mix = fault_mix
        self._rng = random.Random(seed)
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self._allowance = float(rate_limit or 0)
        self._metered = time.monotonic()
        self.throttled = 0  # requests answered 429 for the rate limit
        self.injected: Counter[str] = Counter()
        self.prompts: list[Any] = []
        self.bodies: list[dict[str, Any]] = []  # every POST body, as sent (with log_prompts)
        self.rejected = 0  # requests refused for their constraint
        self.served = 0
        self.requests = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self.batch_polls = batch_polls  # may be changed while serving
        self.batch_failures = batch_failures
        self.batch_fail_text = batch_fail_text
        self.batch_expire = batch_expire
        self.batch_fail_batches = batch_fail_batches
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.submitted: Counter[str] = Counter()  # custom id -> batches it was submitted in
        self._polled: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._body = json.dumps({"usage": {"prompt_tokens": 10, "completion_tokens": 10}})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- HTTP -------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                path = target.partition("?")[0]  # a query (?api_key=...) is not a route
                length, ctype = 0, ""
                for ln in lines[1:]:
                    if ln[:15].lower() == "content-length:":
                        length = int(ln[15:])
                    if ln[:13].lower() == "content-type:":
                        ctype = ln[13:].strip()
                body = await reader.readexactly(length) if length else b""
                self.requests += 1
                fault = self.faults.popleft() if self.faults else None
                if (fault is None and self.fault_rate and method == "POST"
                        and self._rng.random() < self.fault_rate):
                    fault = self._rng.choice(self.fault_mix)
                if fault:
                    self.injected[fault] += 1
                if fault == "drop":
                    writer.transport.abort()
                    return
                if fault == "timeout":
                    await asyncio.sleep(self.timeout_sleep)
                    writer.transport.abort()
                    return
                if fault == "hang":
                    await reader.read()  # returns when the client closes the connection
                    return
                if fault in STATUS_FAULTS:
                    self._send(writer, int(fault), {"error": {"message": f"injected {fault}"}})
                    await writer.drain()
                    continue
                if fault in BODY_FAULTS:
                    self._send_raw(writer, 200, self._bad_body(fault, path))
                    await writer.drain()
                    continue
                if method == "POST" and self._over_rate_limit():
                    self.throttled += 1
                    self._send(writer, 429, {"error": {"message": "rate limit reached",
                                                       "type": "requests"}})
                    await writer.drain()
                    continue
                if self.delay:
                    await asyncio.sleep(self.delay)
                if path.startswith(("/v1/files", "/v1/batches")):
                    status, payload = self._batch_api(method, path, body, ctype)
                else:
                    status, payload = self._route(method, path, body)
                if isinstance(payload, bytes):
                    self._send_raw(writer, status, payload)
                else:
                    self._send(writer, status, payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _over_rate_limit(self) -> bool:
        if not self.rate_limit:
            return False
        now = time.monotonic()
        rate = self.rate_limit / self.rate_window
        self._allowance = min(float(self.rate_limit),
                              self._allowance + (now - self._metered) * rate)
        self._metered = now
        if self._allowance < 1:
            return True
        self._allowance -= 1
        return False

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if method == "GET" and path.rstrip("/") == "/v1/models":
            return 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]}
        if method == "GET" and path == "/props" and self.flavour == "llamacpp":
            return 200, {"chat_template": "{{ messages }}", "default_generation_settings": {}}
        if method == "GET" and path == "/version" and self.flavour == "vllm":
            return 200, {"version": self.version}
        if method != "POST":
            return 404, {"error": {"message": f"no route {method} {path}"}}
        req = json.loads(body or b"{}")
        if self.log_prompts:
            self.bodies.append(req)
        if req.get("model") not in (None, self.model):
            return 404, {"error": {"message": f"model {req.get('model')!r} not found"}}
        constraint = [f for f in CONSTRAINT_FIELDS if f in req]
        if constraint and self.reject_constraints:
            self.rejected += 1
            return 400, {"error": {"message": f"unsupported parameter: {constraint[0]}",
                                   "type": "invalid_request_error"}}
        usage = {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}
        if path == "/v1/chat/completions":
            if self.log_prompts:
                self.prompts.append(req.get("messages"))
            self.served += 1
            choice = {"index": 0, "finish_reason": "stop",
                      "message": {"role": "assistant", "content": self.answer}}
            return 200, {"object": "chat.completion", "model": self.model,
                         "choices": [choice], "usage": usage}
        if path == "/v1/completions" and self.completions:
            if self.log_prompts:
                self.prompts.append(req.get("prompt"))
            self.served += 1
            choice = {"index": 0, "finish_reason": "stop", "text": self.answer}
            return 200, {"object": "text_completion", "model": self.model,
                         "choices": [choice], "usage": usage}
        return 404, {"error": {"message": f"no route {path}"}}

    # -- Files and Batch APIs ---------------------------------------------------------------
    def _batch_api(self, method: str, path: str, body: bytes, ctype: str
                   ) -> tuple[int, dict[str, Any] | bytes]:
        parts = path.strip("/").split("/")[1:]  # ["files"], ["batches", ID], ...
        if method == "POST" and parts == ["files"]:
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {ctype}\r\n\r\n".encode() + body)
            fields = {p.get_param("name", header="content-disposition"): p.get_payload(
                decode=True) for p in msg.iter_parts()}
            if fields.get("purpose") != b"batch" or not fields.get("file"):
                return 400, {"error": {"message": "need purpose=batch and a file"}}
            file_id = f"file-{next(self._ids)}"
            self.files[file_id] = fields["file"]
            return 200, {"id": file_id, "object": "file", "purpose": "batch",
                         "bytes": len(fields["file"])}
        if method == "GET" and len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
            if parts[1] not in self.files:
                return 404, {"error": {"message": f"no file {parts[1]}"}}
            return 200, self.files[parts[1]]
        if method == "POST" and parts == ["batches"]:
            req = json.loads(body or b"{}")
            lines = [json.loads(ln) for ln in self.files.get(req.get("input_file_id"), b""
                                                              ).decode().splitlines() if ln]
            if not lines:
                return 400, {"error": {"message": "input_file_id names no batch file"}}
            batch_id = f"batch-{next(self._ids)}"
            self.submitted.update(ln["custom_id"] for ln in lines)
            self.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": req.get("endpoint"),
                "input_file_id": req["input_file_id"], "status": "validating",
                "completion_window": req.get("completion_window"), "output_file_id": None,
                "error_file_id": None, "request_counts": {"total": len(lines), "completed": 0,
                                                          "failed": 0}}
            return 200, self.batches[batch_id]
        if method == "GET" and parts == ["batches"]:
            return 200, {"object": "list", "data": list(self.batches.values())[::-1]}
        batch = self.batches.get(parts[1]) if len(parts) > 1 else None
        if batch is None:
            return 404, {"error": {"message": f"no route {method} {path}"}}
        if method == "POST" and parts[2:] == ["cancel"]:
            if batch["status"] not in ("completed", "expired", "failed"):
                self._finish(batch, "cancelled", half=True)
            return 200, batch
        if method == "GET" and len(parts) == 2:
            self._polled[batch["id"]] += 1
            n = self._polled[batch["id"]]
            if batch["status"] in ("validating", "in_progress", "finalizing"):
                if n > self.batch_polls and self.batch_fail_batches > 0:
                    self.batch_fail_batches -= 1
                    batch["status"] = "failed"
                    batch["errors"] = {"object": "list", "data": [
                        {"code": "invalid_request", "message": "injected batch failure",
                         "line": None}]}
                elif n > self.batch_polls:
                    expire = len([b for b in self.batches.values()
                                  if b["status"] == "expired"]) < self.batch_expire
                    self._finish(batch, "expired" if expire else "completed", half=expire)
                else:
                    batch["status"] = ("in_progress" if n < self.batch_polls
                                       else "finalizing")
            return 200, batch
        return 404, {"error": {"message": f"no route {method} {path}"}}

    def _finish(self, batch: dict[str, Any], status: str, *, half: bool = False) -> None:
        """Answer the batch's lines (the first half only with ``half``) into its output and
        error files, the output in reverse order."""
        lines = [json.loads(ln) for ln in self.files[batch["input_file_id"]].decode()
                 .splitlines() if ln]
        if half:
            lines = lines[: len(lines) // 2]
        out, errors = [], []
        for ln in lines:
            body = json.dumps(ln["body"])
            failing = self.batch_failures > 0 or (self.batch_fail_text is not None
                                                  and self.batch_fail_text in body)
            if failing:
                self.batch_failures = max(0, self.batch_failures - 1)
                err = {"message": "injected line failure", "type": "server_error"}
                errors.append({"id": f"req-{next(self._ids)}", "custom_id": ln["custom_id"],
                               "response": {"status_code": 500, "body": {"error": err}},
                               "error": None})
                continue
            code, answer = self._route("POST", ln["url"], body.encode())
            out.append({"id": f"req-{next(self._ids)}", "custom_id": ln["custom_id"],
                        "response": {"status_code": code, "body": answer}, "error": None})
        for name, rows in (("output_file_id", out[::-1]), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{next(self._ids)}"
                self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                batch[name] = file_id
        batch["status"] = status
        batch["request_counts"].update(completed=len(out), failed=len(errors))

    def _bad_body(self, fault: str, path: str) -> bytes:
        """A 200 body of the kind ``fault`` names (shaped for ``path``'s endpoint)."""
        chat = path.endswith("/chat/completions")
        usage = {"prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10}

        def choice(text: str | None, finish: str | None) -> dict[str, Any]:
            if chat:
                return {"index": 0, "finish_reason": finish,
                        "message": {"role": "assistant", "content": text}}
            return {"index": 0, "finish_reason": finish, "text": text}

        body: Any = {
            "empty_choices": {"object": "chat.completion", "model": self.model, "choices": [],
                              "usage": usage},
            "null_content": {"model": self.model, "choices": [choice(None, "stop")],
                             "usage": usage},
            "empty_answer": {"model": self.model, "choices": [choice("", None)],
                             "usage": usage},
            "no_choices": {"object": "chat.completion", "model": self.model},
            "list_body": [],
            "null_body": None,
        }.get(fault)
        if fault == "not_json":
            return b"<html><body>502 Bad Gateway</body></html>"
        return json.dumps(body).encode()

    @staticmethod
    def _send(writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
        DevServer._send_raw(writer, status, json.dumps(payload).encode())

    @staticmethod
    def _send_raw(writer: asyncio.StreamWriter, status: int, data: bytes) -> None:
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: keep-alive\r\n\r\n".encode() + data
        )

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def __enter__(self) -> DevServer:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    async def _shutdown(self) -> None:
        if self._server:
            self._server.close()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __exit__(self, *exc: object) -> None:
        if self._loop:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)
        if self._loop:
            self._loop.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Instant-answer OpenAI-compatible server.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    ap.add_argument("--answer", default="This is a fixed answer from the development server.")
    args = ap.parse_args(argv)
    srv = DevServer(answer=args.answer, delay=args.delay, port=args.port, log_prompts=False)

    async def serve() -> None:
        await srv.start()
        print(json.dumps({"url": srv.url}), flush=True)
        while True:
            await asyncio.sleep(3600)

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        time.sleep(0)


if __name__ == "__main__":
    main()
