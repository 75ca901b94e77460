"""``instructforge evolve``: Evol-Instruct (WizardLM) over a file of seed instructions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
    ExecutorOpt,
    LimitOpt,
    MaxConcurrencyOpt,
    MaxCostOpt,
    MaxRetriesOpt,
    PriceOpt,
    ProgressOpt,
    RpmOpt,
    ShardsOpt,
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
    terminal_text,
)
from instructforge.llm.config import ModelConfig
from instructforge.methods import eliminate as el
from instructforge.methods.evol_instruct import (
    EvolConfig,
    EvolError,
    chain_records,
    estimate,
    parse_weights,
    read_summary,
)
from instructforge.methods.evol_instruct import evolve as run_evolve

_SPEC_HELP = ("Model spec: 'embedded' (SmolLM2-135M on CPU, a smoke-test model), "
              "'embedded:qwen2.5-coder-1.5b' (stronger, CPU), a .gguf path, 'openai:MODEL@URL', "
              "'openai:MODEL' (OPENAI_BASE_URL), or a model name on --base-url.")


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@app.command("evolve")
@handle_errors
def evolve_cmd(
    input: Annotated[
        str, typer.Argument(help="Seed instructions: JSONL, JSON, Parquet or CSV file, a saved "
                            "HF dataset folder, or hf:NAME[:split].")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory (resumable).")],
    config: ConfigOpt = None,
    rounds: Annotated[int, typer.Option(min=1, help="Evolution rounds per seed (the paper: 4).")
                      ] = 4,
    ops: Annotated[
        str | None,
        typer.Option("--ops", help="Comma-separated operations to use (default: all). Built in: "
                     "add_constraints, deepening, concretizing, increased_reasoning_steps, "
                     "complicating_input, in_breadth."),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option("--weights", help="Operation weights, e.g. 'in_breadth=2,deepening=0.5' "
                     "(others 1; default uniform)."),
    ] = None,
    ops_dir: Annotated[
        Path | None,
        typer.Option("--ops-dir", help="Folder of extra operation templates (NAME.jinja, using "
                     "{{ instruction }}); a file named like a built-in replaces it."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Run seed: operation choice and sampling.")] = 0,
    keep_seeds: Annotated[
        bool, typer.Option("--keep-seeds/--no-keep-seeds",
                           help="Also output each seed (answered if it has no answer).")
    ] = False,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model for every role (evolving, "
                                 "answering, judging); a role option overrides it. "
                                 + _SPEC_HELP + " [default: embedded]", show_default=False)
    ] = None,
    evol_model: Annotated[
        str | None, typer.Option("--evol-model", help="Model that evolves instructions (same "
                                 "spec forms; default: --model).")
    ] = None,
    response_model: Annotated[
        str | None, typer.Option("--response-model", help="Model that answers (default: "
                                 "--model).")
    ] = None,
    judge_model: Annotated[
        str | None, typer.Option("--judge-model", help="Equal / Not Equal judge (default: "
                                 "--model).")
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
        str, typer.Option("--rules", help="Elimination rules: 'all' (the paper's four plus our "
                          "checks: " + ", ".join(el.EXTRA_RULES) + ") or 'paper' (exactly the "
                          "paper's four).")
    ] = "all",
    disable_rule: Annotated[
        list[str] | None,
        typer.Option("--disable-rule", help="Switch an elimination rule off (repeatable): "
                     + ", ".join(el.ALL_RULES) + "."),
    ] = None,
    short_response_words: Annotated[
        int, typer.Option(min=0, help="Rule 2 fires on a refusal shorter than this many words.")
    ] = el.SHORT_RESPONSE_WORDS,
    evol_temperature: Annotated[
        float, typer.Option(min=0.0, help="Evolving sampling temperature.")
    ] = 0.7,
    evol_max_tokens: Annotated[
        int, typer.Option(min=1, help="Evolved instruction length cap.")
    ] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, help="Answer sampling temperature.")
                           ] = 0.7,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Answer length cap.")
                          ] = 512,
    judge_max_tokens: Annotated[int, typer.Option(min=1, help="Judge answer length cap.")] = 16,
    top_p: Annotated[float, typer.Option("--top-p", max=1.0, callback=positive,
                                         help="Nucleus sampling (> 0).")] = 1.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Seed chains in flight.")] = 64,
    speculative_answer: Annotated[
        bool, typer.Option("--speculative-answer/--no-speculative-answer",
                           help="Start a child's answer while the judge runs and drop it if "
                           "the child is eliminated: local response servers only (embedded, "
                           "127.0.0.1), never paid endpoints. Records are the same either way.")
    ] = True,
    column: ColumnOpt = "instruction",
    limit: LimitOpt = None,
    skip_invalid: SkipInvalidOpt = False,
    shared_cache: SharedCacheOpt = None,
    executor: ExecutorOpt = "local",
    shards: ShardsOpt = None,
    dry_run: DryRunOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Evolve seed instructions into harder and more varied ones, with answers (Evol-Instruct).

    Each round picks an operation, rewrites the instruction, answers it, and eliminates failed evolutions (kept in rejected.jsonl with the rule and its evidence); a failed evolution leaves its parent for the next round.

    Example: [bold]instructforge evolve examples/seeds.jsonl -o runs/demo --rounds 2[/bold]
    """
    try:
        elimination = el.EliminationConfig.preset(
            rules, disable_rule, short_response_words=short_response_words)
    except ValueError as e:
        raise EvolError(str(e)) from None

    def role(spec: str | None) -> ModelConfig:
        return ModelConfig(spec or model or "embedded", base_url, None, max_concurrency,
                           timeout, max_retries, price=price, rpm=rpm, tpm=tpm, batch=batch,
                           batch_poll=batch_poll, batch_window=batch_window)

    cfg = EvolConfig(
        evol_llm=role(evol_model),
        response_llm=role(response_model),
        judge_llm=role(judge_model),
        rounds=rounds,
        operations=_split(ops) or None,
        weights=parse_weights(weights),
        ops_dir=str(ops_dir) if ops_dir else None,
        seed=seed,
        keep_seeds=keep_seeds,
        elimination=elimination,
        evol_temperature=evol_temperature,
        evol_max_tokens=evol_max_tokens,
        response_temperature=temperature,
        response_max_tokens=max_tokens,
        judge_max_tokens=judge_max_tokens,
        top_p=top_p,
        column=column,
        skip_invalid=skip_invalid,
        limit=limit,
        concurrency=in_flight(concurrency, batch),
        speculative_answer=speculative_answer,
        shared_cache=shared_cache,
        executor=executor,
        shards=shards,
        max_cost=max_cost,
    )
    if dry_run:
        print_plan(estimate(input, cfg))
        return
    result = run_evolve(input, output, cfg, api_key=api_key, progress=progress)
    print_usage(result.usage)
    print_summary(read_summary(output))
    console.print(result.summary(), highlight=False)
    console.print(f"summary: {Path(output) / 'summary.json'}", highlight=False)
    exit_if_incomplete(result)


