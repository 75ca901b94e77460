"""Evol-Instruct (WizardLM, Xu et al. 2023; METHODS.md section 1).

Each seed starts a chain. One round of a chain reads like the paper's epoch::

    op = pick_operation(rng, operations, weights)      # five in-depth ops + in-breadth
    child = evolve(op, parent)                          # the evol LLM rewrites the parent
    answer = respond(child)                             # the response LLM answers it
    failed = eliminate(parent, child, answer)           # the four rules (+ our checks)
    parent = parent if failed else child                # a failed child leaves its parent

Chains are independent, so each is one ``process()`` call of the engine and no chain waits
for another (no round barrier). Every kept child carries its lineage (seed, parent, round,
operation, the instructions from the seed to it, the normalisations applied, the
elimination verdict); every eliminated child goes to ``rejected.jsonl`` with the rule and
its evidence. Operations are the ``.jinja`` files of ``prompts/evol/operations`` plus any
folder the user names.

>>> cfg = EvolConfig(rounds=2, operations=["add_constraints", "in_breadth"])
>>> result = evolve("examples/seeds.jsonl", "runs/demo", cfg)        # doctest: +SKIP
>>> summary = summarise("runs/demo")                                  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from instructforge import prompt_files
from instructforge.engine import Context, Job, JobResult, RunDir
from instructforge.errors import InstructForgeError
from instructforge.files import write_atomic
from instructforge.inputs import InputError, InstructionSource
from instructforge.llm import LLM, Completion, SamplingParams
from instructforge.llm.config import ModelConfig, build_roles, distinct, gpus_needed
from instructforge.llm.prices import cost_range
from instructforge.methods import eliminate as el
from instructforge.methods.respond import respond_to
from instructforge.prompt_files import prompt_env
from instructforge.records import (
    IdIndex,
    Record,
    instruction,
    new_record,
    rejected,
    stable_seed,
)

METHOD = "evol_instruct"
# Record `method` values this module writes: Auto Evol-Instruct runs its final pass here.
EVOLVED_METHODS = (METHOD, "auto_evol")
IN_DEPTH = ("add_constraints", "deepening", "concretizing", "increased_reasoning_steps",
            "complicating_input")
IN_BREADTH = ("in_breadth",)


class EvolError(InstructForgeError, ValueError):
    """A configuration problem (unknown operation, bad weight, bad template), explained."""


# --- operations ------------------------------------------------------------------------


def prompts_dir() -> Path:
    """The built-in ``prompts/evol`` folder (frame, judge, and ``operations/``)."""
    return prompt_files.prompts_dir("evol")


@dataclass(frozen=True)
class Operation:
    """One evolving operation: a template that turns a parent instruction into a prompt."""

    name: str
    path: Path
    template: jinja2.Template = field(repr=False, compare=False)

    def render(self, instruction_text: str) -> str:
        """The evolving prompt for ``instruction_text``.

        >>> load_operations()["deepening"].render("Why is the sky blue?")[-41:]
        'Why is the sky blue?\\n\\n#Rewritten Prompt#:'
        """
        return self.template.render(instruction=instruction_text).strip()


def _environment(extra: Path | None) -> jinja2.Environment:
    # The user's folder first, so their files can override ours and still
    # `{% extends "in_depth.jinja" %}` from the built-in frame.
    paths = [str(Path(p).absolute()) for p in (extra, prompts_dir() / "operations", prompts_dir())
             if p]
    return prompt_env(*paths)


def load_operations(ops_dir: str | Path | None = None) -> dict[str, Operation]:
    """The six built-in operations, plus (or overridden by) every ``*.jinja`` in ``ops_dir``.

    An operation's name is its file name without ``.jinja``. Its template gets one
    variable, ``instruction`` (the parent), and may extend ``in_depth.jinja``.

    >>> sorted(load_operations())
    ['add_constraints', 'complicating_input', 'concretizing', 'deepening', \
'in_breadth', 'increased_reasoning_steps']
    """
    extra = Path(ops_dir) if ops_dir else None
    if extra is not None and not extra.is_dir():
        raise EvolError(f"operations folder {str(extra)!r} does not exist")
    env = _environment(extra)
    files = {p.stem: p for p in sorted((prompts_dir() / "operations").glob("*.jinja"))}
    if extra is not None:
        found = sorted(extra.glob("*.jinja"))
        if not found:
            raise EvolError(f"operations folder {str(extra)!r} holds no .jinja files")
        files.update({p.stem: p for p in found})
    ops: dict[str, Operation] = {}
    for name, path in files.items():
        try:
            source = path.read_text(encoding="utf-8")
            variables = jinja2.meta.find_undeclared_variables(env.parse(source))
            template = env.get_template(path.name)
        except (OSError, UnicodeDecodeError, jinja2.TemplateError) as e:
            raise EvolError(f"{path}: cannot load operation template: {e}") from None
        # A frame that is extended supplies `instruction`; check the rendered text instead.
        probe = "\x00probe instruction\x00"
        try:
            rendered = template.render(instruction=probe)
        except jinja2.TemplateError as e:
            raise EvolError(f"{path}: cannot render operation template: {e}") from None
        if probe not in rendered:
            used = ", ".join(sorted(variables)) or "none"
            raise EvolError(
                f"{path}: an operation template must include {{{{ instruction }}}} "
                f"(variables it uses: {used})"
            )
        ops[name] = Operation(name, path, template)
    return ops


def select_operations(
    ops: dict[str, Operation], names: list[str] | None, weights: dict[str, float] | None
) -> tuple[list[str], list[float]]:
    """The chosen operation names and their weights (default uniform), checked.

    >>> select_operations(load_operations(), ["deepening", "in_breadth"], {"in_breadth": 3})
    (['deepening', 'in_breadth'], [1.0, 3.0])
    """
    chosen = list(names) if names else sorted(ops)
    unknown = [n for n in chosen if n not in ops]
    if unknown:
        raise EvolError(
            f"unknown operation(s): {', '.join(unknown)} (known: {', '.join(sorted(ops))})"
        )
    weights = weights or {}
    stray = [n for n in weights if n not in chosen]
    if stray:
        raise EvolError(f"weight given for operation(s) not selected: {', '.join(stray)}")
    w = [float(weights.get(n, 1.0)) for n in chosen]
    if any(x < 0 for x in w) or not any(x > 0 for x in w):
        raise EvolError("operation weights must be >= 0 with at least one > 0")
    return chosen, w


def pick_operation(rng: random.Random, names: list[str], weights: list[float]) -> str:
    """One operation, drawn with ``weights`` (the paper: uniform over the six)."""
    return rng.choices(names, weights=weights, k=1)[0]


def parse_weights(spec: str | None) -> dict[str, float]:
    """``"in_breadth=2,deepening=0.5"`` -> ``{"in_breadth": 2.0, "deepening": 0.5}``.

    >>> parse_weights("in_breadth=2, deepening=0.5")
    {'in_breadth': 2.0, 'deepening': 0.5}
    """
    out: dict[str, float] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise EvolError(f"bad weight {part.strip()!r}: write NAME=NUMBER") from None
    return out


# --- configuration -----------------------------------------------------------------------


@dataclass
class EvolConfig:
    """Everything a run depends on (saved as ``config.yaml``, secrets excluded)."""

    evol_llm: ModelConfig = field(default_factory=ModelConfig)
    response_llm: ModelConfig = field(default_factory=ModelConfig)
    judge_llm: ModelConfig = field(default_factory=ModelConfig)
    rounds: int = 4  # the paper's epochs
    operations: list[str] | None = None  # None: every loaded operation
    weights: dict[str, float] = field(default_factory=dict)
    ops_dir: str | None = None
    seed: int = 0
    keep_seeds: bool = False
    elimination: el.EliminationConfig = field(default_factory=el.EliminationConfig)
    evol_temperature: float = 0.7
    evol_max_tokens: int = 256
    response_temperature: float = 0.7
    response_max_tokens: int = 512
    judge_max_tokens: int = 16
    top_p: float = 1.0
    column: str = "instruction"
    skip_invalid: bool = False
    limit: int | None = None
    concurrency: int = 64
    # Start a child's answer while the judge decides whether to keep it, and throw the
    # answer away when the child is eliminated: on a local response server only (embedded,
    # loopback, in-process), never where tokens are paid for. Records are the same either way.
    speculative_answer: bool = True
    shared_cache: str | None = None
    executor: str = "local"  # or "ray": seed chains sharded over a Ray cluster
    shards: int | None = None
    max_cost: float | None = None  # dollars the run may spend at most (--max-cost)
    method: str = METHOD  # the records' `method` (Auto Evol-Instruct sets "auto_evol")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) for config.yaml."""
        return json.loads(json.dumps(asdict(self)))

    def evol_params(self) -> SamplingParams:
        return SamplingParams(self.evol_temperature, self.top_p, self.evol_max_tokens)

    def response_params(self) -> SamplingParams:
        return SamplingParams(self.response_temperature, self.top_p, self.response_max_tokens,
                              self.seed)

    def judge_params(self) -> SamplingParams:
        # Greedy: a verdict should not depend on sampling luck.
        return SamplingParams(0.0, 1.0, self.judge_max_tokens)


