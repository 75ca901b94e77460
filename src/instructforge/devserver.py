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

``python -m instructforge.devserver --port 8999`` runs it standalone.
"""

from __future__ import annotations

import argparse
import asyncio
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
                length = 0
                for ln in lines[1:]:
                    if ln[:15].lower() == "content-length:":
                        length = int(ln[15:])
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
                status, payload = self._route(method, path, body)
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
    def _send(writer: asyncio.StreamWriter, status: int, payload: dict[str, Any]) -> None:
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
