"""Backend for any OpenAI-compatible server (vLLM, llama.cpp, SGLang, Ollama, hosted APIs).

Bounded concurrency, retries with exponential backoff and full jitter on 429/5xx/timeouts/
dropped connections and on 200 answers that hold no usable completion (a body that is not a
JSON object, no ``choices``, ``content: null``, an empty answer the model did not stop on),
per-attempt timeouts (10 s to connect, ``timeout`` for the answer), and errors that say what
to do::

    llm = OpenAICompatible("http://127.0.0.1:8080/v1", model="my-model", max_concurrency=16)
    out = await llm.complete("<|im_start|>user\\n", SamplingParams(stop=("<|im_end|>",)))

Constrained requests (``SamplingParams(choices=...)`` / ``json_schema=...``) use the server's
own constrained decoding, found out once per backend (``structured="auto"``): llama.cpp gets a
GBNF ``grammar`` / its ``json_schema`` field, vLLM ``structured_outputs`` (``guided_*`` before
0.11), anything else OpenAI's ``response_format`` json_schema. A server that refuses the
constraint (HTTP 400/422) is asked again without it, once; later calls to that endpoint go
unconstrained at once, one warning is logged, and ``Completion.extra["constraint"]`` says
``"native"`` or ``"fallback"``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from instructforge.llm.base import (
    LLM,
    Completion,
    LLMError,
    Message,
    RawCompletionUnsupported,
    SamplingParams,
)
from instructforge.llm.prices import approx_tokens
from instructforge.llm.ratelimit import AdaptiveLimit, TokenBucket
from instructforge.llm.structured import choice_grammar, choice_schema
from instructforge.llm.urls import redact_urls

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# The server is over its rate limit or capacity: fewer requests at a time (AdaptiveLimit).
OVERLOAD_STATUS = {429, 503}
# A constrained request answered with one of these is asked again without the constraint.
REFUSED_STATUS = {400, 422}
STRUCTURED = ("auto", "llamacpp", "vllm", "openai", "off")
# vLLM took ``structured_outputs`` in 0.11 and dropped ``guided_*`` in 0.12 (ignoring them
# silently from then on), so the version picks the field.
VLLM_STRUCTURED_OUTPUTS = (0, 11)
# Per attempt, never for the whole call. A server that does not accept a connection in
# CONNECT_TIMEOUT seconds is down or drowning. A non-streaming answer arrives whole, so its
# first byte comes when the model has finished: ``timeout`` must allow the longest answer
# (120 s: 512 tokens at 5 tokens/s). Metadata endpoints (``/models``, ``/props``) answer at
# once, so a hung server fails the preflight within (retries + 1) * META_TIMEOUT seconds.
CONNECT_TIMEOUT = 10.0
DEFAULT_TIMEOUT = 120.0
DEFAULT_MAX_RETRIES = 5
META_TIMEOUT = 30.0

log = logging.getLogger("instructforge")


class _Refused(LLMError):
    """A constrained request got HTTP 400/422 (maybe for the constraint: try without)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status = status
        self.text = text


class _Unusable(Exception):
    """A 200 answer without a usable completion: retried like a server error, never cached.
    ``cause`` is ``"malformed"`` (not the shape of a completion) or ``"empty"`` (no answer)."""

    def __init__(self, cause: str, reason: str) -> None:
        super().__init__(reason)
        self.cause = cause


def _kind(value: Any) -> str:
    return {list: "a JSON list", str: "a JSON string", type(None): "JSON null",
            bool: "a JSON boolean", int: "a JSON number", float: "a JSON number"}.get(
        type(value), type(value).__name__)