@dataclass
class Models:
    """The three roles' backends (they may be one and the same object)."""

    evol: LLM
    response: LLM
    judge: LLM

    @classmethod
    def build(cls, cfg: EvolConfig, api_key: str | None = None,
              journal: Path | None = None) -> Models:
        return cls(*build_roles([cfg.evol_llm, cfg.response_llm, cfg.judge_llm], api_key,
                                journal))

    def distinct(self) -> list[LLM]:
        return distinct([self.evol, self.response, self.judge])


# --- the loop ------------------------------------------------------------------------------


def _usage(out: Completion) -> dict[str, Any]:
    return {
        "model": out.model,
        "finish_reason": out.finish_reason,
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
    }


@dataclass
class _Member:
    """The chain's current pool member: the instruction the next round evolves."""

    id: str
    text: str
    history: list[str]


class EvolChain:
    """The per-seed process: ``await EvolChain(cfg, models)(seed_record, ctx)``."""

    def __init__(self, cfg: EvolConfig, models: Models) -> None:
        if cfg.rounds < 1:
            raise EvolError(f"rounds must be >= 1, got {cfg.rounds}")
        self.cfg = cfg
        self.models = models
        self.ops = load_operations(cfg.ops_dir)
        self.names, self.weights = select_operations(self.ops, cfg.operations, cfg.weights)
        self.speculate = cfg.speculative_answer and models.response.is_local()

    async def __call__(self, seed: Record, ctx: Context) -> list[Record]:
        cfg = self.cfg
        out: list[Record] = []
        if (cont := seed.get(CONTINUATION)) is not None:
            # A chain of a finished run, continued for the rounds added since (see
            # :func:`continuations`): the pool member is where it stopped.
            seed = {k: v for k, v in seed.items() if k != CONTINUATION} | {"id": cont["seed_id"]}
            member = _Member(cont["parent_id"], cont["history"][-1], cont["history"])
            first = cont["round"] + 1
        else:
            seed_text = instruction(seed)
            if cfg.keep_seeds:
                out.append(await self._seed_record(seed, ctx))
            member = _Member(seed["id"], seed_text, [seed_text])
            first = 1
        for round_no in range(first, cfg.rounds + 1):
            child, kept = await self.evolve_once(seed, member, round_no, ctx)
            out.append(child)
            if kept:
                member = _Member(child["id"], instruction(child), child["lineage"]["history"])
        return out

    async def _seed_record(self, seed: Record, ctx: Context) -> Record:
        rec = {
            **seed,
            "method": self.cfg.method,
            "lineage": {
                "seed_id": seed["id"], "parent_id": None, "round": 0, "operation": None,
                "history": [instruction(seed)], "normalisations": [], "elimination": None,
            },
        }
        if not any(m.get("role") == "assistant" for m in rec["messages"]):
            rec = await respond_to(rec, ctx, self.models.response, self.cfg.response_params(),
                                   step="respond")
        return rec

    async def evolve_once(
        self, seed: Record, parent: _Member, round_no: int, ctx: Context
    ) -> tuple[Record, bool]:
        """One round of one chain: returns the child record and whether it was kept."""
        cfg, models = self.cfg, self.models
        child_id = f"{seed['id']}-r{round_no}"
        # Seeded per (run seed, seed id, round): reproducible, and independent of the order
        # in which chains finish.
        rng = random.Random(stable_seed(cfg.seed, seed["id"], round_no, "operation"))
        op = pick_operation(rng, self.names, self.weights)

        prompt = self.ops[op].render(parent.text)
        evo = await ctx.chat(
            models.evol,
            [{"role": "user", "content": prompt}],
            cfg.evol_params().replace(seed=stable_seed(cfg.seed, child_id, "evolve")),
            step="evolve",
        )
        text, normalisations = el.normalise_instruction(evo.text)
        usage: dict[str, Any] = {"evolve": _usage(evo)}
        record = new_record(
            child_id,
            text,
            method=cfg.method,
            source=seed.get("source"),
            lineage={
                "seed_id": seed["id"],
                "parent_id": parent.id,
                "round": round_no,
                "operation": op,
                "history": [*parent.history, text],
                "normalisations": normalisations,
                "elimination": None,
            },
            metadata={
                "usage": usage,
                "raw_evolution": evo.text if normalisations else None,
                # An evolution cut at --evol-max-tokens may be an unfinished instruction.
                "evolution_truncated": evo.finish_reason == "length",
            },
        )

        def respond() -> Awaitable[Completion]:
            return ctx.chat(
                models.response,
                [{"role": "user", "content": text}],
                cfg.response_params().replace(seed=stable_seed(cfg.seed, child_id, "respond")),
                step="respond",
            )

        # With speculative answers, the answer starts with the first judge call (the cheap
        # rules have passed by then) and is cancelled if the child is eliminated.
        early: list[asyncio.Future[Completion]] = []

        def start_answer() -> None:
            if not early:
                early.append(asyncio.ensure_future(respond()))

        start = start_answer if self.speculate else None
        try:
            findings = await el.check_instruction(
                parent.text, text, self._judge(ctx, usage, start), cfg.elimination,
                normalisations=normalisations, truncated=evo.finish_reason == "length",
                operation=op,
            )
            failure = el.first_fired(findings)
            # Response generation, then the two response rules.
            reply = None if failure else await (early[0] if early else respond())
        finally:
            for t in early:
                if not t.done():
                    t.cancel()
                await asyncio.gather(t, return_exceptions=True)
        if reply is not None:
            answer = reply.text.strip()
            record["messages"].append({"role": "assistant", "content": answer})
            usage["respond"] = _usage(reply)
            # Answers cut at the token limit stay, marked, so users can drop or re-ask them.
            record["metadata"]["finish_reason"] = reply.finish_reason
            record["metadata"]["truncated"] = reply.finish_reason == "length"
            findings += el.check_response(answer, cfg.elimination,
                                          truncated=reply.finish_reason == "length")
            failure = el.first_fired(findings)

        record["lineage"]["elimination"] = {
            "kept": failure is None,
            "rule": failure.rule if failure else None,
            "findings": [f.to_dict() for f in findings],
        }
        if failure is not None:
            return rejected(record, stage="eliminate", rule=failure.rule, reason=failure.reason,
                            evidence=failure.evidence), False
        return record, True

    def _judge(self, ctx: Context, usage: dict[str, Any],
               on_call: Callable[[], object] | None = None) -> el.Judge:
        """The judge as :func:`eliminate.check_instruction` asks it: greedy, constrained to
        the question's choices; its calls' tokens add up in the child's ``usage["judge"]``.
        ``on_call`` runs as each question is asked."""

        async def ask(prompt: str, choices: tuple[str, ...]) -> str:
            if on_call is not None:
                on_call()
            out = await ctx.chat(
                self.models.judge,
                [{"role": "user", "content": prompt}],
                self.cfg.judge_params().replace(seed=self.cfg.seed, choices=choices),
                step="judge",
            )
            u = usage.setdefault("judge", {**_usage(out), "prompt_tokens": 0,
                                           "completion_tokens": 0, "calls": 0})
            u["prompt_tokens"] += out.prompt_tokens
            u["completion_tokens"] += out.completion_tokens
            u["calls"] += 1
            return out.text

        return ask


