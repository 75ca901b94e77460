"""In-process vLLM on a GPU: ``chat`` and raw ``complete`` with no server in between.

Every call is submitted to vLLM's async engine the moment the streaming engine makes it, so
vLLM's continuous batching schedules whatever is in flight: a record's next call joins the
running batch as soon as its previous one returns, with no batch barrier between steps.
Prefix caching is on (Magpie's pre-query templates and Evol's prompts share long prefixes).
vLLM is imported only when the first request arrives, so this module loads without it::

    llm = VLLM("/models/Llama-3-8B-Instruct", tensor_parallel_size=2)
    out = await llm.complete("<|start_header_id|>user<|end_header_id|>\\n\\n",
                             SamplingParams(temperature=1.0, max_tokens=128, seed=1))

As a spec string: ``vllm:/models/Llama-3-8B-Instruct?tensor_parallel_size=2``.

Constrained calls (``SamplingParams(choices=...)`` / ``json_schema=...``) use vLLM's own
structured outputs (``StructuredOutputsParams``; ``GuidedDecodingParams`` in older vLLM).
Where vLLM has neither, or refuses the constraint (a ValueError), the call is made again
without it, once, and later ones go without it at once (one warning); ``Completion.extra
["constraint"]`` says ``"native"`` or ``"fallback"``.

The engine runs on its own event loop in a background thread: callers on any loop (a
``prepare`` step under one ``asyncio.run``, the job under another) share one loaded model, and
vLLM's output processing never stalls the caller's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
import uuid
from typing import Any
from urllib.parse import parse_qsl

from instructforge.llm.base import LLM, Completion, LLMError, Message, SamplingParams

# Engine options a spec string may set, with their types (anything else is a typo).
SPEC_OPTIONS: dict[str, type] = {
    "tensor_parallel_size": int,
    "gpu_memory_utilization": float,
    "max_model_len": int,
    "max_num_seqs": int,
    "dtype": str,
    "quantization": str,
    "enforce_eager": bool,
    "trust_remote_code": bool,
    "max_concurrency": int,
}

log = logging.getLogger("instructforge")


class _Refused(LLMError):
    """vLLM refused a constrained request (or cannot constrain at all)."""


def structured_kwargs(params: SamplingParams) -> dict[str, Any] | None:
    """Keyword arguments for vLLM's ``SamplingParams`` that carry ``params``' constraint:
    ``{}`` when there is none, None when this vLLM has no structured outputs.

    ``structured_outputs=StructuredOutputsParams(...)`` where it exists (current vLLM), else
    ``guided_decoding=GuidedDecodingParams(...)`` (older vLLM; removed in 0.12). ``choices``
    win when both are set. Imports vLLM: call it only where vLLM is loaded.
    """
    if not params.constrained:
        return {}
    spec: dict[str, Any] = (
        {"choice": list(params.choices)} if params.choices else {"json": params.schema()}
    )
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:
        pass
    else:
        return {"structured_outputs": StructuredOutputsParams(**spec)}
    try:
        from vllm.sampling_params import GuidedDecodingParams
    except ImportError:
        return None
    return {"guided_decoding": GuidedDecodingParams(**spec)}


INSTALL_HINT = (
    "the vllm backend needs vLLM and a CUDA GPU: pip install 'instructforge[vllm]' on a GPU "
    "machine, or serve the model with `vllm serve` and use openai:MODEL@URL."
)


class VLLM(LLM):
    """A model loaded in this process by vLLM's async engine (``AsyncLLMEngine``)."""

    supports_completion = True

    def __init__(
        self,
        model: str,
        *,
        tensor_parallel_size: int = 1,
        max_concurrency: int = 256,
        enable_prefix_caching: bool = True,
        model_id: str | None = None,
        **engine_kwargs: Any,
    ) -> None:
        self.model = model
        self.tensor_parallel_size = tensor_parallel_size
        # The engine batches everything in flight; this only bounds the queue it is fed.
        self.max_concurrency = max_concurrency
        self.enable_prefix_caching = enable_prefix_caching
        self.engine_kwargs = engine_kwargs
        self.model_id = model_id or f"vllm:{model}"
        self._lock = threading.Lock()
        self._ready: concurrent.futures.Future[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tokenizer: Any = None
        self._unconstrained = False  # vLLM refused a constraint once: send none from then on

    @classmethod
    def from_spec(cls, spec: str, **kw: Any) -> VLLM:
        """``vllm:PATH[?option=value&...]`` (options: :data:`SPEC_OPTIONS`).

        >>> VLLM.from_spec("vllm:/models/qwen?tensor_parallel_size=2").tensor_parallel_size
        2
        """
        path, _, query = spec.removeprefix("vllm:").partition("?")
        if not path:
            raise LLMError(f"model spec {spec!r} names no model: use vllm:/path/to/model")
        opts: dict[str, Any] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            kind = SPEC_OPTIONS.get(key)
            if kind is None:
                raise LLMError(f"model spec {spec!r}: unknown option {key!r}; options: "
                               f"{', '.join(SPEC_OPTIONS)}")
            try:
                opts[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
            except ValueError:
                raise LLMError(f"model spec {spec!r}: {key}={value!r} is not a {kind.__name__}"
                               ) from None
        return cls(path, **{**opts, **kw})

    # -- the engine, on its own loop -----------------------------------------------------
    async def _engine(self) -> Any:
        with self._lock:
            if self._ready is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name="vllm-engine", daemon=True)
                self._thread.start()
                self._ready = asyncio.run_coroutine_threadsafe(self._create(), self._loop)
            ready = self._ready
        try:
            return await asyncio.wrap_future(ready)
        except ImportError as e:
            raise LLMError(f"{INSTALL_HINT} ({e})") from e
        except LLMError:
            raise
        except Exception as e:  # CUDA out of memory, a bad path...: say which model failed
            raise LLMError(f"vllm could not load {self.model!r}: {type(e).__name__}: {e}") from e

    async def _create(self) -> Any:
        from vllm import AsyncEngineArgs, AsyncLLMEngine  # the heavy import, only when used

        args = AsyncEngineArgs(
            model=self.model,
            tensor_parallel_size=self.tensor_parallel_size,
            enable_prefix_caching=self.enable_prefix_caching,
            **self.engine_kwargs,
        )
        engine = AsyncLLMEngine.from_engine_args(args)
        tok = engine.get_tokenizer()  # a coroutine in older vLLM releases
        self._tokenizer = await tok if inspect.isawaitable(tok) else tok
        return engine

    def _sampling(self, params: SamplingParams, *, constrain: bool = False) -> Any:
        from vllm import SamplingParams as VllmParams

        kw: dict[str, Any] = {}
        try:  # only the final output: no per-token deltas to ship between loops
            from vllm.sampling_params import RequestOutputKind

            kw["output_kind"] = RequestOutputKind.FINAL_ONLY
        except ImportError:
            pass
        if constrain:
            structured = structured_kwargs(params)
            if structured is None:
                raise _Refused("this vLLM has no structured outputs (StructuredOutputsParams "
                               "or GuidedDecodingParams)")
            kw.update(structured)
        return VllmParams(
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            seed=params.seed,
            stop=list(params.stop) or None,
            **kw,
        )

    async def _generate(self, prompt: Any, params: SamplingParams) -> Completion:
        engine = await self._engine()
        if not params.constrained:
            return await self._submit(engine, prompt, lambda: self._sampling(params))
        if self._unconstrained:
            out = await self._submit(engine, prompt, lambda: self._sampling(params))
            out.extra["constraint"] = "fallback"
            return out
        try:
            out = await self._submit(
                engine, prompt, lambda: self._sampling(params, constrain=True), constrained=True)
        except _Refused as refused:
            # Without the constraint: if this fails too (a prompt too long, say), the
            # constraint was not the problem, and that error goes to the caller.
            out = await self._submit(engine, prompt, lambda: self._sampling(params))
            out.extra["constraint"] = "fallback"
            if not self._unconstrained:
                self._unconstrained = True
                log.warning("vllm refused constrained decoding for %s (%s); constrained "
                            "requests go without the constraint from now on, and their "
                            "answers are read from free text", self.model, refused)
            return out
        out.extra["constraint"] = "native"
        return out

    async def _submit(
        self, engine: Any, prompt: Any, sampling: Any, *, constrained: bool = False
    ) -> Completion:
        """Run one request on the engine's loop; ``sampling`` builds vLLM's params (which
        validates them). With ``constrained``, a ValueError (vLLM refusing the constraint or
        its schema) is raised as :class:`_Refused`."""
        assert self._loop is not None
        try:
            built = sampling()
        except _Refused:
            raise
        except Exception as e:
            if constrained and isinstance(e, ValueError | TypeError):
                raise _Refused(f"{type(e).__name__}: {e}") from e
            raise LLMError(f"vllm request failed: {type(e).__name__}: {e}") from e
        fut = asyncio.run_coroutine_threadsafe(self._run(engine, prompt, built), self._loop)
        try:
            return await asyncio.wrap_future(fut)
        except LLMError:
            raise
        except asyncio.CancelledError:
            fut.cancel()  # cancels the request in the engine too (vLLM aborts it)
            raise
        except Exception as e:
            if constrained and isinstance(e, ValueError):
                raise _Refused(f"{type(e).__name__}: {e}") from e
            raise LLMError(f"vllm request failed: {type(e).__name__}: {e}") from e

    async def _run(self, engine: Any, prompt: Any, sampling: Any) -> Completion:
        final = None
        async for output in engine.generate(prompt, sampling, request_id=uuid.uuid4().hex):
            final = output
        if final is None or not final.outputs:
            raise LLMError("vllm returned no output")
        choice = final.outputs[0]
        return Completion(
            text=choice.text,
            finish_reason=choice.finish_reason or "stop",
            prompt_tokens=len(final.prompt_token_ids or ()),
            completion_tokens=len(choice.token_ids or ()),
            model=self.model_id,
        )

    # -- the interface ---------------------------------------------------------------------
    async def chat(self, messages: list[Message], params: SamplingParams) -> Completion:
        await self._engine()
        # Token ids, not text: a rendered template already holds BOS, and tokenizing it again
        # would add a second one (vLLM's own chat path does the same).
        ids = self._tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True)
        if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding (not a dict)
            ids = ids["input_ids"]
        return await self._generate({"prompt_token_ids": [int(i) for i in ids]}, params)

    async def complete(self, text: str, params: SamplingParams) -> Completion:
        # Text as vLLM's /v1/completions takes it (its tokenizer adds BOS if the model wants).
        return await self._generate({"prompt": text}, params)

    async def chat_template(self) -> str | None:
        await self._engine()
        return getattr(self._tokenizer, "chat_template", None)

    async def release_loop(self) -> None:
        """Nothing is bound to the caller's loop: the engine runs on its own, so the model
        stays loaded for the next caller (Magpie's template check, then its job)."""

    def is_local(self) -> bool:
        return True  # an engine in this process

    async def aclose(self) -> None:
        """Shut the engine down and free the GPU (a later call loads the model again)."""
        with self._lock:
            ready, loop, thread = self._ready, self._loop, self._thread
            self._ready = self._loop = self._thread = None
        if ready is None or loop is None:
            return
        if ready.done() and ready.exception() is None:
            shutdown = getattr(ready.result(), "shutdown", None)
            if shutdown is not None:
                await asyncio.wrap_future(
                    asyncio.run_coroutine_threadsafe(_call(shutdown), loop))
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            await asyncio.to_thread(thread.join, 30)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "backend": "vllm",
            "tensor_parallel_size": self.tensor_parallel_size,
            "enable_prefix_caching": self.enable_prefix_caching,
            **{k: v for k, v in self.engine_kwargs.items() if k in SPEC_OPTIONS},
        }


async def _call(fn: Any) -> None:
    out = fn()
    if inspect.isawaitable(out):
        await out
