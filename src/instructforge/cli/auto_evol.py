"""``instructforge auto-evol``: Auto Evol-Instruct, an LLM that optimizes the evolving method,
then Evol-Instruct over the whole dataset with the best method found."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from instructforge.cli.common import (
    ApiKeyOpt,
    BaseUrlOpt,
    BatchOpt,
    BatchPollOpt,
    BatchWindowOpt,
    ColumnOpt,
    ConfigOpt,
    DryRunOpt,
    LimitOpt,
    MaxConcurrencyOpt,
    MaxCostOpt,
    MaxRetriesOpt,
    PriceOpt,
    ProgressOpt,
    RpmOpt,
    SharedCacheOpt,
    SkipInvalidOpt,
    TimeoutOpt,
    TpmOpt,
    app,
    console,
    exit_if_incomplete,
    handle_errors,
    in_flight,
    out,
    positive,
    print_plan,
    print_usage,
)
from instructforge.cli.evolve import print_summary
from instructforge.llm.config import ModelConfig
from instructforge.methods import eliminate as el
from instructforge.methods.auto_evol import (
    PAPER_FAILURE_TYPES,
    AutoEvolConfig,
    AutoEvolError,
    EvolvingMethod,
    FailureConfig,
    SearchResult,
    auto_evolve,
    estimate,
    evol_config,
)
from instructforge.methods.evol_instruct import read_summary

_SPEC_HELP = ("Model spec: 'embedded' (SmolLM2-135M on CPU, a smoke-test model), "
              "'embedded:qwen2.5-coder-1.5b' (stronger, CPU), a .gguf path, 'openai:MODEL@URL', "
              "'openai:MODEL' (OPENAI_BASE_URL), or a model name on --base-url.")
_RULES = (*el.ALL_RULES, *PAPER_FAILURE_TYPES)


@app.command("auto-evol")
@handle_errors
def auto_evol_cmd(
    input: Annotated[
        str, typer.Argument(help="Seed instructions: JSONL, JSON, Parquet or CSV file, a saved "
                            "HF dataset folder, or hf:NAME[:split].")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory (resumable).")],
    config: ConfigOpt = None,
    steps: Annotated[int, typer.Option("--steps", "-T", min=1, help="Method optimization steps.")
                     ] = 3,
    patience: Annotated[
        int, typer.Option(min=0, help="Stop after this many steps in a row without a better method "
                          "(0: never stop early).")
    ] = 2,
    candidates: Annotated[
        int, typer.Option("--candidates", "-m", min=1, help="Candidate methods sampled per step.")
    ] = 3,
    trajectory_steps: Annotated[
        int, typer.Option("--trajectory-steps", "-l", min=1, help="Evolutions per trajectory.")
    ] = 2,
    batch_size: Annotated[
        int,
        typer.Option(min=1, help="Instructions per mini-batch whose trajectories are analysed."),
    ] = 3,
    dev_size: Annotated[
        int, typer.Option(min=1, help="Held-out instructions on which failure rates are measured.")
    ] = 10,
    rounds: Annotated[
        int, typer.Option(min=0, help="Evol-Instruct rounds over the whole dataset with the best "
                          "method (0: search only).")
    ] = 1,
    initial_method: Annotated[
        Path | None,
        typer.Option("--initial-method", help="Method template to start from (a {% block "
                     "method %}, then the answer format and {{ instruction }}); default: the "
                     "universal initial method.", dir_okay=False),
    ] = None,
    seed: Annotated[int, typer.Option(help="Run seed: sampling, dev set and mini-batches.")] = 0,
    model: Annotated[
        str | None, typer.Option("--model", help="Model for every role (evolving, optimizing, "
                                 "answering, judging); a role option overrides it. "
                                 + _SPEC_HELP + " [default: embedded]", show_default=False)
    ] = None,
    evol_model: Annotated[
        str | None, typer.Option("--evol-model", help="Model that evolves instructions (same "
                                 "spec forms; default: --model).")
    ] = None,
    optimizer_model: Annotated[
        str | None, typer.Option("--optimizer-model", help="Model that analyses trajectories "
                                 "and rewrites the method (default: --model).")
    ] = None,
    response_model: Annotated[
        str | None, typer.Option("--response-model", help="Model that answers evolved "
                                 "instructions (default: --model, else the evol model).")
    ] = None,
    judge_model: Annotated[
        str | None, typer.Option("--judge-model", help="Equal / Not Equal judge (default: "
                                 "--model, else the evol model).")
    ] = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    max_concurrency: MaxConcurrencyOpt = None,
    timeout: TimeoutOpt = None,
    max_retries: MaxRetriesOpt = None,
    price: PriceOpt = None,
    max_cost: MaxCostOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    batch: BatchOpt = False,
    batch_poll: BatchPollOpt = 30.0,
    batch_window: BatchWindowOpt = 2.0,
    rules: Annotated[
        str, typer.Option("--rules", help="Elimination rules, in the search and the final pass "
                          "alike: 'all' (the paper's four plus our checks) or 'paper'.")
    ] = "all",
    disable_rule: Annotated[
        list[str] | None,
        typer.Option("--disable-rule", help="Switch a failure rule off (repeatable): "
                     + ", ".join(_RULES) + "."),
    ] = None,
    evol_temperature: Annotated[
        float, typer.Option(min=0.0, help="Evolving sampling temperature.")
    ] = 0.7,
    evol_max_tokens: Annotated[
        int, typer.Option(min=1, help="Cap on the evolving method's answer (all its sections).")
    ] = 192,
    optimizer_temperature: Annotated[
        float,
        typer.Option(min=0.0, help="Optimizer sampling temperature (the m candidates differ)."),
    ] = 0.7,
    optimizer_max_tokens: Annotated[int, typer.Option(min=1, help="Cap on a rewritten method.")
                                    ] = 384,
    analysis_max_tokens: Annotated[
        int, typer.Option(min=1, help="Cap on one trajectory's feedback.")
    ] = 128,
    temperature: Annotated[float, typer.Option(min=0.0, help="Answer sampling temperature.")
                           ] = 0.7,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Answer length cap.")
                          ] = 128,
    judge_max_tokens: Annotated[int, typer.Option(min=1, help="Judge answer length cap.")] = 16,
    top_p: Annotated[float, typer.Option("--top-p", max=1.0, callback=positive,
                                         help="Nucleus sampling (> 0).")] = 1.0,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Seed chains in flight (final evolution).")
    ] = 64,
    column: ColumnOpt = "instruction",
    limit: LimitOpt = None,
    skip_invalid: SkipInvalidOpt = False,
    shared_cache: SharedCacheOpt = None,
    dry_run: DryRunOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Optimize the evolving method with an LLM, then evolve the dataset with the best one.

    Each step evolves a mini-batch for -l steps with the current method, has the optimizer analyse the trajectories and rewrite the method -m times, and keeps the candidate with the lowest failure rate on the dev set if it beats the current method. Every method version, feedback and failure rate is saved under RUN_DIR/methods/.

    Example: [bold]instructforge auto-evol examples/seeds.jsonl -o runs/auto --steps 2 -m 3 --dev-size 10[/bold]
    """
    disabled = set(disable_rule or [])
    unknown = disabled - set(_RULES)
    if unknown:
        raise AutoEvolError(f"unknown rule(s) {', '.join(sorted(unknown))}; "
                            f"rules: {', '.join(_RULES)}")
    if rules not in el.PRESETS:
        raise AutoEvolError(f"unknown rule set {rules!r}; choose one of: "
                            f"{', '.join(el.PRESETS)}")

    def role(spec: str | None) -> ModelConfig:
        return ModelConfig(spec or model or "embedded", base_url, None, max_concurrency,
                           timeout, max_retries, price=price, rpm=rpm, tpm=tpm, batch=batch,
                           batch_poll=batch_poll, batch_window=batch_window)

    if initial_method is not None:
        EvolvingMethod.load(initial_method)  # a bad file fails before any call
    # What the search shares with Evol-Instruct (and the final pass runs) ...
    evol = evol_config(
        evol_llm=role(evol_model),
        # Without --model, the answering and judging roles follow --evol-model.
        **({"response_llm": role(response_model)} if response_model or model else {}),
        **({"judge_llm": role(judge_model)} if judge_model or model else {}),
        rounds=rounds, seed=seed,
        elimination=el.EliminationConfig.preset(
            rules, [r for r in disabled if r in el.ALL_RULES]),
        evol_temperature=evol_temperature, evol_max_tokens=evol_max_tokens,
        response_temperature=temperature, response_max_tokens=max_tokens,
        judge_max_tokens=judge_max_tokens, top_p=top_p, column=column,
        skip_invalid=skip_invalid, limit=limit, concurrency=in_flight(concurrency, batch),
        shared_cache=shared_cache, max_cost=max_cost,
    )
    # ... and what only the search has.
    cfg = AutoEvolConfig(
        evol=evol,
        optimizer_llm=role(optimizer_model),
        steps=steps, patience=patience, candidates=candidates,
        trajectory_steps=trajectory_steps, batch_size=batch_size, dev_size=dev_size,
        initial_method=str(initial_method) if initial_method else None,
        failures=FailureConfig(**{r: r not in disabled for r in PAPER_FAILURE_TYPES}),
        optimizer_temperature=optimizer_temperature,
        optimizer_max_tokens=optimizer_max_tokens, analysis_max_tokens=analysis_max_tokens,
    )
    cfg.check()
    if dry_run:
        print_plan(estimate(input, cfg))
        return
    result = auto_evolve(input, output, cfg, api_key=api_key, progress=progress,
                         log=lambda msg: console.print(msg, highlight=False))
    print_search(result.search)
    console.print(f"method history: {Path(output) / 'methods'}", highlight=False)
    if result.evolution is not None:
        print_usage(result.evolution.usage)
        print_summary(read_summary(output))
        console.print(result.evolution.summary(), highlight=False)
        exit_if_incomplete(result.evolution)


def print_search(found: SearchResult) -> None:
    """One row per step: the winner, its failure rate, and every candidate's rate."""
    t = Table(title="Auto Evol-Instruct: method search (dev-set failure rate)")
    for col in ("step", "winner", "failure rate", "improved", "candidates"):
        t.add_column(col, justify="left" if col in ("winner", "candidates") else "right")
    for rec in found.steps:
        cands = ", ".join(
            f"{c['name'].removeprefix('candidate_')}: "
            + ("none" if c["failure_rate"] is None else f"{c['failure_rate']:.2f}")
            for c in rec.candidates
        )
        t.add_row(str(rec.step), rec.winner, f"{rec.failure_rate:.3f}",
                  "yes" if rec.improved else "", cands or "-")
    out.print(t)
    console.print(f"best: step {found.best.step} ({found.best.method}), failure rate "
                  f"{found.best.failure_rate:.3f}; {found.stopped}", highlight=False)