def evolve(
    input_path: str | Path,
    run_dir: str | Path,
    config: EvolConfig | None = None,
    *,
    models: Models | None = None,
    api_key: str | None = None,
    progress: bool = True,
    run_config: dict[str, Any] | None = None,
) -> JobResult:
    """Evolve every seed in ``input_path`` for ``config.rounds`` rounds into ``run_dir``.

    Resumable: rerunning the same call after a crash skips finished chains and replays the
    finished LLM calls of unfinished ones from the run's request cache. Writes
    ``summary.json`` at the end. ``config.yaml`` records ``config`` unless ``run_config``
    is given (Auto Evol-Instruct records its own config, which embeds this one).
    """
    cfg = config or EvolConfig()
    recorded = {"input": str(input_path), **(cfg.to_dict() if run_config is None
                                             else run_config)}
    ops = load_operations(cfg.ops_dir)
    select_operations(ops, cfg.operations, cfg.weights)
    source = InstructionSource(
        input_path, column=cfg.column, skip_invalid=cfg.skip_invalid, limit=cfg.limit
    )
    total = source.validate()  # bad config or input fails before any server starts
    if cfg.keep_seeds:
        check_seed_ids(source, cfg.rounds)
    run = RunDir(run_dir)
    ends = chain_ends(run, cfg.rounds) if run.has_outputs() and cfg.executor == "local" else {}
    if models is not None and cfg.executor != "local":
        raise EvolError("models= objects cannot travel to Ray workers; give model specs")
    result = Job(
        cfg.method,
        continuations(source, ends) if ends else source,
        functools.partial(evol_job, cfg, api_key, models=models),
        config=recorded,
        total=total,
        concurrency=cfg.concurrency,
        shared_cache=cfg.shared_cache,
        executor=cfg.executor,
        shards=cfg.shards,
        max_cost=cfg.max_cost,
        num_gpus=gpus_needed(cfg.evol_llm, cfg.response_llm, cfg.judge_llm),
        may_grow=("rounds",),
    ).run(run, progress=progress)
    write_summary(run_dir)
    return result