def first_choice(data: Any, field: str) -> tuple[dict[str, Any], str]:
    """The first choice of a completion body and its text (``field``: ``"message"`` for chat,
    ``"text"`` for raw completion), or :class:`_Unusable` saying what is wrong.

    An empty text counts as an answer only when the server says the model stopped
    (``finish_reason`` "stop" or "length"); ``content: null`` never does.

    >>> first_choice({"choices": [{"text": "hi", "finish_reason": "stop"}]}, "text")[1]
    'hi'
    """
    if not isinstance(data, dict):
        raise _Unusable("malformed", f"the body is {_kind(data)}, not a completion object")
    choices = data.get("choices")
    if choices == []:
        raise _Unusable("empty", "the answer has no choices (`choices: []`)")
    if not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise _Unusable("malformed", "the answer has no `choices` list of objects")
    choice = choices[0]
    finish = choice.get("finish_reason")
    if field == "message":
        message = choice.get("message")
        if not isinstance(message, dict):
            raise _Unusable("malformed", "choices[0] has no `message` object")
        text, where = message.get("content"), "choices[0].message.content"
        refusal = message.get("refusal")
    else:
        text, where, refusal = choice.get("text"), "choices[0].text", None
    if text is None:
        why = f"; refusal: {str(refusal)[:200]}" if refusal else ""
        raise _Unusable("empty", f"{where} is null (finish_reason {finish!r}{why})")
    if not isinstance(text, str):
        raise _Unusable("malformed", f"{where} is {_kind(text)}, not text")
    if not text and finish not in ("stop", "length"):
        raise _Unusable("empty", f"{where} is empty and finish_reason is {finish!r}")
    return choice, text


def _tokens(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _version(text: str) -> tuple[int, ...]:
    """``"0.10.1.post1"`` -> ``(0, 10, 1)``; ``()`` when there is no number at the start."""
    parts = []
    for piece in text.strip().lstrip("v").split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) < len(piece):
            break
    return tuple(parts)


def constraint_fields(
    flavour: str, params: SamplingParams, version: str | None = None
) -> dict[str, Any]:
    """The request body fields that make ``flavour``'s server honour ``params``' constraint
    (``{}`` when there is none). ``choices`` win when both are set.

    >>> constraint_fields("llamacpp", SamplingParams(choices=("Yes", "No")))
    {'grammar': 'root ::= "Yes" | "No"'}
    >>> constraint_fields("vllm", SamplingParams(choices=("Yes", "No")), "0.10.1")
    {'guided_choice': ['Yes', 'No']}
    """
    if not params.constrained or flavour == "off":
        return {}
    choices, schema = params.choices, params.schema()
    if flavour == "llamacpp":  # honoured on /v1/chat/completions and /v1/completions alike
        return {"grammar": choice_grammar(choices)} if choices else {"json_schema": schema}
    if flavour == "vllm":
        v = _version(version) if version else ()
        if v and v < VLLM_STRUCTURED_OUTPUTS:
            return {"guided_choice": list(choices)} if choices else {"guided_json": schema}
        so = {"choice": list(choices)} if choices else {"json": schema}
        return {"structured_outputs": so}
    if flavour != "openai":
        raise ValueError(f"unknown server flavour {flavour!r}; one of {', '.join(STRUCTURED)}")
    # OpenAI's strict json_schema: a choice travels as {"answer": CHOICE}.
    name = "choice" if choices else "output"
    spec = {"name": name, "schema": choice_schema(choices) if choices else schema, "strict": True}
    return {"response_format": {"type": "json_schema", "json_schema": spec}}


