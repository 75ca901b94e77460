"""The one LLM interface: ``chat(messages, params)`` and ``complete(text, params)``.

Backends know nothing of methods or the engine; they can be used alone::

    llm = OpenAICompatible(base_url="http://127.0.0.1:8080/v1", model="smollm2")
    out = await llm.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=32))
    print(out.text, out.finish_reason, out.completion_tokens)
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from instructforge.errors import EXIT_FAILED, InstructForgeError

if TYPE_CHECKING:
    from instructforge.llm.prices import Price

Message = dict[str, str]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling parameters sent with every request (and part of every cache key).

    ``choices`` and ``json_schema`` constrain the output (structured output): the answer is
    exactly one of ``choices``, or JSON matching ``json_schema``. Backends map them to the
    server's constrained decoding and fall back to free text where it is refused; read the
    answer with :func:`instructforge.llm.structured.read_choice` / ``read_json``, which
    accept both. ``json_schema`` is kept as canonical JSON text, so the params stay
    hashable and the cache key stable.

    >>> SamplingParams(0.0, choices=("Equal", "Not Equal")).to_dict()["choices"]
    ['Equal', 'Not Equal']
    """

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    json_schema: str | None = None

    def __post_init__(self) -> None:
        if self.choices is not None:
            choices = tuple(self.choices)
            if not choices or not all(isinstance(c, str) and c for c in choices):
                raise ValueError("choices must be a non-empty list of non-empty strings")
            object.__setattr__(self, "choices", choices)
        if isinstance(self.json_schema, Mapping):
            object.__setattr__(self, "json_schema", json.dumps(self.json_schema, sort_keys=True))

    @property
    def constrained(self) -> bool:
        return self.choices is not None or self.json_schema is not None

    def schema(self) -> dict[str, Any] | None:
        """``json_schema`` as a dict (None when unset)."""
        return json.loads(self.json_schema) if self.json_schema is not None else None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": list(self.stop),
        }
        # Only when set, so unconstrained requests keep the cache keys they always had.
        if self.choices is not None:
            d["choices"] = list(self.choices)
        if self.json_schema is not None:
            d["json_schema"] = self.schema()
        return d

    def replace(self, **changes: Any) -> SamplingParams:
        d = asdict(self)
        d.update(changes)
        if d.get("stop") is not None:
            d["stop"] = tuple(d["stop"])
        return SamplingParams(**d)


@dataclass
class Completion:
    """What a call returns: the text, why it stopped, and token usage.

    ``extra["constraint"]``, on constrained calls only: ``"native"`` (the server enforced it),
    ``"fallback"`` (the server refused it, so the call went without) or ``"off"`` (the backend
    was told not to send constraints). It is kept in the cache, so a replay says the same.
    ``retries`` counts the attempts the backend made again before this answer, by cause
    (``"HTTP 503"``, ``"timeout"``, ``"connection"``, ``"malformed"``, ``"empty"``); it is
    not cached (a replay retried nothing).
    """

    text: str
    finish_reason: str  # "stop", "length", ...
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "model": self.model,
        }
        if self.extra.get("constraint"):  # only on constrained calls: old rows stay as they were
            d["constraint"] = self.extra["constraint"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, cached: bool = False) -> Completion:
        return cls(
            text=d["text"],
            finish_reason=d.get("finish_reason") or "stop",
            prompt_tokens=int(d.get("prompt_tokens") or 0),
            completion_tokens=int(d.get("completion_tokens") or 0),
            model=d.get("model") or "",
            cached=cached,
            extra={"constraint": d["constraint"]} if d.get("constraint") else {},
        )