# The engine input that continues a finished chain: the seed record, with its id
# ``SEED-rK+`` (K: the chain's last round) and where the chain stopped under this key.
CONTINUATION = "continuation"


def chain_ends(run: RunDir, rounds: int) -> dict[str, dict[str, Any]]:
    """Where each finished chain of ``run`` stopped, for the chains with fewer than
    ``rounds`` rounds: seed id -> ``{"round", "parent_id", "history"}`` (the last round
    written, and the pool member the next round evolves: the last kept child, or the seed).

    A chain is finished when its seed is marked done; a chain cut by a crash is resumed
    from its seed as usual (its finished calls are in the cache), and a continuation cut by
    one is made again from the records.
    """
    done: set[str] = set()
    if run.done.exists():
        with run.done.open(encoding="utf-8") as f:
            done = {ln.rstrip("\n") for ln in f if ln.strip()}
    ends: dict[str, dict[str, Any]] = {}
    for rec in [*run.kept(), *run.dropped()]:
        lin = rec.get("lineage") or {}
        if rec.get("method") not in EVOLVED_METHODS or not lin.get("round") \
                or lin.get("seed_id") is None:
            continue  # seeds, invalid rows and inputs whose calls failed
        end = ends.setdefault(lin["seed_id"], {"round": 0, "parent_id": lin["seed_id"],
                                               "history": lin["history"][:1], "kept": 0})
        end["round"] = max(end["round"], lin["round"])
        if rec.get("status") != "rejected" and lin["round"] > end["kept"]:
            end.update(parent_id=rec["id"], history=lin["history"], kept=lin["round"])
    out = {}
    for seed_id, end in ends.items():
        if seed_id in done and end["round"] < rounds:
            out[seed_id] = {k: end[k] for k in ("round", "parent_id", "history")}
    return out


