"""``analyze``: every metric of a dataset in one call, saved as JSON and an HTML report.

>>> result = analyze("runs/demo")                               # doctest: +SKIP
>>> result.metrics["lengths"]["instruction_words"]["mean"]       # doctest: +SKIP
23.4
>>> result.report                                                # doctest: +SKIP
PosixPath('runs/demo/report.html')

For a run directory the report goes to ``RUN/report.html`` and the metrics to
``RUN/analysis/``; for a file ``some.jsonl`` both go to ``some.analysis/`` beside it.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instructforge.analysis.dataset import Dataset, load_dataset
from instructforge.analysis.judge import (
    JudgeConfig,
    Verdict,
    judge_models,
    judge_records,
    judge_usage,
    read_verdicts,
    verdict_from_metadata,
)
from instructforge.analysis.lengths import TokenCounter, length_table, summarize
from instructforge.analysis.ratings import DIFFICULTY_SCALE, QUALITY_SCALE, TASK_CATEGORIES
from instructforge.analysis.tags import complexity_diversity, top_tags
from instructforge.dedup import (
    EMBEDDING_THRESHOLD,
    NEAR_DUP_THRESHOLD,
    embedding_duplicates,
    exact_duplicates,
    minhash_duplicates,
)
from instructforge.files import open_atomic, write_atomic
from instructforge.llm.base import LLM
from instructforge.records import Record, instruction, response, stable_id


@dataclass
class AnalyzeConfig:
    """Everything ``analyze`` can be told; the CLI fills it from flags."""

    out_dir: str | None = None
    instruction_field: str | None = None
    response_field: str | None = None
    id_field: str | None = None
    tokenizer: str | None = None
    embeddings: bool = True
    embedding_model: str | None = None
    projection: str = "tsne"  # tsne | umap | pca
    max_embed: int | None = 20_000  # larger sets are sampled for embeddings and the map
    embedding_threshold: float = EMBEDDING_THRESHOLD  # cosine similarity of embedding near-duplicates
    near_dup_threshold: float = NEAR_DUP_THRESHOLD
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    judge_limit: int | None = None  # judge only a sample of this many records
    report: bool = True
    report_points: int = 3_000  # points on the map / records in the lineage browser
    seed: int = 0


@dataclass
class AnalysisResult:
    """Where ``analyze`` wrote its outputs, and the metrics themselves."""

    metrics: dict[str, Any]
    out_dir: Path
    metrics_path: Path
    per_record_path: Path
    report: Path | None


def output_paths(source: str | Path, out_dir: str | None = None) -> tuple[Path, Path]:
    """``(analysis_dir, report_path)`` for a source.

    >>> output_paths("data/alpaca.jsonl")
    (PosixPath('data/alpaca.analysis'), PosixPath('data/alpaca.analysis/report.html'))
    """
    src = Path(source)
    if out_dir is not None:
        return Path(out_dir), Path(out_dir) / "report.html"
    if src.is_dir():
        return src / "analysis", src / "report.html"
    folder = src.with_name(src.stem + ".analysis")
    return folder, folder / "report.html"


def sample_ids(records: Sequence[Record], n: int | None, salt: str = "sample") -> set[str]:
    """A deterministic, order-independent sample of ``n`` record ids (all when n is None)."""
    ids = [r["id"] for r in records]
    if n is None or n >= len(ids):
        return set(ids)
    return set(sorted(ids, key=lambda i: stable_id(salt, i))[:n])


def record_round(record: Record) -> int | None:
    """The evolution round of a record (0 for seeds), None for data without rounds."""
    lin = record.get("lineage") or {}
    r = lin.get("round", (record.get("metadata") or {}).get("round"))
    return int(r) if isinstance(r, int | float) and not isinstance(r, bool) else None


def record_operation(record: Record) -> str | None:
    lin = record.get("lineage") or {}
    op = lin.get("operation") or (record.get("metadata") or {}).get("operation")
    if op is None and lin and lin.get("round") == 0:
        return "seed"
    return str(op) if op is not None else None


def analyze(
    source: str | Path | Dataset,
    config: AnalyzeConfig | None = None,
    *,
    judge_llm: LLM | None = None,
    progress: bool = True,
    log: Any = None,
) -> AnalysisResult:
    """Compute lengths, embeddings, duplicates, judge ratings and tags (when ``judge_llm``
    is given), per-round figures, eliminations and usage; write ``metrics.json``,
    ``per_record.jsonl`` and ``report.html``.

    ``log`` is an optional ``callable(str)`` for progress messages (the CLI prints them).

    >>> analyze("some.jsonl", AnalyzeConfig(embeddings=False)).report   # doctest: +SKIP
    PosixPath('some.analysis/report.html')
    """
    cfg = config or AnalyzeConfig()
    say = log or (lambda _msg: None)
    ds = source if isinstance(source, Dataset) else load_dataset(
        source, instruction_field=cfg.instruction_field, response_field=cfg.response_field,
        id_field=cfg.id_field)
    out_dir, report_path = output_paths(ds.source, cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records = ds.records
    rows = [_row(r) for r in records]
    ins = [instruction(r) for r in records]

    say(f"lengths of {len(records)} records")
    metrics: dict[str, Any] = {"dataset": _dataset_facts(ds),
                               "lengths": _lengths(ins, [response(r) for r in records], rows,
                                                   cfg)}
    metrics["duplicates"] = _text_duplicates(ins, rows, cfg)
    emb = _embeddings(records, ins, rows, cfg, say)
    metrics["embeddings"] = emb.metrics
    if emb.duplicates is not None:
        metrics["duplicates"]["embedding"] = emb.duplicates
    judge_dir = out_dir / "judge"
    metrics.update(_judgements(records, rows, judge_dir, cfg, judge_llm, progress, say))

    # Per round (evolve runs), per operation, eliminations, usage.
    metrics["per_round"] = per_group(rows, "round", emb.vectors, emb.indices)
    metrics["per_operation"] = per_group(rows, "operation", emb.vectors, emb.indices)
    metrics["elimination"] = elimination_table(ds.rejected, len(records))
    metrics["usage"] = usage_table(ds.usage, *judge_usage(judge_dir))
    metrics["evaluations"] = evaluations(ds.run_dir)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)

    metrics_path, per_record_path = _write_metrics(out_dir, metrics, rows)
    report = None
    if cfg.report:
        from instructforge.analysis.report import build_report_data, write_report

        say("writing report")
        data = build_report_data(ds, metrics, rows, emb.report_ids)
        report = write_report(report_path, data)
    return AnalysisResult(metrics, out_dir, metrics_path, per_record_path, report)


def _row(record: Record) -> dict[str, Any]:
    """The start of a record's ``per_record.jsonl`` row; each step adds its columns."""
    return {"id": record["id"], "round": record_round(record),
            "operation": record_operation(record), "method": record.get("method"),
            "category": (record.get("metadata") or {}).get("category")}


