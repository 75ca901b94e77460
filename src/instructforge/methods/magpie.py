"""Magpie (Xu et al. 2024): alignment data from an aligned model with no seeds and no prompts.

For each conversation slot ``magpie-{i}`` (one engine input each, with its own seeds):

1. **Instruction synthesis**: send the model only its chat template's *pre-query* text (its
   default or a category system prompt, then the opening of a user turn) as raw completion,
   sample at temperature 1.0, stop at the end of the user turn: the model writes a query.
2. **Response synthesis**: send pre-query + query + *post-query* text and let it answer.
3. **Multi-turn**: append the pre-query template after the answer for a follow-up query; a
   multi-round system prompt keeps small models in role.
4. **Filters**: every query and answer passes the switchable filters of
   :mod:`instructforge.methods.filters`; near-duplicate queries are caught across the stream
   (the index is rebuilt from the run's output on resume).

>>> cfg = MagpieConfig(n=50, turns=1)
>>> result = magpie("runs/magpie", cfg)                           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import bisect
import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound

from instructforge.engine import Built, Context, Job, JobResult, RequestCache, RunDir
from instructforge.llm import LLM, LLMError, RawCompletionUnsupported, SamplingParams
from instructforge.llm.config import ModelConfig, gpus_needed
from instructforge.llm.prices import cost_range
from instructforge.llm.templates import ChatTemplate, TemplateError, resolve_template
from instructforge.methods.filters import FilterConfig, Rejection, TextFilters
from instructforge.records import Record, instruction, new_record, rejected, stable_seed

PROMPTS = Path(__file__).resolve().parent.parent / "prompts" / "magpie"


class MagpieError(LLMError):
    """Magpie cannot run as configured (e.g. the backend has no raw text completion)."""


def chat_only_message(llm: LLM, detail: str = "") -> str:
    """Why Magpie cannot use a chat-only backend, and what to use instead."""
    return (
        f"Magpie needs raw text completion, but {llm.model_id or 'this backend'} only offers a "
        f"chat API{': ' + detail if detail else ''}. A chat API wraps every input in the "
        "model's chat template itself, so Magpie cannot send the bare pre-query template that "
        "makes the model write a user query. Use a server with /v1/completions (vLLM, "
        "llama.cpp server, SGLang, Ollama's OpenAI API) or the embedded model "
        "(--model embedded, or --model-path FILE.gguf); a chat-only model can still write the "
        "answers with --response-model."
    )


# -- configuration ----------------------------------------------------------------------------

@dataclass
class MagpieConfig:
    """Everything a Magpie run depends on (saved to config.yaml; no secrets).

    ``categories`` maps a category name (a template under ``prompts/magpie/categories/`` or
    ``category_dir``) to its weight; each conversation draws one, deterministically.
    """

    llm: ModelConfig = field(default_factory=ModelConfig)
    response_llm: ModelConfig | None = None
    n: int = 100
    turns: int = 1
    template: str | None = None
    system_prompt: str | None = None
    use_default_system: bool = True
    categories: dict[str, float] = field(default_factory=dict)
    category_dir: str | None = None
    query_temperature: float = 1.0
    query_top_p: float = 1.0
    query_max_tokens: int = 256
    response_temperature: float = 0.0
    response_top_p: float = 1.0
    response_max_tokens: int = 512
    add_bos: bool = False
    seed: int = 0
    filters: FilterConfig = field(default_factory=FilterConfig)
    concurrency: int = 64
    shared_cache: str | None = None
    executor: str = "local"  # or "ray": conversations sharded over a Ray cluster
    shards: int | None = None
    max_cost: float | None = None  # dollars the run may spend at most (--max-cost)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field."""
        if self.n < 1:
            raise ValueError(f"n must be at least 1 (got {self.n})")
        if self.turns < 1:
            raise ValueError(f"turns must be at least 1 (got {self.turns})")
        for name, w in self.categories.items():
            if w <= 0:
                raise ValueError(f"category {name!r} has weight {w}; weights must be > 0")
        for name in self.categories:
            category_path(name, self.category_dir)  # raises when missing

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["filters"] = self.filters.describe()
        return d


# -- prompts (template files) -----------------------------------------------------------------