def continuations(seeds: Iterable[Record], ends: dict[str, dict[str, Any]]
                  ) -> Iterable[Record]:
    """``seeds``, each finished chain of ``ends`` as the input that continues it."""
    for seed in seeds:
        end = ends.get(seed["id"])
        if end is None or seed.get("status") == "rejected":
            yield seed
        else:
            yield {**seed, "id": f"{seed['id']}-r{end['round']}+",
                   CONTINUATION: {"seed_id": seed["id"], **end}}


PROMPT_TOKENS_APPROX = 400  # an evolving or judge template with an instruction in it


def estimate(input_path: str | Path, config: EvolConfig | None = None) -> dict[str, Any]:
    """What :func:`evolve` would do and cost at most, without calling anything (the CLI's
    ``--dry-run``). Checks the config and the input as :func:`evolve` does."""
    cfg = config or EvolConfig()
    names, _ = select_operations(load_operations(cfg.ops_dir), cfg.operations, cfg.weights)
    n = InstructionSource(input_path, column=cfg.column, skip_invalid=cfg.skip_invalid,
                          limit=cfg.limit).validate()
    judges = sum(getattr(cfg.elimination, r) for r in
                 (el.NO_INFORMATION_GAIN, el.NOT_AN_INSTRUCTION, el.LOST_THE_TASK))
    per_round = 1 + judges + 1  # evolve, judges, respond
    return {
        "input": str(input_path),
        "seeds": n,
        "rounds": cfg.rounds,
        "operations": ", ".join(names),
        "models": f"evol={cfg.evol_llm.model} response={cfg.response_llm.model} "
                  f"judge={cfg.judge_llm.model}",
        "llm_calls_at_most": n * cfg.rounds * per_round + (n if cfg.keep_seeds else 0),
        "completion_tokens_max": n * cfg.rounds * (
            cfg.evol_max_tokens + cfg.response_max_tokens + judges * cfg.judge_max_tokens
        ),
        # Prompts: an operation's template and the instruction, ~PROMPT_TOKENS_APPROX tokens.
        "cost_usd": cost_range([
            (cfg.evol_llm.resolve_price(), n * cfg.rounds, PROMPT_TOKENS_APPROX,
             cfg.evol_max_tokens),
            (cfg.response_llm.resolve_price(), n * cfg.rounds + (n if cfg.keep_seeds else 0),
             PROMPT_TOKENS_APPROX, cfg.response_max_tokens),
            (cfg.judge_llm.resolve_price(), n * cfg.rounds * judges, PROMPT_TOKENS_APPROX,
             cfg.judge_max_tokens),
        ]),
        # In batch mode each step of each round is (at least) one batch.
        **cfg.evol_llm.batches(n, cfg.rounds * per_round),
    }