def request_key(model_id: str, kind: str, prompt: Any, params: dict[str, Any]) -> str:
    """The request cache's key of a call (``kind``: "chat" or "complete"): a hash of what is
    sent, never of code. Batch mode uses it as the batch line's ``custom_id``."""
    blob = json.dumps(
        {"model": model_id, "kind": kind, "prompt": prompt, "params": params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class LLMError(InstructForgeError, RuntimeError):
    """A request failed for good (after retries), with a message a user can act on.

    ``retries`` counts the attempts made again before giving up, by cause (as
    :attr:`Completion.retries`); ``step`` and ``model`` say which call failed (the engine
    fills them in).
    """

    exit_code = EXIT_FAILED

    def __init__(self, message: str = "", *, retries: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.retries: dict[str, int] = dict(retries or {})
        self.step: str | None = None
        self.model: str | None = None


class RawCompletionUnsupported(LLMError):
    """The backend only offers a chat API, so raw text completion is impossible."""


class LLM(ABC):
    """An LLM backend. ``model_id`` names the model in cache keys and usage reports;
    ``model``, when known, is the model's own name (what its server or files call it), from
    which its chat template may be guessed. ``price`` is what its tokens cost (None: unknown;
    set by :meth:`~instructforge.llm.config.ModelConfig.build`)."""

    model_id: str = ""
    model: str | None = None
    price: Price | None = None
    supports_completion: bool = True
    max_concurrency: int = 8

    @abstractmethod
    async def chat(self, messages: list[Message], params: SamplingParams) -> Completion: ...

    @abstractmethod
    async def complete(self, text: str, params: SamplingParams) -> Completion: ...

    async def chat_template(self) -> str | None:
        """The model's own Jinja chat template, when the backend can tell (else None)."""
        return None

    async def resolve_model(self) -> str:
        """Check, before any record, that the backend can serve (a server is reachable and
        names the model); returns the model's name. Called once per job by the engine.
        Default: nothing to check."""
        return self.model or self.model_id

    def is_local(self) -> bool:
        """Whether calls cost only this machine's time (an embedded or in-process model, a
        server on a loopback address), so work that may be thrown away is free to start.
        Default: no (a remote server may bill every token)."""
        return False

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections / processes."""

    async def release_loop(self) -> None:
        """Let go of what is bound to the running event loop (HTTP connections) before that
        loop ends, so the backend can be used again from another loop. A backend with a
        model loaded in this process keeps it loaded. Default: :meth:`aclose`."""
        await self.aclose()

    def describe(self) -> dict[str, Any]:
        """Public, secret-free description for config.yaml and usage.json."""
        return {"model": self.model_id}

    def status(self) -> str:
        """What the backend is waiting on, for the progress line ("" when nothing worth
        showing; batch mode: its batches)."""
        return ""


class WrappedLLM(LLM):
    """A backend that changes some calls of another (``inner``) and forwards the rest, so a
    wrapper overrides only what it changes.

    >>> class Shouting(WrappedLLM):
    ...     async def chat(self, messages, params):
    ...         out = await self.inner.chat(messages, params)
    ...         return Completion(out.text.upper(), out.finish_reason)
    """

    def __init__(self, inner: LLM) -> None:
        self.inner = inner
        self.price = inner.price
        self.supports_completion = inner.supports_completion
        self.max_concurrency = inner.max_concurrency

    @property  # type: ignore[override]
    def model_id(self) -> str:
        # A property: the inner id can change when its server names its only model.
        return self.inner.model_id

    @property  # type: ignore[override]
    def model(self) -> str | None:
        return self.inner.model

    async def chat(self, messages: list[Message], params: SamplingParams) -> Completion:
        return await self.inner.chat(messages, params)

    async def complete(self, text: str, params: SamplingParams) -> Completion:
        return await self.inner.complete(text, params)

    async def chat_template(self) -> str | None:
        return await self.inner.chat_template()

    async def resolve_model(self) -> str:
        return await self.inner.resolve_model()

    def is_local(self) -> bool:
        return self.inner.is_local()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def release_loop(self) -> None:
        await self.inner.release_loop()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def status(self) -> str:
        return self.inner.status()