@lru_cache(maxsize=8)
def _env(extra_dir: str | None) -> Environment:
    dirs = [str(PROMPTS)] + ([extra_dir] if extra_dir else [])
    return Environment(loader=FileSystemLoader(dirs), undefined=StrictUndefined,
                       keep_trailing_newline=False)


def category_names(category_dir: str | None = None) -> list[str]:
    """Categories shipped in ``prompts/magpie/categories/`` plus those in ``category_dir``.

    >>> "math" in category_names()
    True
    """
    names = {p.stem for p in (PROMPTS / "categories").glob("*.jinja")}
    if category_dir:
        names |= {p.stem for p in Path(category_dir).glob("*.jinja")}
    return sorted(names)


def category_path(name: str, category_dir: str | None = None) -> Path:
    """The template file of a category (a user's folder wins over the shipped one)."""
    for base in ([Path(category_dir)] if category_dir else []) + [PROMPTS / "categories"]:
        p = base / f"{name}.jinja"
        if p.is_file():
            return p
    raise ValueError(
        f"unknown Magpie category {name!r}; known: {', '.join(category_names(category_dir))} "
        "(add your own as NAME.jinja in --category-dir)"
    )


def render_prompt(name: str, category_dir: str | None = None, **values: Any) -> str:
    """Render ``prompts/magpie/NAME.jinja`` (or a user's category file), stripped."""
    env = _env(str(Path(category_dir).resolve()) if category_dir else None)
    try:
        if name.startswith("categories/") and category_dir:
            p = category_path(name.split("/", 1)[1], category_dir)
            return env.from_string(p.read_text(encoding="utf-8")).render(**values).strip()
        return env.get_template(f"{name}.jinja").render(**values).strip()
    except TemplateNotFound as e:
        raise ValueError(f"Magpie prompt template {e.name!r} not found") from e


def system_prompt_for(cfg: MagpieConfig, template: ChatTemplate, category: str | None) -> str | None:
    """The system prompt for one conversation: explicit > category > multi-round > default.

    None means the chat template's own default system prompt (or none, if it has none).
    """
    if cfg.system_prompt is not None:
        return cfg.system_prompt
    assistant = render_prompt("assistant", default_system=template.default_system or "")
    if category:
        return render_prompt(f"categories/{category}", cfg.category_dir, assistant=assistant)
    if cfg.turns > 1:
        return render_prompt("multi_round", assistant=assistant)
    return None


def pick_category(categories: dict[str, float], record_id: str, seed: int) -> str | None:
    """A weighted, deterministic draw of one category for a conversation.

    >>> pick_category({"math": 1.0}, "magpie-0", 0)
    'math'
    """
    if not categories:
        return None
    names = sorted(categories)
    cum: list[float] = []
    total = 0.0
    for n in names:
        total += categories[n]
        cum.append(total)
    u = stable_seed(seed, record_id, "category") / (2**31 - 1) * total
    return names[min(bisect.bisect_right(cum, u), len(names) - 1)]


# -- the method -------------------------------------------------------------------------------