_CHILD_ID = re.compile(r"(.*)-r([1-9][0-9]*)")


def check_seed_ids(seeds: Iterable[Record], rounds: int) -> None:
    """Refuse seeds whose ids clash with the children's: with ``keep_seeds`` a seed is
    written under its own id beside its children ``SEED-r1``, ``SEED-r2``..., so seeds
    ``a`` and ``a-r1`` would both write ``a-r1``. Raises :class:`InputError` naming both.

    >>> check_seed_ids([new_record("a", "x", method="input"),
    ...                 new_record("a-r1", "y", method="input")], rounds=2)
    Traceback (most recent call last):
    ...
    instructforge.inputs.InputError: invalid input:
      seed id 'a-r1' is also the id of round 1 of seed 'a'; with --keep-seeds both would be written under it (rename one)
    """
    def where(rec: Record) -> str:
        src = rec.get("source") or {}
        return f"{src['file']}:{src['line']}: " if src.get("file") else ""

    problems: list[str] = []
    with IdIndex() as ids:
        for rec in seeds:
            if rec.get("status") != "rejected":
                ids.add(rec["id"], where(rec))
        for rec in seeds:
            m = _CHILD_ID.fullmatch(rec["id"])
            if rec.get("status") == "rejected" or not m or int(m[2]) > rounds \
                    or m[1] not in ids:
                continue
            at = ids.first_seen(m[1], "") or ""
            problems.append(
                f"{where(rec)}seed id {rec['id']!r} is also the id of round {m[2]} of seed "
                f"{m[1]!r}{f' ({at[:-2]})' if at else ''}; with --keep-seeds both would be "
                "written under it (rename one)")
    if problems:
        raise InputError(problems[:20], len(problems))


def evol_job(
    cfg: EvolConfig, api_key: str | None = None, run: RunDir | None = None,
    *, models: Models | None = None,
) -> tuple[EvolChain, list[LLM]]:
    """The per-chain process and its backends; module-level so a Ray worker can build it."""
    journal = run.batches if run is not None else None  # batch mode's record of batches
    chain = EvolChain(cfg, models or Models.build(cfg, api_key, journal))
    return chain, chain.models.distinct()


# --- summary -----------------------------------------------------------------------------

_TOKEN_STEPS = ("evolve", "judge", "respond")


