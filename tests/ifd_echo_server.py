"""A stand-in for vLLM's ``/v1/completions`` with ``echo`` and ``logprobs``, on 127.0.0.1, for
``select --by ifd --base-url``: it computes the REAL log-probabilities of every prompt token
with a transformers causal LM (the local IFD student) and answers in vLLM's echo format.

vLLM's echo answer (``max_tokens: 1``): ``choices[0].text`` is the prompt plus the one
generated token, and ``choices[0].logprobs`` lists every prompt token then the generated one:
``tokens``, ``token_logprobs`` (None for the prompt's first token, which nothing precedes),
``text_offset`` (the token's first character in ``text``) and ``top_logprobs``.

>>> # with EchoServer(model, tokenizer) as server: server.url  # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_NAME = "smollm2-135m-student"


def echo_answer(model: Any, tokenizer: Any, prompt: str) -> dict[str, Any]:
    """vLLM's ``/v1/completions`` answer for ``prompt`` with ``echo``, ``logprobs: 1``,
    ``max_tokens: 1`` and greedy decoding."""
    import torch

    enc = tokenizer(prompt, return_offsets_mapping=True)  # as vLLM: the tokenizer's defaults
    ids = list(enc["input_ids"])
    offsets = [start for start, _ in enc["offset_mapping"]]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    token_logprobs: list[float | None] = [None]
    token_logprobs += [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]
    top: list[dict[str, float] | None] = [None]
    for t in range(1, len(ids)):
        best = int(logp[t - 1].argmax())
        top.append({tokenizer.decode([best]): float(logp[t - 1, best])})
    nxt = int(logp[-1].argmax())
    nxt_text = tokenizer.decode([nxt])
    tokens = [tokenizer.decode([i]) for i in ids] + [nxt_text]
    return {
        "id": "cmpl-standin", "object": "text_completion", "model": MODEL_NAME,
        "choices": [{
            "index": 0, "text": prompt + nxt_text, "finish_reason": "length",
            "logprobs": {
                "tokens": tokens,
                "token_logprobs": [*token_logprobs, float(logp[-1, nxt])],
                "text_offset": [*offsets, len(prompt)],
                "top_logprobs": [*top, {nxt_text: float(logp[-1, nxt])}],
            },
        }],
        "usage": {"prompt_tokens": len(ids), "completion_tokens": 1,
                  "total_tokens": len(ids) + 1},
    }


class EchoServer:
    """``with EchoServer(model, tokenizer) as s:`` serves on ``s.url`` (``.../v1``) and
    records each completions request body in ``s.requests``."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # one forward pass at a time
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": MODEL_NAME}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/completions":
                    self._send(404, {"error": "not found"})
                    return
                if body.get("model") != MODEL_NAME:
                    self._send(404, {"error": f"model {body.get('model')!r} does not exist"})
                    return
                server.requests.append(body)
                with server._lock:
                    self._send(200, echo_answer(server.model, server.tokenizer, body["prompt"]))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> EchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
