"""``instructforge decontaminate``: drop records that overlap benchmark prompts or answers
(word n-grams and embedding near-matches) into a new run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from instructforge.analysis.decontaminate import (
    ANSWER_FIELDS,
    BUILTIN,
    EMBEDDING_THRESHOLD,
    NGRAM,
    PROMPT_FIELDS,
    DecontaminateConfig,
    decontaminate,
)
from instructforge.cli.common import DryRunOpt, app, console, handle_errors, print_plan


@app.command("decontaminate")
@handle_errors
def decontaminate_cmd(
    source: Annotated[Path, typer.Argument(help="A run directory, or a .jsonl / .json / "
                                           ".parquet / .csv dataset.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New run directory.")],
    against: Annotated[list[str], typer.Option(
        "--against", help=f"Benchmark to check against (repeatable): a file, hf:NAME[:split], "
        f"or a built-in eval set ({', '.join(BUILTIN)}).")],
    ngram: Annotated[int, typer.Option("--ngram", min=1, help="Words per n-gram; a record "
                                       "sharing one with a benchmark text is dropped.")] = NGRAM,
    embeddings: Annotated[bool, typer.Option(
        "--embeddings/--no-embeddings", help="Also drop embedding near-matches "
        "(instruction vs prompt, response vs answer).")] = True,
    embedding_threshold: Annotated[float, typer.Option(
        "--embedding-threshold", min=0.0, max=1.0, help="Cosine similarity at or above which "
        "a text near-matches a benchmark text.")] = EMBEDDING_THRESHOLD,
    embedding_model: Annotated[str | None, typer.Option(
        "--embedding-model", help="sentence-transformers model name or folder (default: "
        "bundled all-MiniLM-L6-v2, offline).")] = None,
    prompt_field: Annotated[list[str] | None, typer.Option(
        "--prompt-field", help=f"Benchmark field holding the prompt (repeatable; default "
        f"{', '.join(PROMPT_FIELDS)}: the first present).")] = None,
    answer_field: Annotated[list[str] | None, typer.Option(
        "--answer-field", help=f"Benchmark field holding the answer (repeatable; default "
        f"{', '.join(ANSWER_FIELDS)}).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT if it "
                                            "exists.")] = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Drop records whose instruction or response overlaps a benchmark, into a new run.

    Word n-gram overlap (13 words by default, as GPT-3 and datatrove) and embedding
    near-matches; each dropped record goes to rejected.jsonl with the benchmark row it matched.

    Example: [bold]instructforge decontaminate runs/demo --against gsm8k --against code
    -o runs/demo-decontaminated[/bold]
    """
    cfg = DecontaminateConfig(
        against=tuple(against), ngram=ngram, embeddings=embeddings,
        embedding_threshold=embedding_threshold, embedding_model=embedding_model,
        prompt_fields=tuple(prompt_field or PROMPT_FIELDS),
        answer_fields=tuple(answer_field or ANSWER_FIELDS), overwrite=overwrite)
    result = decontaminate(source, output, cfg, dry_run=dry_run)
    if dry_run:
        print_plan({"source": source, "records": result.kept,
                    "benchmarks": ", ".join(cfg.against),
                    "benchmark items": result.benchmark_items,
                    "checks": f"{ngram}-word n-grams" + (
                        f", embeddings >= {embedding_threshold}" if embeddings else ""),
                    "output": output})
        return
    console.print(result.summary(), highlight=False)