@dataclass
class Magpie:
    """One Magpie job's state: models, template, filters. ``process`` is the engine step."""

    cfg: MagpieConfig
    llm: LLM
    template: ChatTemplate
    response_llm: LLM | None = None
    filters: TextFilters = field(init=False)

    def __post_init__(self) -> None:
        self.filters = TextFilters(self.cfg.filters, special_tokens=self.template.special_tokens)

    def rebuild_dedup_index(self, run: RunDir) -> int:
        """Teach the dedup index every instruction already kept in ``run`` (for resume)."""
        n = 0
        for rec in run.kept():
            self.filters.remember(instruction(rec), rec["id"])
            n += 1
        return n

    def query_params(self, record_id: str, turn: int) -> SamplingParams:
        c = self.cfg
        return SamplingParams(c.query_temperature, c.query_top_p, c.query_max_tokens,
                              stable_seed(c.seed, record_id, "query", turn),
                              self.template.query_stop)

    def response_params(self, record_id: str, turn: int) -> SamplingParams:
        c = self.cfg
        stop = self.template.response_stop if self.response_llm is None else ()
        return SamplingParams(c.response_temperature, c.response_top_p, c.response_max_tokens,
                              stable_seed(c.seed, record_id, "response", turn), stop)

    async def process(self, record: Record, ctx: Context) -> list[Record]:
        """Synthesise one conversation (``cfg.turns`` query/answer pairs) or say why not."""
        rid = record["id"]
        c = self.cfg
        category = pick_category(c.categories, rid, c.seed)
        system = system_prompt_for(c, self.template, category)
        messages: list[dict[str, str]] = []
        meta: dict[str, Any] = {
            "template": self.template.name,
            "model": self.llm.model_id,
            "response_model": (self.response_llm or self.llm).model_id,
            "turns": [],
        }
        if category:
            meta["category"] = category
        if system is not None:
            meta["system_prompt"] = system

        def drop(stage: str, r: Rejection) -> list[Record]:
            rec = new_record(rid, method="magpie", messages=messages, metadata=meta)
            return [rejected(rec, stage=stage, rule=r.rule, reason=r.reason, evidence=r.evidence)]

        kw = {"system": system, "use_default_system": c.use_default_system, "bos": c.add_bos}
        for turn in range(1, c.turns + 1):
            suffix = "" if c.turns == 1 else f" (turn {turn})"
            prompt = self.template.query_prompt(messages, **kw)
            q = await ctx.complete(self.llm, prompt, self.query_params(rid, turn), step="query")
            query = q.text.strip()
            messages.append({"role": "user", "content": query})
            t_meta = {"query_finish_reason": q.finish_reason, "query_tokens": q.completion_tokens}
            meta["turns"].append(t_meta)
            if r := self.filters.check(query, field="instruction" + suffix,
                                       finish_reason=q.finish_reason):
                return drop("query", r)
            # Checked early to spare the answer; checked again (and recorded) when kept.
            if turn == 1 and (r := self.filters.check_duplicate(query, exclude=rid)):
                return drop("dedup", r)
            a = await self._answer(ctx, rid, turn, messages, system)
            answer = a.text.strip()
            messages.append({"role": "assistant", "content": answer})
            t_meta.update(response_finish_reason=a.finish_reason,
                          response_tokens=a.completion_tokens)
            if r := self.filters.check(answer, field="response" + suffix,
                                       finish_reason=a.finish_reason):
                return drop("response", r)
        if r := self.filters.keep_unique(messages[0]["content"], rid):
            return drop("dedup", r)
        return [new_record(rid, method="magpie", messages=messages, metadata=meta)]

    async def _answer(self, ctx: Context, rid: str, turn: int,
                      messages: list[dict[str, str]], system: str | None) -> Any:
        params = self.response_params(rid, turn)
        if self.response_llm is not None:
            # Another model answers through its own chat API (its template is its business).
            chat = ([{"role": "system", "content": system}] if system else []) + messages
            return await ctx.chat(self.response_llm, chat, params, step="response")
        prompt = self.template.response_prompt(
            messages, system=system, use_default_system=self.cfg.use_default_system,
            bos=self.cfg.add_bos)
        return await ctx.complete(self.llm, prompt, params, step="response")


async def prepare(cfg: MagpieConfig, llm: LLM, ctx: Context | None = None) -> ChatTemplate:
    """Check ``llm`` can do raw completion and find its chat template (before any record).

    The check is a one-token completion made through ``ctx`` (the run's request cache), so
    a rerun finds it there and sends nothing. Raises :class:`MagpieError` with the reason
    and the alternative when the backend is chat-only (it says so, or its server rejects
    ``/v1/completions``).
    """
    if not llm.supports_completion:
        raise MagpieError(chat_only_message(llm))
    ctx = ctx or Context(None)
    try:
        template = await resolve_template(cfg.template, llm)
        # One token proves the endpoint exists before hundreds of records fail on it.
        await ctx.complete(llm, template.pre_query_template(bos=cfg.add_bos),
                           SamplingParams(temperature=0.0, max_tokens=1, seed=0), step="probe")
    except TemplateError as e:
        raise MagpieError(str(e)) from e
    except RawCompletionUnsupported as e:
        raise MagpieError(chat_only_message(llm, str(e))) from e
    finally:
        await llm.release_loop()  # this event loop ends here; the job opens its own
    return template