def _blank() -> dict[str, Any]:
    return {"attempted": 0, "kept": 0, "eliminated": Counter(), "normalised": 0,
            "normalisations": Counter(), "truncated_responses": 0,
            "truncated_evolutions": 0, "judge_unreadable": 0,
            "prompt_tokens": 0, "completion_tokens": 0}


def summarise(run_dir: str | Path) -> dict[str, Any]:
    """Per round and per operation: attempted / kept / eliminated by rule / normalised /
    tokens, computed from the run's files (so it is right after any number of resumes).

    Tokens count every call a child needed, replayed from cache or not.
    """
    run = RunDir(run_dir)
    cells: dict[tuple[int, str], dict[str, Any]] = defaultdict(_blank)
    for rec in [*run.kept(), *run.dropped()]:
        lin = rec.get("lineage") or {}
        if rec.get("method") not in EVOLVED_METHODS or not lin.get("round"):
            continue  # seeds and invalid input rows
        c = cells[(lin["round"], lin["operation"])]
        c["attempted"] += 1
        if rec.get("status") == "rejected":
            c["eliminated"][rec["rejection"]["rule"]] += 1
        else:
            c["kept"] += 1
        norms = lin.get("normalisations") or []
        c["normalised"] += bool(norms)
        c["normalisations"].update(n["name"] for n in norms)
        meta = rec.get("metadata") or {}
        c["truncated_responses"] += bool(meta.get("truncated"))
        c["truncated_evolutions"] += bool(meta.get("evolution_truncated"))
        c["judge_unreadable"] += el.unreadable_verdicts(
            (lin.get("elimination") or {}).get("findings", []))
        for step in _TOKEN_STEPS:
            u = (meta.get("usage") or {}).get(step) or {}
            c["prompt_tokens"] += int(u.get("prompt_tokens") or 0)
            c["completion_tokens"] += int(u.get("completion_tokens") or 0)

    def merge(items: list[dict[str, Any]]) -> dict[str, Any]:
        out = _blank()
        for it in items:
            for k, v in it.items():
                out[k] = out[k] + v
        return out

    def plain(c: dict[str, Any]) -> dict[str, Any]:
        return {k: dict(sorted(v.items())) if isinstance(v, Counter) else v for k, v in c.items()}

    rows = [{"round": r, "operation": op, **plain(c)} for (r, op), c in sorted(cells.items())]
    rounds = sorted({r for r, _ in cells})
    per_round = [
        {"round": r, **plain(merge([c for (rr, _), c in cells.items() if rr == r]))}
        for r in rounds
    ]
    ops = sorted({op for _, op in cells})
    per_operation = [
        {"operation": op, **plain(merge([c for (_, o), c in cells.items() if o == op]))}
        for op in ops
    ]
    seeds_kept = sum(1 for rec in run.kept() if (rec.get("lineage") or {}).get("round") == 0)
    return {
        "rows": rows,
        "per_round": per_round,
        "per_operation": per_operation,
        "total": plain(merge(list(cells.values()))),
        "seeds_kept": seeds_kept,
    }


def write_summary(run_dir: str | Path) -> dict[str, Any]:
    """Compute :func:`summarise` and save it as ``RUN_DIR/summary.json``."""
    summary = summarise(run_dir)
    write_atomic(Path(run_dir) / "summary.json", summary)
    return summary


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """The ``summary.json`` :func:`evolve` wrote (computed again if it is missing)."""
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else summarise(run_dir)


def chain_records(run_dir: str | Path, record_id: str) -> list[Record]:
    """Every record of the chain ``record_id`` belongs to (a seed id or a child id), kept
    and eliminated, in round order (the seed first when it was kept).

    >>> [r["id"] for r in chain_records("runs/demo", "seed-04-r2")]  # doctest: +SKIP
    ['seed-04-r1', 'seed-04-r2']
    """
    run = RunDir(run_dir)
    records = [r for r in [*run.kept(), *run.dropped()] if r.get("method") in EVOLVED_METHODS]
    target = next((r for r in records if r["id"] == record_id), None)
    seed_id = (target["lineage"] or {}).get("seed_id") if target else record_id
    found = [r for r in records if (r.get("lineage") or {}).get("seed_id") == seed_id]
    if not found:
        raise EvolError(f"no Evol-Instruct record {record_id!r} in {run.root}")
    return sorted(found, key=lambda r: r["lineage"]["round"])
