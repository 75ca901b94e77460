"""``instructforge analyze`` (metrics + report.html) and ``instructforge filter`` (ratings
thresholds and dedup into a new run directory)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from instructforge.analysis.analyze import AnalyzeConfig, analyze, output_paths
from instructforge.analysis.dataset import load_dataset
from instructforge.analysis.filter import (
    DEDUP_KINDS,
    DatasetFilterConfig,
    filter_dataset,
)
from instructforge.analysis.judge import JudgeConfig
from instructforge.analysis.ratings import RATINGS
from instructforge.cli.common import (
    ApiKeyOpt,
    BaseUrlOpt,
    BatchOpt,
    BatchPollOpt,
    BatchWindowOpt,
    ConfigOpt,
    DryRunOpt,
    MaxConcurrencyOpt,
    ModelPathOpt,
    PriceOpt,
    ProgressOpt,
    RpmOpt,
    TimeoutOpt,
    TpmOpt,
    app,
    console,
    handle_errors,
    in_flight,
    out,
    print_error,
    print_plan,
)
from instructforge.dedup import EMBEDDING_THRESHOLD, NEAR_DUP_THRESHOLD
from instructforge.errors import InstructForgeError
from instructforge.llm.base import LLM

F = TypeVar("F", bound=Callable[..., Any])

SourceArg = Annotated[
    Path, typer.Argument(help="A run directory, or a .jsonl / .json / .parquet / .csv dataset.")
]
InstructionFieldOpt = Annotated[
    str | None, typer.Option("--instruction-field",
                             help="Column holding the instruction (default: auto-detect).")
]
ResponseFieldOpt = Annotated[
    str | None, typer.Option("--response-field",
                             help="Column holding the response (default: auto-detect).")
]
IdFieldOpt = Annotated[str | None, typer.Option("--id-field", help="Column holding a row id.")]
JudgeOpt = Annotated[
    str | None,
    typer.Option("--judge", help="LLM judge for ratings and tags: 'embedded', a .gguf path, "
                 "'openai:MODEL@URL', or a model name on --base-url. Omit to skip the judge."),
]
JudgeMaxTokensOpt = Annotated[
    int, typer.Option("--judge-max-tokens", min=1, help="Answer length cap for each judge call.")
]
JudgeConcurrencyOpt = Annotated[
    int, typer.Option("--judge-concurrency", min=1, help="Records judged at once.")
]
AnyRoleModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model for every LLM role; here the only one is the "
                 "judge, so this is --judge under the name the other commands use (--judge "
                 "overrides it)."),
]
EmbeddingModelOpt = Annotated[
    str | None, typer.Option("--embedding-model", help="sentence-transformers model name or "
                             "folder (default: bundled all-MiniLM-L6-v2, offline).")
]

# One name for each threshold in every command (Magpie's live filter says --near-dup-threshold
# too); the names these commands used before are hidden aliases.
NearDupThresholdOpt = Annotated[
    float, typer.Option("--near-dup-threshold", min=0.0, max=1.0,
                        help="MinHash Jaccard of character 5-grams at or above which a text is "
                        "a near-duplicate (the definition Magpie's filter uses).")
]
EmbeddingThresholdOpt = Annotated[
    float, typer.Option("--embedding-threshold", min=0.0, max=1.0,
                        help="Cosine similarity of embeddings at or above which a text is an "
                        "embedding near-duplicate.")
]
MinhashThresholdAlias = Annotated[
    float | None, typer.Option("--minhash-threshold", min=0.0, max=1.0, hidden=True,
                               help="Deprecated name of --near-dup-threshold.")
]
DuplicateThresholdAlias = Annotated[
    float | None, typer.Option("--duplicate-threshold", min=0.0, max=1.0, hidden=True,
                               help="Deprecated name of --embedding-threshold.")
]


def _renamed(value: float, old_value: float | None, old: str, new: str) -> float:
    """The value of an option given under its deprecated name ``old`` (with a warning), else
    ``value``."""
    if old_value is None:
        return value
    console.print(f"[yellow]{old} is deprecated; use {new}[/yellow]", highlight=False)
    return old_value


def _analysis_errors(fn: F) -> F:
    """Bad values the libraries reject with a plain ``ValueError`` and a missing extra, as
    one clear line and exit code 2 (the project's own errors are ``handle_errors``')."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InstructForgeError:
            raise
        except ValueError as e:
            print_error(e)
            raise typer.Exit(2) from None
        except RuntimeError as e:  # e.g. the analysis extra is not installed
            if type(e) is not RuntimeError:
                raise
            print_error(e)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _judge_llm(spec: str | None, base_url: str | None, api_key: str | None,
               model_path: str | None, max_concurrency: int | None,
               timeout: float | None, journal: Path | None = None,
               **paid: Any) -> LLM | None:
    """The judge backend; ``paid``: price, rpm, tpm and batch settings (``journal`` records
    batches: the analysis folder's ``judge/batches.jsonl``)."""
    if spec is None:
        return None
    from instructforge.llm.config import ModelConfig

    return ModelConfig(spec, base_url, model_path, max_concurrency, timeout,
                       **paid).build(api_key, journal)