def magpie(
    run_dir: str | Path,
    config: MagpieConfig | None = None,
    *,
    api_key: str | None = None,
    llm: LLM | None = None,
    response_llm: LLM | None = None,
    progress: bool = True,
) -> JobResult:
    """Synthesise ``config.n`` conversations into ``run_dir`` (rerun to resume).

    ``llm`` / ``response_llm`` override the models built from the config (tests, notebooks;
    local executor only).
    """
    cfg = config or MagpieConfig()
    cfg.validate()
    if (llm is not None or response_llm is not None) and cfg.executor != "local":
        raise ValueError("llm= objects cannot travel to Ray workers; give model specs")
    return Job(
        "magpie",
        (new_record(f"magpie-{i}", method="magpie") for i in range(cfg.n)),
        functools.partial(_build, cfg, api_key, llm=llm, response_llm=response_llm),
        config=cfg.describe(),
        total=cfg.n,
        concurrency=cfg.concurrency,
        shared_cache=cfg.shared_cache,
        executor=cfg.executor,
        shards=cfg.shards,
        max_cost=cfg.max_cost,
        num_gpus=gpus_needed(cfg.llm, cfg.response_llm),
        union_filter=_across_shards(cfg),
    ).run(run_dir, progress=progress)


def magpie_job(
    cfg: MagpieConfig, api_key: str | None, run: RunDir, *,
    llm: LLM | None = None, response_llm: LLM | None = None,
) -> tuple[Magpie, list[LLM]]:
    """Build the models, check raw completion, find the template, and rebuild the dedup index
    from ``run``: a job ready to process records. Module-level so a Ray worker can build it."""
    llm = llm or cfg.llm.build(api_key, run.batches)
    if response_llm is None and cfg.response_llm is not None:
        response_llm = cfg.response_llm.build(api_key, run.batches)
    cache = RequestCache(run.cache)
    shared = RequestCache(Path(cfg.shared_cache)) if cfg.shared_cache else None
    try:
        template = asyncio.run(prepare(cfg, llm, Context(cache, shared)))
    finally:
        cache.close()
        if shared is not None:
            shared.close()
    job = Magpie(cfg, llm, template, response_llm)
    job.rebuild_dedup_index(run)
    return job, [m for m in (llm, response_llm) if m is not None]


def _build(cfg: MagpieConfig, api_key: str | None, run: RunDir, *,
           llm: LLM | None = None, response_llm: LLM | None = None) -> Built:
    job, llms = magpie_job(cfg, api_key, run, llm=llm, response_llm=response_llm)
    return Built(job.process, llms, {"chat_template": job.template.describe()})


def _across_shards(cfg: MagpieConfig) -> Callable[[Record], Record | None]:
    """Sharded runs: each shard deduplicates its own queries as it goes; the union then
    drops queries another shard already kept."""
    across = TextFilters(cfg.filters)

    def dedup(rec: Record) -> Record | None:
        if r := across.keep_unique(instruction(rec), rec["id"]):
            return rejected(rec, stage="dedup", rule=r.rule,
                            reason=f"{r.reason} (kept by another shard)", evidence=r.evidence)
        return None

    return dedup


def estimate(cfg: MagpieConfig) -> dict[str, Any]:
    """What a run would cost, without calling anything (for ``--dry-run``)."""
    cfg.validate()
    calls = cfg.n * cfg.turns * 2
    return {
        "conversations": cfg.n,
        "turns": cfg.turns,
        "llm_calls_max": calls,
        "completion_tokens_max": cfg.n * cfg.turns
        * (cfg.query_max_tokens + cfg.response_max_tokens),
        # Prompts: the pre-query template, then the conversation so far (~300 tokens a turn).
        "cost_usd": cost_range([
            (cfg.llm.resolve_price(), cfg.n * cfg.turns, 300 * cfg.turns, cfg.query_max_tokens),
            ((cfg.response_llm or cfg.llm).resolve_price(), cfg.n * cfg.turns,
             300 * cfg.turns, cfg.response_max_tokens),
        ]),
        **cfg.llm.batches(cfg.n, cfg.turns * 2),  # a query and an answer a turn
        "template": cfg.template or "auto (read from the model's chat template)",
        "categories": ", ".join(f"{k}:{v:g}" for k, v in cfg.categories.items()) or "none",
    }