def print_summary(summary: dict[str, Any]) -> None:
    """The end-of-run tables, narrow enough for an 80-column terminal: per round and
    operation, attempted / kept / eliminated / tokens; then per rule that fired (and the
    normalised and cut children), the count overall and per round. Every figure per round and
    operation is in summary.json."""
    t = Table(title="Evol-Instruct: per round and operation")
    for col in ("round", "operation", "tried", "kept", "elim.", "tokens"):
        t.add_column(col, justify="left" if col == "operation" else "right",
                     overflow="fold")

    def row(label_round: str, op: str, c: dict[str, Any], style: str | None = None) -> None:
        t.add_row(label_round, op, str(c["attempted"]), str(c["kept"]),
                  str(sum(c["eliminated"].values())),
                  f"{c['prompt_tokens'] + c['completion_tokens']:,}", style=style)

    for per_round in summary["per_round"]:
        r = per_round["round"]
        for c in summary["rows"]:
            if c["round"] == r:
                row(str(r), c["operation"], c)
        row(str(r), "all", per_round, style="bold")
    row("all", "all", summary["total"], style="bold green")
    out.print(t)

    # Only what happened gets a row: the rules that eliminated something (the paper's
    # numbered), then the children that needed normalisation and the answers cut short.
    rules = [r for r in (*el.ALL_RULES, el.EMPTY_INSTRUCTION) if summary["total"]["eliminated"].get(r)]
    labels = {r: f"{el.RULES.index(r) + 1} {r}" if r in el.RULES else r for r in rules}
    labels |= {"normalised": "normalised", "truncated_responses": "answer cut (--max-tokens)"}
    whys = [*rules, *(k for k in ("normalised", "truncated_responses") if summary["total"][k])]
    if not whys:
        return

    def count(c: dict[str, Any], why: str) -> int:
        return c["eliminated"].get(why, 0) if why in rules else c[why]

    by_rule = Table(title="Eliminated by rule, normalised, cut")
    by_rule.add_column("why", overflow="fold")
    by_rule.add_column("all", justify="right")
    by_rule.add_column("per round", overflow="fold")
    for why in whys:
        per = ", ".join(f"r{c['round']}: {count(c, why)}" for c in summary["per_round"]
                        if count(c, why))
        by_rule.add_row(labels[why], str(count(summary["total"], why)), per)
    out.print(by_rule)