def _dataset_facts(ds: Dataset) -> dict[str, Any]:
    return {
        "name": ds.name, "source": str(ds.source), "run_directory": ds.run_dir is not None,
        "records": len(ds.records), "rejected": len(ds.rejected),
        "with_response": sum(1 for r in ds.records if response(r)),
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _lengths(ins: list[str], res: list[str], rows: list[dict[str, Any]],
             cfg: AnalyzeConfig) -> dict[str, Any]:
    """Token and word lengths: a column of each row, and their summaries."""
    counter = TokenCounter(cfg.tokenizer)
    lengths = length_table(ins, res, counter)
    for key, values in lengths.items():
        for row, v in zip(rows, values, strict=True):
            row[key] = v
    has_responses = any(res)
    return {"tokenizer": counter.name,
            **{k: summarize(v) for k, v in lengths.items()
               if has_responses or not k.startswith("response")}}


def _text_duplicates(ins: list[str], rows: list[dict[str, Any]],
                     cfg: AnalyzeConfig) -> dict[str, Any]:
    """Exact and MinHash duplicates (cheap, on every record): marked in the rows, counted."""
    exact = exact_duplicates(ins)
    minhash = minhash_duplicates(ins, threshold=cfg.near_dup_threshold)
    for i, (j, _) in exact.items():
        rows[i]["exact_duplicate_of"] = rows[j]["id"]
    for i, (j, sim) in minhash.items():
        rows[i]["minhash_duplicate_of"] = rows[j]["id"]
        rows[i]["minhash_similarity"] = sim
    n = max(1, len(rows))
    return {
        "exact": {"count": len(exact), "share": round(len(exact) / n, 4)},
        "minhash": {"count": len(minhash), "share": round(len(minhash) / n, 4),
                    "threshold": cfg.near_dup_threshold},
    }


@dataclass
class _Embedded:
    """What the embedding step found: its metrics, the vectors and which records they are."""

    metrics: dict[str, Any]
    report_ids: set[str]
    vectors: np.ndarray | None = None
    indices: list[int] = field(default_factory=list)  # record index of each vector
    duplicates: dict[str, Any] | None = None


def _embeddings(records: list[Record], ins: list[str], rows: list[dict[str, Any]],
                cfg: AnalyzeConfig, say: Any) -> _Embedded:
    """Embeddings (of a fixed sample), the 2-D map, nearest neighbours, coverage and
    embedding near-duplicates."""
    report_ids = sample_ids(records, cfg.report_points, "report")
    if not (cfg.embeddings and records):
        return _Embedded({"skipped": "disabled" if records else "no records"}, report_ids)
    from instructforge.analysis.embeddings import (
        DEFAULT_MODEL,
        coverage,
        embed,
        nearest_neighbours,
        project_2d,
    )

    ids = [r["id"] for r in records]
    keep = sample_ids(records, cfg.max_embed, "embed")
    embedded_idx = [i for i, rid in enumerate(ids) if rid in keep]
    say(f"embedding {len(embedded_idx)} instructions with "
        f"{cfg.embedding_model or DEFAULT_MODEL}")
    vectors = embed([ins[i] for i in embedded_idx], cfg.embedding_model)
    dist, nn = nearest_neighbours(vectors)
    # Only the points the report shows are projected: t-SNE is the slow part.
    report_ids = sample_ids([records[i] for i in embedded_idx], cfg.report_points, "report")
    shown = [k for k, i in enumerate(embedded_idx) if ids[i] in report_ids]
    say(f"2-D map ({cfg.projection}) of {len(shown)} points")
    xy = project_2d(vectors[shown], method=cfg.projection, seed=cfg.seed)
    for row_k, k in enumerate(shown):
        rows[embedded_idx[k]]["x"] = round(float(xy[row_k, 0]), 3)
        rows[embedded_idx[k]]["y"] = round(float(xy[row_k, 1]), 3)
    for k, i in enumerate(embedded_idx):
        if not np.isnan(dist[k]):
            rows[i]["nn_distance"] = round(float(dist[k]), 4)
            rows[i]["nearest"] = ids[embedded_idx[int(nn[k])]]
    edups = embedding_duplicates(vectors, threshold=cfg.embedding_threshold)
    for k, (j, sim) in edups.items():
        rows[embedded_idx[k]]["embedding_duplicate_of"] = ids[embedded_idx[j]]
        rows[embedded_idx[k]]["embedding_similarity"] = sim
    metrics = {
        "model": cfg.embedding_model or DEFAULT_MODEL, "projection": cfg.projection,
        "sampled": len(embedded_idx) < len(records),
        **coverage(vectors, duplicate_threshold=cfg.embedding_threshold),
    }
    duplicates = {
        "count": len(edups), "share": round(len(edups) / max(1, len(embedded_idx)), 4),
        "threshold": cfg.embedding_threshold, "of": len(embedded_idx)}
    return _Embedded(metrics, report_ids, vectors, embedded_idx, duplicates)


def _judgements(records: list[Record], rows: list[dict[str, Any]], judge_dir: Path,
                cfg: AnalyzeConfig, judge_llm: LLM | None, progress: bool,
                say: Any) -> dict[str, Any]:
    """Verdicts already in the data, earlier judge runs, then new calls (with ``judge_llm``):
    ratings and tags in the rows, and the ``ratings``, ``tags`` and ``judge`` metrics."""
    verdicts: dict[str, Verdict] = {
        r["id"]: v for r in records if (v := verdict_from_metadata(r)) is not None}
    verdicts.update(read_verdicts(judge_dir))
    if judge_llm is not None:
        wanted = sample_ids(records, cfg.judge_limit, "judge")
        todo = [r for r in records if r["id"] in wanted]
        say(f"judging {len(todo)} records with {judge_llm.model_id}")
        verdicts.update(judge_records(todo, judge_llm, judge_dir, cfg.judge, progress=progress))
    for row in rows:
        v = verdicts.get(row["id"])
        if v is None:
            continue
        for kind, r in (v.get("ratings") or {}).items():
            row[kind] = r.get("label") if r.get("status") == "ok" else "unparseable"
            if kind == "category" and r.get("status") == "ok":
                row["category"] = r["label"]
        t = v.get("tags")
        if t is not None:
            row["tags"] = t.get("tags")
            row["tags_status"] = t.get("status")
    return {"ratings": rating_metrics(rows), "tags": tag_metrics(rows),
            "judge": {"records_judged": sum(1 for r in rows if r["id"] in verdicts),
                      "model": ", ".join(judge_models(judge_dir)) or None}}


def _write_metrics(out_dir: Path, metrics: dict[str, Any],
                   rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``per_record.jsonl``, then ``metrics.json``; return their paths.

    metrics.json last, and each file renamed into place whole: a kill at any point leaves
    no metrics.json, or one that describes the per_record.jsonl beside it."""
    metrics_path = out_dir / "metrics.json"
    metrics_path.unlink(missing_ok=True)
    per_record_path = out_dir / "per_record.jsonl"
    with open_atomic(per_record_path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    write_atomic(metrics_path, metrics)
    return metrics_path, per_record_path


def rating_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Label counts (scale order), unparseable counts and mean 1-based scores.

    >>> m = rating_metrics([{"quality": "good"}, {"quality": "unparseable"}, {}])
    >>> m["quality"]["counts"]["good"], m["quality"]["unparseable"], m["quality"]["mean_score"]
    (1, 1, 4.0)
    """
    out: dict[str, Any] = {}
    for kind, scale in (("quality", QUALITY_SCALE), ("difficulty", DIFFICULTY_SCALE),
                        ("category", TASK_CATEGORIES)):
        values = [r[kind] for r in rows if r.get(kind) is not None]
        if kind == "category":
            # Categories may also come from the data itself (e.g. Magpie's control prompts).
            values = [r["category"] for r in rows if r.get("category")]
        if not values:
            continue
        counts = Counter(values)
        unparseable = counts.pop("unparseable", 0)
        labels = list(scale) + sorted(set(counts) - set(scale))
        entry: dict[str, Any] = {"rated": len(values), "unparseable": unparseable,
                                 "counts": {lab: counts.get(lab, 0) for lab in labels}}
        if kind != "category":
            scores = [scale.index(v) + 1 for v in values if v in scale]
            entry["mean_score"] = round(sum(scores) / len(scores), 3) if scores else None
        out[kind] = entry
    return out


def tag_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Complexity, diversity, unparseable count and the most frequent tags.

    >>> tag_metrics([{"tags": ["a", "b"], "tags_status": "ok"}])["complexity"]
    2.0
    """
    judged = [r for r in rows if "tags_status" in r]
    if not judged:
        return {}
    lists = [r.get("tags") for r in judged]
    return {**complexity_diversity(lists),
            "unparseable": sum(1 for r in judged if r["tags_status"] != "ok"),
            "top": top_tags(lists, 40)}


def per_group(
    rows: Sequence[dict[str, Any]], key: str, vectors: np.ndarray | None,
    embedded_idx: Sequence[int],
) -> list[dict[str, Any]]:
    """One row of figures per value of ``key`` (``round`` or ``operation``); empty when no
    record has that key.  Coverage is computed within each group."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if r.get(key) is not None:
            groups[r[key]].append(i)
    if not groups:
        return []
    pos = {i: k for k, i in enumerate(embedded_idx)}
    out = []
    for value in sorted(groups, key=lambda v: (isinstance(v, str), v)):
        idx = groups[value]
        g = [rows[i] for i in idx]
        entry: dict[str, Any] = {key: value, "records": len(g)}
        for col in ("instruction_words", "instruction_tokens", "response_words",
                    "response_tokens"):
            vals = [r[col] for r in g if col in r]
            entry[f"mean_{col}"] = round(sum(vals) / len(vals), 2) if vals else None
        for kind, scale in (("quality", QUALITY_SCALE), ("difficulty", DIFFICULTY_SCALE)):
            scores = [scale.index(r[kind]) + 1 for r in g if r.get(kind) in scale]
            entry[f"mean_{kind}"] = round(sum(scores) / len(scores), 3) if scores else None
        tagged = [r for r in g if "tags_status" in r]
        if tagged:
            cd = complexity_diversity([r.get("tags") for r in tagged])
            entry.update({"complexity": cd["complexity"], "diversity": cd["diversity"],
                          "diversity_per_instruction": cd["diversity_per_instruction"]})
        if vectors is not None:
            sub = [pos[i] for i in idx if i in pos]
            if len(sub) >= 2:
                from instructforge.analysis.embeddings import nearest_neighbours

                d, _ = nearest_neighbours(vectors[sub])
                entry["mean_nn_distance"] = round(float(d.mean()), 4)
        out.append(entry)
    return out


def elimination_table(rejected: Sequence[Record], kept: int) -> dict[str, Any]:
    """Rejected records counted by stage and rule (with one example reason each) and by round.

    >>> r = {"rejection": {"stage": "eliminate", "rule": "no_information_gain", "reason": "equal"}}
    >>> elimination_table([r, r], kept=6)["rules"][0]["count"]
    2
    """
    by_rule: dict[tuple[str, str], list[Record]] = defaultdict(list)
    by_round: dict[Any, Counter] = defaultdict(Counter)
    for rec in rejected:
        rej = rec.get("rejection") or {}
        k = (str(rej.get("stage") or "?"), str(rej.get("rule") or "?"))
        by_rule[k].append(rec)
        by_round[record_round(rec)][k[1]] += 1
    total = len(rejected)
    rules = []
    for (stage, rule), recs in sorted(by_rule.items(), key=lambda kv: -len(kv[1])):
        example = recs[0]
        rules.append({
            "stage": stage, "rule": rule, "count": len(recs),
            "share_of_rejected": round(len(recs) / total, 4),
            "example_reason": str((example.get("rejection") or {}).get("reason") or "")[:300],
            "example_id": example.get("id"),
            "example_instruction": instruction(example)[:300],
        })
    rounds = [{"round": r, **dict(c)} for r, c in sorted(
        by_round.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]
    attempted = total + kept
    return {"rejected": total, "kept": kept,
            "rejection_rate": round(total / attempted, 4) if attempted else None,
            "rules": rules, "per_round": rounds}


def evaluations(run_dir: Path | None) -> list[dict[str, Any]]:
    """Results that ``instructforge eval --run RUN_DIR`` saved in ``RUN_DIR/eval/*.json``.

    >>> evaluations(None)
    []
    """
    out: list[dict[str, Any]] = []
    for path in sorted((run_dir / "eval").glob("*.json")) if run_dir else []:
        try:
            res = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue  # a half-written file from a running eval: shown next time
        table = res.get("table") or {}
        out.append({
            "name": path.stem,
            "task": res.get("task"),
            "models": ", ".join(f"{k}: {v.get('spec')}" for k, v in (res.get("models") or {}).items()),
            "judge": (res.get("judge") or {}).get("spec"),
            "header": table.get("header") or [],
            "rows": table.get("rows") or [],
        })
    return out


def usage_table(*usages: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Flatten engine ``usage.json`` totals (the run's, then the judge's) into rows.

    >>> usage_table({"job": "evol", "total": {"m": {"evolve": {"requests": 2,
    ...     "prompt_tokens": 10, "completion_tokens": 5}}}})[0]["completion_tokens"]
    5
    """
    rows = []
    for usage in usages:
        if not usage:
            continue
        for model, steps in (usage.get("total") or {}).items():
            for step, u in steps.items():
                rows.append({"job": usage.get("job"), "model": model, "step": step,
                             **{k: u.get(k, 0) for k in ("requests", "cached", "errors",
                                                          "prompt_tokens", "completion_tokens",
                                                          "truncated", "seconds")}})
    return rows


def config_dict(cfg: AnalyzeConfig) -> dict[str, Any]:
    """``cfg`` as plain data (for logs and config files)."""
    return asdict(cfg)