class OpenAICompatible(LLM):
    """Talk to ``base_url`` (ending in ``/v1``) over HTTP.

    ``model`` may be None: the server's only model is then used (see :meth:`resolve_model`).
    The API key is held in memory only and never reported by :meth:`describe`; so are
    credentials in the URL (``user:password@``, ``?api_key=``): ``base_url`` and ``model_id``
    are the URL without them (:func:`~instructforge.llm.urls.redact_urls`).
    Each attempt may take ``connect_timeout`` seconds to connect and ``timeout`` seconds in
    all; a call makes at most ``max_retries + 1`` attempts, and a request slot (of
    ``max_concurrency``) is held only while an attempt is on the wire, never while it waits
    to retry. The slots in use halve when the server answers 429 or 503 and grow back by one
    per round of successes (``adaptive``; see :mod:`~instructforge.llm.ratelimit`); ``rpm``
    and ``tpm`` cap requests and tokens (prompt, roughly, plus ``max_tokens``) per minute.
    ``structured`` picks how constraints are sent: ``"auto"`` (find out from the server),
    ``"llamacpp"``, ``"vllm"``, ``"openai"`` (``response_format``), or ``"off"`` (never sent;
    the answer is read from free text).
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        *,
        max_concurrency: int = 16,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        connect_timeout: float = CONNECT_TIMEOUT,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        model_id: str | None = None,
        structured: str = "auto",
        rpm: float | None = None,
        tpm: float | None = None,
        adaptive: bool = True,
    ) -> None:
        if structured not in STRUCTURED:
            raise LLMError(f"structured={structured!r}: use one of {', '.join(STRUCTURED)}")
        if max_retries < 0:
            raise LLMError(f"max_retries (--max-retries) must be >= 0, got {max_retries}")
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if not value > 0:
                raise LLMError(f"{name} must be a positive number of seconds, got {value}")
        # The real URL, credentials included, serves requests only; base_url is what is shown.
        base, q, query = base_url.partition("?")
        self._base, self._query = base.rstrip("/"), q + query
        self.base_url = redact_urls(base_url.rstrip("/"))
        self.model = model
        self._api_key = api_key
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.connect_timeout = connect_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.model_id = model_id or f"openai:{model}@{self.base_url}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: aiohttp.ClientSession | None = None
        self.adaptive = adaptive
        self._sem: AdaptiveLimit | None = None
        self._rpm = TokenBucket(rpm) if rpm else None
        self._tpm = TokenBucket(tpm) if tpm else None
        self._resolve_lock: asyncio.Lock | None = None
        self._checked = False
        self.structured = structured
        self._flavour: str | None = None if structured == "auto" else structured
        self._server_version: str | None = None
        self._flavour_lock: asyncio.Lock | None = None
        # Endpoints ("/chat/completions", "/completions") that refused a constraint.
        self._unconstrained: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------------
    def _ensure_client(self) -> tuple[aiohttp.ClientSession, AdaptiveLimit]:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # A session is bound to its event loop; a new asyncio.run() gets a fresh one.
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._client = aiohttp.ClientSession(
                headers=headers,
                connector=aiohttp.TCPConnector(limit=self.max_concurrency + 4),
                timeout=aiohttp.ClientTimeout(total=self.timeout,
                                              sock_connect=self.connect_timeout),
            )
            self._sem = AdaptiveLimit(self.max_concurrency, self.adaptive)
            self._resolve_lock = asyncio.Lock()
            self._flavour_lock = asyncio.Lock()
            self._loop = loop
        assert self._sem is not None
        return self._client, self._sem

    async def _throttle(self, payload: dict[str, Any]) -> None:
        """Wait until the ``rpm`` / ``tpm`` buckets allow sending ``payload``."""
        if self._rpm is not None:
            await self._rpm.take()
        if self._tpm is not None:
            prompt = payload.get("messages") or str(payload.get("prompt") or "")
            await self._tpm.take(approx_tokens(prompt) + int(payload.get("max_tokens") or 0))

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.backoff_max)
            except ValueError:
                pass
        # Full jitter: spreads retries of many concurrent requests apart.
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))

    async def _request(
        self, method: str, path: str, payload: dict[str, Any] | None = None, *,
        parse: Callable[[Any], Any] | None = None,
        refusable: bool = False,
        tally: Counter[str] | None = None,
        timeout: float | None = None,
        form: Callable[[], aiohttp.FormData] | None = None,
        text: bool = False,
    ) -> Any:
        """``method path`` with retries; the JSON answer, through ``parse`` when given
        (``parse`` raises :class:`_Unusable` for an answer to retry), or its text with
        ``text``. ``form`` makes a multipart body for each attempt (a file upload).
        ``tally`` counts the retries by cause."""
        client, sem = self._ensure_client()
        url = f"{self._base}{path}{self._query}"
        shown = f"{self.base_url}{path}"
        tally = Counter() if tally is None else tally
        # Always explicit: aiohttp reads ``timeout=None`` as "no timeout at all".
        per_attempt = aiohttp.ClientTimeout(total=timeout or self.timeout,
                                            sock_connect=self.connect_timeout)
        last = cause = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            if payload is not None:
                await self._throttle(payload)
            # The slot is held for this attempt only: a request waiting to retry leaves it
            # to others, so hung or failing requests cannot hold every slot.
            epoch = await sem.acquire()
            try:
                try:
                    async with client.request(method, url, json=payload,
                                              data=form() if form is not None else None,
                                              timeout=per_attempt) as r:
                        if r.status < 400 and text:
                            sem.succeeded()
                            return await r.text()
                        if r.status < 400:
                            try:
                                data = await r.json(content_type=None)
                            except ValueError:
                                cause, last = "malformed", f"the answer from {shown} is not JSON"
                            else:
                                try:
                                    answer = parse(data) if parse is not None else data
                                    sem.succeeded()
                                    return answer
                                except _Unusable as e:
                                    cause, last = e.cause, f"unusable answer from {shown}: {e}"
                        elif r.status in RETRY_STATUS:
                            cause = f"HTTP {r.status}"
                            last = f"HTTP {r.status} from {shown}: {(await r.text())[:200]}"
                            retry_after = r.headers.get("retry-after")
                            if r.status in OVERLOAD_STATUS:
                                sem.overloaded(epoch)
                        elif refusable and r.status in REFUSED_STATUS:
                            raise _Refused(r.status, await r.text())
                        else:
                            err = self._client_error(r.status, await r.text(), path)
                            err.retries = dict(tally)
                            raise err
                except TimeoutError as e:
                    cause = "timeout"
                    last = (f"no connection to {self.base_url} within "
                            f"{self.connect_timeout:g} s"
                            if isinstance(e, aiohttp.ConnectionTimeoutError) else
                            f"no answer from {shown} within {timeout or self.timeout:g} s")
                except aiohttp.ClientConnectorError as e:
                    cause = "connection"
                    last = f"cannot connect to {self.base_url} ({e.__class__.__name__}: {e})"
                except aiohttp.ClientError as e:
                    cause = "connection"
                    last = f"{e.__class__.__name__} talking to {shown}: {e or 'no detail'}"
            finally:
                sem.release()
            if attempt < self.max_retries:
                tally[cause] += 1
                await asyncio.sleep(self._delay(attempt, retry_after))
        hint = {
            "connection": " Is the server running and reachable? (check --base-url / "
                          "OPENAI_BASE_URL)",
            "timeout": " Is the server overloaded or hung? Raise --timeout if answers this "
                       "long are expected.",
        }.get(cause, "")
        raise LLMError(
            redact_urls(f"request to {shown} failed after {self.max_retries + 1} attempts: "
                        f"{last}.{hint}"),
            retries=dict(tally),
        )

    def _client_error(self, status: int, text: str, path: str) -> LLMError:
        body = redact_urls(text[:300])
        if status in (401, 403):
            return LLMError(
                f"HTTP {status} from {self.base_url}: the server refused the API key "
                "(set --api-key or OPENAI_API_KEY)."
            )
        if path == "/completions" and status in (404, 405, 501):
            return RawCompletionUnsupported(
                f"{self.base_url} has no raw text completion endpoint (/v1/completions answered "
                f"HTTP {status}). Use a server that offers it (vLLM, llama.cpp, SGLang) or "
                "the embedded model."
            )
        if status == 404 or "model" in body.lower() and status == 400:
            return LLMError(
                f"HTTP {status} from {self.base_url}{path} for model {self.model!r}: {body}. "
                "Check the model name (`instructforge models --base-url ...` lists them)."
            )
        return LLMError(f"HTTP {status} from {self.base_url}{path}: {body}")

    # -- API --------------------------------------------------------------------------------
    async def list_models(self) -> list[str]:
        """Model names the server offers (``GET /v1/models``)."""
        return await self._request("GET", "/models", parse=_model_list,
                                   timeout=min(self.timeout, META_TIMEOUT))

    async def resolve_model(self) -> str:
        """Check the server is reachable and the model exists; pick the only model if unset."""
        self._ensure_client()
        assert self._resolve_lock is not None
        async with self._resolve_lock:
            if self.model is not None and self._checked:
                return self.model
            names = await self.list_models()
            if self.model is None:
                if len(names) != 1:
                    raise LLMError(
                        f"{self.base_url} serves {len(names)} models ({', '.join(names) or 'none'});"
                        " name one with --model."
                    )
                self.model = names[0]
                self.model_id = f"openai:{self.model}@{self.base_url}"
            elif names and self.model not in names:
                raise LLMError(
                    f"model {self.model!r} is not served by {self.base_url}; "
                    f"available: {', '.join(names)}"
                )
            self._checked = True
            return self.model

    def _payload(self, params: SamplingParams) -> dict[str, Any]:
        p: dict[str, Any] = {
            "model": self.model,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        if params.seed is not None:
            p["seed"] = params.seed
        if params.stop:
            p["stop"] = list(params.stop)
        return p

    async def chat(self, messages: list[Message], params: SamplingParams) -> Completion:
        if self.model is None:
            await self.resolve_model()
        payload = self._payload(params)
        payload["messages"] = messages
        return await self._post("/chat/completions", payload, params, "message")

    async def complete(self, text: str, params: SamplingParams) -> Completion:
        if self.model is None:
            await self.resolve_model()
        payload = self._payload(params)
        payload["prompt"] = text
        return await self._post("/completions", payload, params, "text")

    async def _post(
        self, path: str, payload: dict[str, Any], params: SamplingParams, field: str
    ) -> Completion:
        """POST ``payload`` with ``params``' constraint, if any, and read the completion.
        ``extra["constraint"]`` says how the constraint was honoured: absent (unconstrained
        call), "native", "fallback" (refused, so sent without) or "off"."""
        tally: Counter[str] = Counter()

        def parse(data: Any) -> tuple[dict[str, Any], dict[str, Any], str]:
            return (data, *first_choice(data, field))

        async def send(body: dict[str, Any], refusable: bool = False) -> Any:
            return await self._request("POST", path, body, parse=parse, refusable=refusable,
                                       tally=tally)

        if not params.constrained:
            return self._completion(await send(payload), None, tally)
        if self.structured == "off":
            return self._completion(await send(payload), "off", tally)
        if path in self._unconstrained:
            return self._completion(await send(payload), "fallback", tally)
        flavour = await self.server_flavour()
        fields = constraint_fields(flavour, params, self._server_version)
        try:
            return self._completion(await send({**payload, **fields}, True), "native", tally)
        except _Refused as refused:
            # Without the constraint: if this fails too, the constraint was not the problem
            # and the error (a clear one) goes to the caller.
            answer = await send(payload)
            if path not in self._unconstrained:
                self._unconstrained.add(path)
                log.warning(
                    "%s%s refused constrained decoding (%s, sent as %s: HTTP %d: %s); "
                    "constrained requests there go without the constraint from now on, and "
                    "their answers are read from free text",
                    self.base_url, path, "choices" if params.choices else "json_schema",
                    ", ".join(fields), refused.status, refused.text[:200].strip(),
                )
            return self._completion(answer, "fallback", tally)

    # -- the Batch API (used by :class:`~instructforge.llm.batch.BatchLLM`) ----------------
    async def call_api(self, method: str, path: str, payload: dict[str, Any] | None = None
                       ) -> Any:
        """``method path`` (``/batches``, ``/files/ID``...) with retries; its JSON answer."""
        return await self._request(method, path, payload, timeout=min(self.timeout,
                                                                      META_TIMEOUT * 4))

    async def upload_file(self, name: str, content: bytes, purpose: str = "batch") -> str:
        """``POST /files`` (multipart, ``purpose``); the new file's id."""
        def form() -> aiohttp.FormData:
            f = aiohttp.FormData()
            f.add_field("purpose", purpose)
            f.add_field("file", content, filename=name, content_type="application/jsonl")
            return f

        data = await self._request("POST", "/files", form=form)
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise LLMError(f"{self.base_url}/files answered no file id: {str(data)[:200]}")
        return data["id"]

    async def file_text(self, file_id: str) -> str:
        """``GET /files/ID/content``: the file as text."""
        return await self._request("GET", f"/files/{file_id}/content", text=True)

    async def request_body(self, kind: str, prompt: Any, params: SamplingParams
                           ) -> tuple[str, dict[str, Any], str | None]:
        """What :meth:`chat` (``kind`` "chat") or :meth:`complete` would POST, for a batch
        line: the path, the body (with the constraint, as this server takes it) and how
        the constraint is sent (None: unconstrained, "native", "fallback" or "off")."""
        if self.model is None:
            await self.resolve_model()
        payload = self._payload(params)
        path = "/chat/completions" if kind == "chat" else "/completions"
        payload["messages" if kind == "chat" else "prompt"] = prompt
        if not params.constrained:
            return path, payload, None
        if self.structured == "off":
            return path, payload, "off"
        if path in self._unconstrained:
            return path, payload, "fallback"
        fields = constraint_fields(await self.server_flavour(), params, self._server_version)
        return path, {**payload, **fields}, "native"

    def read_completion(self, data: Any, kind: str, constraint: str | None) -> Completion:
        """A batch output line's response body as a :class:`Completion` (LLMError when it
        holds no usable answer)."""
        try:
            choice, text = first_choice(data, "message" if kind == "chat" else "text")
        except _Unusable as e:
            raise LLMError(f"unusable answer in a batch output line: {e}") from None
        return self._completion((data, choice, text), constraint, Counter())

    async def server_flavour(self) -> str:
        """How this server takes constraints: "llamacpp", "vllm" or "openai" (or "off").

        Found out once, on the first constrained request: llama.cpp answers ``GET /props``
        with its settings, vLLM answers ``GET /version``; anything else is taken to speak
        OpenAI's ``response_format``. A probe that gets no answer at all (a timeout, no
        connection) is tried again on the next constrained request."""
        if self._flavour is not None:
            return self._flavour
        self._ensure_client()
        assert self._flavour_lock is not None
        async with self._flavour_lock:
            if self._flavour is not None:
                return self._flavour
            answered, props = await self._probe("/props")
            if "default_generation_settings" in props or "chat_template" in props:
                self._flavour = "llamacpp"
                return self._flavour
            answered_v, data = await self._probe("/version")
            version = data.get("version")
            if isinstance(version, str) and _version(version):
                self._flavour, self._server_version = "vllm", version
                return self._flavour
            if answered and answered_v:
                self._flavour = "openai"
            return "openai"

    def _root(self) -> str:
        return self._base[: -len("/v1")] if self._base.endswith("/v1") else self._base

    async def _probe(self, path: str) -> tuple[bool, dict[str, Any]]:
        """``GET {root}{path}``: whether the server answered at all, and the JSON object it
        answered (``{}`` for an error status or anything else)."""
        client, _ = self._ensure_client()
        try:
            async with client.get(f"{self._root()}{path}{self._query}",
                                  timeout=aiohttp.ClientTimeout(
                                      total=min(self.timeout, META_TIMEOUT))) as r:
                if r.status != 200:
                    return True, {}
                try:
                    data = await r.json(content_type=None)
                except ValueError:
                    return True, {}
        except (TimeoutError, aiohttp.ClientError):
            return False, {}
        return True, data if isinstance(data, dict) else {}

    def _completion(
        self, answer: tuple[dict[str, Any], dict[str, Any], str], constraint: str | None,
        tally: Counter[str],
    ) -> Completion:
        data, choice, text = answer
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return Completion(
            text=text,
            finish_reason=str(choice.get("finish_reason") or "stop"),
            prompt_tokens=_tokens(usage.get("prompt_tokens")),
            completion_tokens=_tokens(usage.get("completion_tokens")),
            model=self.model or "",
            extra={"constraint": constraint} if constraint else {},
            retries=dict(tally),
        )

    async def chat_template(self) -> str | None:
        """llama.cpp's ``/props`` exposes the model's Jinja chat template; others return None."""
        client, _ = self._ensure_client()
        try:
            async with client.get(f"{self._root()}/props{self._query}",
                                  timeout=aiohttp.ClientTimeout(
                                      total=min(self.timeout, META_TIMEOUT))) as r:
                if r.status != 200:
                    return None
                data = await r.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None
        template = data.get("chat_template") if isinstance(data, dict) else None
        return template if isinstance(template, str) else None

    def is_local(self) -> bool:
        """Whether the server is on this machine (a loopback address: the embedded server,
        a local llama.cpp or vLLM)."""
        host = urlsplit(self._base).hostname or ""
        return host == "localhost" or host == "::1" or host.startswith("127.")

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
        self._client = None

    def describe(self) -> dict[str, Any]:
        d = {"backend": "openai", "base_url": self.base_url, "model": self.model}
        if self.structured != "auto":
            d["structured"] = self.structured
        return d


def _model_list(data: Any) -> list[str]:
    """The model names of a ``GET /v1/models`` answer (OpenAI's ``data``, Ollama's
    ``models``)."""
    if not isinstance(data, dict):
        raise _Unusable("malformed", f"the model list is {_kind(data)}, not an object")
    models = data.get("data") or data.get("models") or []
    if not isinstance(models, list):
        raise _Unusable("malformed", "the model list has no `data` list")
    return [str(m.get("id") or m.get("name", "")) for m in models if isinstance(m, dict)]

