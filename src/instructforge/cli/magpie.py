"""``instructforge magpie``: instruction data from an aligned model with no seeds (Magpie)."""

from __future__ import annotations

from collections import Counter
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
    ConfigOpt,
    DryRunOpt,
    ExecutorOpt,
    MaxConcurrencyOpt,
    MaxCostOpt,
    MaxRetriesOpt,
    ModelOpt,
    ModelPathOpt,
    PriceOpt,
    ProgressOpt,
    RpmOpt,
    ShardsOpt,
    SharedCacheOpt,
    TimeoutOpt,
    TpmOpt,
    app,
    console,
    exit_if_incomplete,
    handle_errors,
    in_flight,
    positive,
    print_error,
    print_plan,
    print_samples,
    print_usage,
)
from instructforge.dedup import NEAR_DUP_THRESHOLD
from instructforge.engine import RunDir
from instructforge.llm.config import ModelConfig
from instructforge.llm.templates import template_names
from instructforge.methods.filters import FilterConfig
from instructforge.methods.magpie import MagpieConfig, category_names, estimate, magpie

FILTER_SWITCHES = ("length", "incomplete", "repetition", "leakage", "language", "exact-dedup",
                   "near-dedup")


def parse_categories(values: list[str]) -> dict[str, float]:
    """``["math:3", "coding"]`` -> ``{"math": 3.0, "coding": 1.0}``.

    >>> parse_categories(["math:3", "coding"])
    {'math': 3.0, 'coding': 1.0}
    """
    mix: dict[str, float] = {}
    for v in values:
        name, _, weight = str(v).partition(":")
        try:
            mix[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise typer.BadParameter(
                f"--category {v!r}: the weight after ':' must be a number") from None
    return mix


def build_filters(disable: list[str], languages: str, min_chars: int, max_chars: int,
                  near_dup_threshold: float) -> FilterConfig:
    """A :class:`FilterConfig` from the command's filter options."""
    unknown = [d for d in disable if d not in FILTER_SWITCHES]
    if unknown:
        raise typer.BadParameter(f"--disable-filter {unknown[0]!r}: choose from "
                                 f"{', '.join(FILTER_SWITCHES)}")
    if max_chars < min_chars:
        raise typer.BadParameter(f"--max-chars {max_chars} is below --min-chars {min_chars}")
    langs = tuple(x.strip() for x in languages.split(",") if x.strip())
    off = set(disable)
    return FilterConfig(
        length="length" not in off,
        min_instruction_chars=min_chars,
        max_instruction_chars=max_chars,
        incomplete="incomplete" not in off,
        repetition="repetition" not in off,
        leakage="leakage" not in off,
        languages=None if "language" in off or langs in ((), ("any",)) else langs,
        exact_dedup="exact-dedup" not in off,
        near_dedup="near-dedup" not in off,
        near_dup_threshold=near_dup_threshold,
    )


@app.command("magpie")
@handle_errors
def magpie_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory (resumable).")],
    config: ConfigOpt = None,
    n: Annotated[int, typer.Option("-n", "--num", min=1, help="Conversations to synthesise.")
                 ] = 100,
    turns: Annotated[int, typer.Option(min=1, help="User/assistant pairs per conversation.")
                     ] = 1,
    model: ModelOpt = "embedded",
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    model_path: ModelPathOpt = None,
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
    template: Annotated[
        str | None,
        typer.Option("--template", help="Chat template: a family name ("
                     + ", ".join(template_names()) + "), or a .gguf / tokenizer_config.json / "
                     "tokenizer folder / .jinja file. Default: read from the model's server."),
    ] = None,
    response_model: Annotated[
        str | None,
        typer.Option("--response-model", help="Another model writes the answers, through its "
                     "chat API (same spec forms as --model)."),
    ] = None,
    category: Annotated[
        list[str] | None,
        typer.Option("--category", "-c", help="Steer queries to a category (NAME or NAME:WEIGHT; "
                     "repeat for a weighted mix). Shipped: " + ", ".join(category_names()) + "."),
    ] = None,
    category_dir: Annotated[
        str | None,
        typer.Option("--category-dir", help="Folder of your own category prompts (NAME.jinja)."),
    ] = None,
    system_prompt: Annotated[
        str | None,
        typer.Option("--system-prompt", help="System prompt before the pre-query template "
                     "(replaces the model's default and any category)."),
    ] = None,
    default_system: Annotated[
        bool,
        typer.Option("--default-system/--no-default-system", help="Put the chat template's own "
                     "default system prompt before the pre-query (small models need it)."),
    ] = True,
    query_temperature: Annotated[float, typer.Option(min=0.0, help="Sampling for queries.")
                                 ] = 1.0,
    query_top_p: Annotated[float, typer.Option(max=1.0, callback=positive,
                                               help="Nucleus sampling for queries (> 0).")] = 1.0,
    query_max_tokens: Annotated[int, typer.Option(min=1, help="Query length cap.")] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling for answers (0: greedy).")
                           ] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", max=1.0, callback=positive,
                                         help="Nucleus sampling for answers (> 0).")] = 1.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Answer length cap.")
                          ] = 512,
    add_bos: Annotated[
        bool,
        typer.Option("--add-bos/--no-add-bos", help="Send the BOS token text (servers usually "
                     "add it themselves)."),
    ] = False,
    language: Annotated[
        str, typer.Option("--language", help="Allowed languages, comma-separated ISO codes "
                          "('any': no language filter).")
    ] = "en",
    min_chars: Annotated[int, typer.Option(min=0, help="Shortest query kept (characters).")] = 10,
    max_chars: Annotated[int, typer.Option(min=1, help="Longest query kept (characters).")
                         ] = 2000,
    near_dup_threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="MinHash Jaccard at or above which a query "
                            "is a near-duplicate.")
    ] = NEAR_DUP_THRESHOLD,
    disable_filter: Annotated[
        list[str] | None,
        typer.Option("--disable-filter", help="Turn a filter off (repeatable): "
                     + ", ".join(FILTER_SWITCHES) + "."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Base seed; every call gets its own from it.")] = 0,
    concurrency: Annotated[int, typer.Option(min=1, help="Conversations in flight.")] = 64,
    shared_cache: SharedCacheOpt = None,
    executor: ExecutorOpt = "local",
    shards: ShardsOpt = None,
    show: Annotated[int, typer.Option(min=0, help="Sample conversations to print at the end.")
                    ] = 3,
    dry_run: DryRunOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Synthesise instruction/response conversations from the model's own chat template.

    Example: [bold]instructforge magpie -n 50 -o runs/magpie[/bold]
    """
    try:
        cfg = MagpieConfig(
            llm=ModelConfig(model, base_url, model_path, max_concurrency, timeout, max_retries,
                            price=price, rpm=rpm, tpm=tpm, batch=batch,
                           batch_poll=batch_poll, batch_window=batch_window),
            response_llm=(ModelConfig(response_model, timeout=timeout, max_retries=max_retries,
                                      price=price, rpm=rpm, tpm=tpm, batch=batch,
                           batch_poll=batch_poll, batch_window=batch_window)
                          if response_model else None),
            n=n,
            turns=turns,
            template=template,
            system_prompt=system_prompt,
            use_default_system=default_system,
            categories=parse_categories(category or []),
            category_dir=category_dir,
            query_temperature=query_temperature,
            query_top_p=query_top_p,
            query_max_tokens=query_max_tokens,
            response_temperature=temperature,
            response_top_p=top_p,
            response_max_tokens=max_tokens,
            add_bos=add_bos,
            seed=seed,
            filters=build_filters(disable_filter or [], language, min_chars, max_chars,
                                  near_dup_threshold),
            concurrency=in_flight(concurrency, batch),
            shared_cache=shared_cache,
            executor=executor,
            shards=shards,
        max_cost=max_cost,
        )
        if dry_run:
            print_plan({"model": model if not base_url else f"{model} @ {base_url}",
                        **estimate(cfg)})
            return
        result = magpie(output, cfg, api_key=api_key, progress=progress)
    except ValueError as e:  # bad settings (categories, counts, templates)
        print_error(e)
        raise typer.Exit(2) from None
    print_usage(result.usage)
    print_rejections(RunDir(output))
    print_samples(RunDir(output), show)
    console.print(result.summary(), highlight=False)
    exit_if_incomplete(result)


def print_rejections(run: RunDir) -> None:
    """Dropped conversations by stage and rule."""
    counts = Counter((r.get("rejection") or {}).get("stage", "?") + " / "
                     + (r.get("rejection") or {}).get("rule", "?") for r in run.dropped())
    if not counts:
        return
    t = Table(title="Rejected (rejected.jsonl)")
    t.add_column("stage / rule")
    t.add_column("count", justify="right")
    for k, v in counts.most_common():
        t.add_row(k, str(v))
    console.print(t)
