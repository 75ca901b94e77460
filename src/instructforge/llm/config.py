"""Which model plays which role: the saved, secret-free configuration of a backend.

A method's config holds one :class:`ModelConfig` per role (evol, response, judge...);
:func:`build_roles` builds them, sharing one backend between roles configured alike::

    evol, judge = build_roles([ModelConfig("embedded"), ModelConfig("embedded")])
    assert evol is judge
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from instructforge.llm import make_llm
from instructforge.llm.base import LLM
from instructforge.llm.batch import BatchLLM
from instructforge.llm.openai import OpenAICompatible
from instructforge.llm.prices import FREE, Price, load_prices, lookup, parse_price


@dataclass
class ModelConfig:
    """Which LLM to use; secrets (the API key) are passed separately and never saved."""

    model: str = "embedded"
    base_url: str | None = None
    model_path: str | None = None
    max_concurrency: int | None = None
    timeout: float | None = None
    max_retries: int | None = None
    price: str | None = None  # "IN,OUT": USD per million prompt / completion tokens
    rpm: float | None = None  # requests per minute, at most (a server's rate limit)
    tpm: float | None = None  # tokens per minute, at most (prompt, roughly, plus max_tokens)
    # Batch mode (--batch): calls go through the server's Batch API (llm/batch.py).
    batch: bool = False
    batch_requests: int = 10_000  # requests per batch, at most
    batch_window: float = 2.0  # seconds a batch collects requests after its first
    batch_poll: float = 30.0  # seconds between two looks at a batch's status

    def build(self, api_key: str | None = None, journal: Path | None = None) -> LLM:
        """The backend; in batch mode, a server's backend wrapped in a
        :class:`~instructforge.llm.batch.BatchLLM` recording its batches in ``journal``
        (the run's ``state/batches.jsonl``). A model that runs here ignores ``batch``."""
        llm = make_llm(
            self.model,
            base_url=self.base_url,
            api_key=api_key,
            model_path=self.model_path,
            max_concurrency=self.max_concurrency,
            timeout=self.timeout,
            max_retries=self.max_retries,
            rpm=self.rpm,
            tpm=self.tpm,
        )
        # The list price: a BatchLLM applies its batch factor itself.
        llm.price = replace(self, batch=False).resolve_price()
        if self.batch and isinstance(llm, OpenAICompatible):
            return BatchLLM(llm, journal, size=self.batch_requests, window=self.batch_window,
                            poll=self.batch_poll)
        return llm

    def remote(self) -> bool:
        """Whether the model runs on a server (paid per token, perhaps) rather than here."""
        return bool(self.base_url) or self.model.startswith(("openai", "http://", "https://"))

    def resolve_price(self) -> Price | None:
        """What this model's tokens cost: ``price`` when given; free for a model that runs
        here; else the prices file's entry for the model's name (None when it has none).
        With ``batch``, a server model's price times its batch factor.

        >>> ModelConfig("openai:gpt-4o-mini@http://h/v1").resolve_price()
        Price(input=0.15, output=0.6, batch=0.5)
        >>> ModelConfig("openai:gpt-4o-mini@http://h/v1", batch=True).resolve_price()
        Price(input=0.075, output=0.3, batch=1.0)
        >>> ModelConfig("embedded").resolve_price()
        Price(input=0.0, output=0.0, batch=1.0)
        """
        if not self.remote():
            return FREE if self.price is None else parse_price(self.price)
        if self.price is not None:
            price: Price | None = parse_price(self.price)
        else:
            name = self.model.removeprefix("openai").removeprefix(":").partition("@")[0]
            price = lookup(name, load_prices()) if name else None
        if self.batch and price is not None:
            return Price(price.input * price.batch, price.output * price.batch, 1.0)
        return price

    def batches(self, requests_per_step: int, steps: int) -> dict[str, int]:
        """For ``--dry-run`` in batch mode: the requests and (about) the batches a run of
        ``steps`` steps of ``requests_per_step`` calls would submit ({} when not batching).

        >>> ModelConfig("openai:m@http://h/v1", batch=True).batches(25_000, 3)
        {'batch_requests_at_most': 75000, 'batches_about': 9}
        """
        if not (self.batch and self.remote()):
            return {}
        per_step = -(-requests_per_step // self.batch_requests)
        return {"batch_requests_at_most": requests_per_step * steps,
                "batches_about": per_step * steps}

    def gpus(self) -> int:
        """GPUs a process must reserve to build this backend: a ``vllm:`` engine needs its
        tensor parallel size; servers and the embedded CPU model need none.

        >>> ModelConfig("vllm:/models/llama?tensor_parallel_size=2").gpus()
        2
        >>> ModelConfig("openai:judge@http://h/v1").gpus()
        0
        """
        if self.base_url or self.model_path or not self.model.startswith("vllm:"):
            return 0
        from instructforge.llm.vllm import VLLM  # cheap: vLLM itself is not imported

        return VLLM.from_spec(self.model).tensor_parallel_size


def gpus_needed(*configs: ModelConfig | str | None) -> int:
    """GPUs one process building every one of ``configs`` (or model specs) must reserve,
    each distinct engine once.

    >>> gpus_needed(ModelConfig("vllm:/m?tensor_parallel_size=2"), "vllm:/m?tensor_parallel_size=2",
    ...             None)
    2
    """
    given = [ModelConfig(c) if isinstance(c, str) else c for c in configs if c]
    distinct_configs = {json.dumps(asdict(c), sort_keys=True): c for c in given}
    return sum(c.gpus() for c in distinct_configs.values())


def build_roles(configs: list[ModelConfig], api_key: str | None = None,
                journal: Path | None = None) -> list[LLM]:
    """One backend per role, shared between roles with the same config (three roles on
    ``embedded`` share one server); ``journal``: see :meth:`ModelConfig.build`."""
    built: dict[str, LLM] = {}
    out = []
    for mc in configs:
        key = json.dumps(asdict(mc), sort_keys=True)
        if key not in built:
            built[key] = mc.build(api_key, journal)
        out.append(built[key])
    return out


def distinct(llms: list[LLM]) -> list[LLM]:
    """Each backend once, in order (for preflight checks and closing)."""
    out: list[LLM] = []
    for m in llms:
        if all(m is not o for o in out):
            out.append(m)
    return out