def _judge_name(spec: str | None, base_url: str | None) -> str | None:
    return f"{spec} @ {base_url}" if spec and base_url else spec


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


@app.command("analyze")
@handle_errors
@_analysis_errors
def analyze_cmd(
    source: SourceArg,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder for metrics.json, "
                                  "per_record.jsonl and report.html (default: RUN/analysis with "
                                  "RUN/report.html, or NAME.analysis/ beside a file).")
    ] = None,
    config: ConfigOpt = None,
    instruction_field: InstructionFieldOpt = None,
    response_field: ResponseFieldOpt = None,
    id_field: IdFieldOpt = None,
    tokenizer: Annotated[
        str | None, typer.Option("--tokenizer", help="tokenizer.json (or its folder) for token "
                                 "counts; 'regex' for a dependency-free estimate.")
    ] = None,
    embeddings: Annotated[
        bool, typer.Option("--embeddings/--no-embeddings", help="Embed instructions (map, "
                           "coverage, near-duplicates).")
    ] = True,
    embedding_model: EmbeddingModelOpt = None,
    projection: Annotated[
        str, typer.Option("--projection", help="2-D map: tsne, umap (needs umap-learn) or pca.")
    ] = "tsne",
    max_embed: Annotated[
        int | None,
        typer.Option("--max-embed", min=1, help="Embed at most N records (a fixed sample)."),
    ] = 20_000,
    near_dup_threshold: NearDupThresholdOpt = NEAR_DUP_THRESHOLD,
    embedding_threshold: EmbeddingThresholdOpt = EMBEDDING_THRESHOLD,
    minhash_threshold: MinhashThresholdAlias = None,
    duplicate_threshold: DuplicateThresholdAlias = None,
    judge: JudgeOpt = None,
    model: AnyRoleModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    model_path: ModelPathOpt = None,
    max_concurrency: MaxConcurrencyOpt = None,
    timeout: TimeoutOpt = None,
    price: PriceOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    batch: BatchOpt = False,
    batch_poll: BatchPollOpt = 30.0,
    batch_window: BatchWindowOpt = 2.0,
    ratings: Annotated[
        str, typer.Option("--ratings", help=f"Judge ratings to ask for, comma-separated "
                          f"({', '.join(RATINGS)}); '' for none.")
    ] = "quality,difficulty,category",
    tags: Annotated[bool, typer.Option("--tags/--no-tags", help="Ask the judge for InsTag "
                                       "intention tags (complexity / diversity).")] = True,
    judge_limit: Annotated[
        int | None,
        typer.Option("--judge-limit", min=1, help="Judge only a fixed sample of N records."),
    ] = None,
    judge_max_tokens: JudgeMaxTokensOpt = 256,
    judge_concurrency: JudgeConcurrencyOpt = 16,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html.")] = True,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the 2-D projection.")] = 0,
    dry_run: DryRunOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Measure a dataset and write metrics.json and a self-contained report.html.

    Lengths, embedding map and coverage, duplicates, LLM-judge ratings and InsTag
    complexity/diversity (with --judge), per-round figures, eliminations and token usage.

    Example: [bold]instructforge analyze runs/demo --judge embedded --judge-limit 50[/bold]
    """
    cfg = AnalyzeConfig(
        out_dir=str(output) if output else None,
        instruction_field=instruction_field, response_field=response_field, id_field=id_field,
        tokenizer=tokenizer, embeddings=embeddings, embedding_model=embedding_model,
        projection=projection, max_embed=max_embed,
        near_dup_threshold=_renamed(near_dup_threshold, minhash_threshold, "--minhash-threshold",
                                    "--near-dup-threshold"),
        embedding_threshold=_renamed(embedding_threshold, duplicate_threshold,
                                     "--duplicate-threshold", "--embedding-threshold"),
        judge=JudgeConfig(ratings=_split(ratings), tags=tags, max_tokens=judge_max_tokens,
                          concurrency=in_flight(judge_concurrency, batch)),
        judge_limit=judge_limit, report=report, seed=seed,
    )
    if projection not in ("tsne", "umap", "pca"):
        raise ValueError(f"--projection must be tsne, umap or pca, got {projection!r}")
    if dry_run:
        ds = load_dataset(source, instruction_field=instruction_field,
                          response_field=response_field, id_field=id_field)
        folder, page = output_paths(source, cfg.out_dir)
        rows = len(ds.records) + len(ds.rejected)
        judged = min(rows, judge_limit or rows) if judge or model else 0
        per_record = len(cfg.judge.ratings) + bool(cfg.judge.tags)
        print_plan({"source": source, "records": len(ds.records), "rejected": len(ds.rejected),
                    "embedded records": min(len(ds.records), max_embed or len(ds.records))
                    if embeddings else "off",
                    "judge": _judge_name(judge or model, base_url) or "none (no --judge)",
                    "judge calls max": judged * per_record,
                    "output": folder, "report": page if report else "off"})
        return
    llm = _judge_llm(judge or model, base_url, api_key, model_path, max_concurrency, timeout,
                     output_paths(source, cfg.out_dir)[0] / "judge" / "batches.jsonl",
                     price=price, rpm=rpm, tpm=tpm, batch=batch, batch_poll=batch_poll,
                     batch_window=batch_window)
    result = analyze(source, cfg, judge_llm=llm, progress=progress,
                     log=lambda msg: console.print(f"[dim]{msg}[/dim]", highlight=False))
    _print_summary(result.metrics)
    console.print(f"metrics: {result.metrics_path}", highlight=False)
    if result.report:
        console.print(f"report:  {result.report}", highlight=False)


def _print_summary(m: dict[str, Any]) -> None:
    t = Table(title=f"{m['dataset']['name']}: {m['dataset']['records']} records, "
                    f"{m['dataset']['rejected']} rejected", show_header=False)
    for key in ("instruction_tokens", "response_tokens"):
        s = m["lengths"].get(key)
        if s and s["count"]:
            t.add_row(f"mean {key.replace('_', ' ')}", f"{s['mean']:.1f} (median {s['median']:g})")
    e = m.get("embeddings") or {}
    if e.get("mean_nn_distance") is not None:
        t.add_row("mean nearest-neighbour distance", f"{e['mean_nn_distance']:.3f}")
        t.add_row("near-duplicate share", f"{100 * e['near_duplicate_share']:.1f}%")
    for kind, d in (m.get("duplicates") or {}).items():
        t.add_row(f"{kind} duplicates", f"{d['count']} ({100 * d['share']:.1f}%)")
    for kind, r in (m.get("ratings") or {}).items():
        mean = f", mean {r['mean_score']:.2f}" if r.get("mean_score") is not None else ""
        t.add_row(f"{kind} rated", f"{r['rated'] - r['unparseable']} ok, "
                                   f"{r['unparseable']} unparseable{mean}")
    tg = m.get("tags") or {}
    if tg.get("tagged"):
        t.add_row("complexity / diversity", f"{tg['complexity']:.2f} / {tg['diversity']}")
    out.print(t)


@app.command("filter")
@handle_errors
@_analysis_errors
def filter_cmd(
    source: SourceArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="New run directory.")],
    config: ConfigOpt = None,
    min_quality: Annotated[
        str | None, typer.Option("--min-quality", help="Keep quality >= this "
                                 "(very poor, poor, average, good, excellent).")
    ] = None,
    min_difficulty: Annotated[
        str | None, typer.Option("--min-difficulty", help="Keep difficulty >= this "
                                 "(very easy, easy, medium, hard, very hard).")
    ] = None,
    max_difficulty: Annotated[
        str | None, typer.Option("--max-difficulty", help="Keep difficulty <= this.")
    ] = None,
    category: Annotated[
        list[str] | None, typer.Option("--category", help="Keep only this task category "
                                       "(repeatable), e.g. Math.")
    ] = None,
    dedup: Annotated[
        str, typer.Option("--dedup", help=f"Duplicate removal, comma-separated, applied in "
                          f"order: {', '.join(DEDUP_KINDS)}; '' for none.")
    ] = "exact",
    near_dup_threshold: NearDupThresholdOpt = NEAR_DUP_THRESHOLD,
    embedding_threshold: EmbeddingThresholdOpt = EMBEDDING_THRESHOLD,
    minhash_threshold: MinhashThresholdAlias = None,
    duplicate_threshold: DuplicateThresholdAlias = None,
    embedding_model: EmbeddingModelOpt = None,
    instruction_field: InstructionFieldOpt = None,
    response_field: ResponseFieldOpt = None,
    id_field: IdFieldOpt = None,
    judge: JudgeOpt = None,
    model: AnyRoleModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    model_path: ModelPathOpt = None,
    max_concurrency: MaxConcurrencyOpt = None,
    timeout: TimeoutOpt = None,
    judge_max_tokens: JudgeMaxTokensOpt = 256,
    judge_concurrency: JudgeConcurrencyOpt = 16,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT if it exists.")]
    = False,
    dry_run: DryRunOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Keep rows by judge ratings and drop duplicates into a new run directory.

    Rating thresholds (quality, difficulty, category) and exact / MinHash / embedding
    dedup; the rejected rows go to rejected.jsonl with the rule and reason.

    Example: [bold]instructforge filter runs/demo -o runs/demo-clean --min-quality good
    --dedup exact,minhash,embedding[/bold]
    """
    cfg = DatasetFilterConfig(
        min_quality=min_quality, min_difficulty=min_difficulty, max_difficulty=max_difficulty,
        categories=tuple(category or ()), dedup=_split(dedup),
        near_dup_threshold=_renamed(near_dup_threshold, minhash_threshold, "--minhash-threshold",
                                    "--near-dup-threshold"),
        embedding_threshold=_renamed(embedding_threshold, duplicate_threshold,
                                     "--duplicate-threshold", "--embedding-threshold"),
        embedding_model=embedding_model, instruction_field=instruction_field,
        response_field=response_field, id_field=id_field,
        judge=JudgeConfig(ratings=(), tags=False, max_tokens=judge_max_tokens,
                          concurrency=judge_concurrency),
        overwrite=overwrite,
    )
    if dry_run:
        ds = load_dataset(source, instruction_field=instruction_field,
                          response_field=response_field, id_field=id_field)
        if output.exists() and any(output.iterdir()) and not overwrite:
            raise ValueError(f"{output}: already exists and is not empty (use --overwrite)")
        needs = cfg.needs_ratings
        print_plan({"source": source, "records": len(ds.records),
                    "rating filters": ", ".join(needs) or "none",
                    "judge": (_judge_name(judge or model, base_url) or "none") if needs else
                    "not needed",
                    "judge calls max": len(ds.records) * len(needs) if judge or model else 0,
                    "dedup": " -> ".join(cfg.dedup) or "none", "output": output})
        return
    llm = _judge_llm(judge or model, base_url, api_key, model_path, max_concurrency, timeout)
    result = filter_dataset(source, output, cfg, judge_llm=llm, progress=progress)
    console.print(result.summary(), highlight=False)