def _short(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


@app.command("lineage")
@handle_errors
def lineage_cmd(
    run_dir: Annotated[Path, typer.Argument(help="An evolve run directory.")],
    record_id: Annotated[str, typer.Argument(help="A seed id or a child id (SEED-rN).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the record's lineage as JSON instead (a seed "
                           "id: every record of its chain).")
    ] = False,
    width: Annotated[int, typer.Option(min=10, help="Characters of each instruction shown.")
                     ] = 160,
) -> None:
    """Show how one seed's chain grew: every round's child, kept or eliminated, and why.

    Example: [bold]instructforge lineage runs/demo seed-04-r2[/bold]
    """
    records = chain_records(run_dir, record_id)
    if as_json:
        import json

        # A child id shows that record; a seed id, the whole chain.
        chosen = [r for r in records if r["id"] == record_id] or records
        for r in chosen:
            text = json.dumps({"id": r["id"], "status": r["status"], "lineage": r["lineage"],
                               "rejection": r.get("rejection")}, indent=2, ensure_ascii=False)
            out.print(terminal_text(text, markup=False), markup=False, highlight=False,
                      soft_wrap=True)
        return
    # Instructions, ids and reasons are model-written: control characters are shown escaped.
    seed = records[0]["lineage"]
    out.print(f"[bold]{terminal_text(seed['seed_id'])}[/bold] (seed): "
              f"{terminal_text(_short(seed['history'][0], width))}", highlight=False)
    for r in records:
        lin = r["lineage"]
        if lin["round"] == 0:
            continue
        norms = ", ".join(n["name"] for n in lin.get("normalisations") or [])
        if r["status"] == "rejected":
            rej = r["rejection"]
            verdict = (f"[red]eliminated[/red] {terminal_text(rej['rule'])}: "
                       f"{terminal_text(rej['reason'])}")
        else:
            verdict = "[green]kept[/green]"
        meta = r.get("metadata") or {}
        marks = [f"normalised: {norms}"] if norms else []
        if meta.get("truncated"):
            marks.append("answer cut at the token limit")
        if meta.get("evolution_truncated"):
            marks.append("evolution cut at the token limit")
        out.print(
            f"  round {lin['round']} [cyan]{terminal_text(lin['operation'])}[/cyan] "
            f"{terminal_text(r['id'])} <- {terminal_text(str(lin['parent_id']))}: {verdict}"
            + (f" ({'; '.join(marks)})" if marks else ""),
            highlight=False,
        )
        first = r["messages"][0]["content"] if r["messages"] else ""
        out.print(f"    {terminal_text(_short(first, width))}", highlight=False)
