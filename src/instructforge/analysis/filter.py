"""``filter``: keep rows by judge ratings, drop duplicates, write a new run directory.

Ratings are read from each record's ``metadata.analysis`` or from the judge run of an
earlier ``analyze`` (``SOURCE/analysis/judge`` or ``some.analysis/judge``); give a judge LLM
to rate what is missing (the calls land in that same cached judge run).  Rating filters run
first, then exact, MinHash and embedding dedup on what is left, so the first *good* copy of
a text is the one kept.

The new run directory holds ``data/records.jsonl`` (+ Parquet), ``rejected.jsonl`` (the
source's rejected rows, then this filter's, each with stage ``filter``, rule and reason),
``config.yaml`` and the source's ``usage.json``.

>>> cfg = DatasetFilterConfig(min_quality="good", dedup=("exact", "minhash"))
>>> result = filter_dataset("runs/demo", "runs/demo-clean", cfg)   # doctest: +SKIP
>>> result.kept, result.rejected_by_rule                           # doctest: +SKIP
(96, {'min_quality': 12, 'exact_duplicate': 3})
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from instructforge.analysis.analyze import output_paths
from instructforge.analysis.dataset import Dataset, check_new_run, load_dataset, write_derived_run
from instructforge.analysis.judge import (
    JudgeConfig,
    Verdict,
    judge_records,
    read_verdicts,
    verdict_from_metadata,
)
from instructforge.analysis.ratings import DIFFICULTY_SCALE, QUALITY_SCALE, match_category
from instructforge.dedup import (
    EMBEDDING_THRESHOLD,
    NEAR_DUP_THRESHOLD,
    embedding_duplicates,
    exact_duplicates,
    minhash_duplicates,
)
from instructforge.errors import InstructForgeError
from instructforge.llm.base import LLM
from instructforge.records import Record, instruction, rejected

DEDUP_KINDS = ("exact", "minhash", "embedding")
STAGE = "filter"


class FilterError(InstructForgeError, ValueError):
    """The filter cannot run as asked (bad threshold, missing ratings, output exists)."""


@dataclass
class DatasetFilterConfig:
    """Which rows ``filter_dataset`` keeps."""

    min_quality: str | None = None  # a QUALITY_SCALE label
    min_difficulty: str | None = None  # DIFFICULTY_SCALE labels
    max_difficulty: str | None = None
    categories: Sequence[str] = ()  # keep only these task categories (empty: all)
    dedup: Sequence[str] = ()  # any of "exact", "minhash", "embedding", in that order
    near_dup_threshold: float = NEAR_DUP_THRESHOLD
    embedding_threshold: float = EMBEDDING_THRESHOLD
    embedding_model: str | None = None
    instruction_field: str | None = None
    response_field: str | None = None
    id_field: str | None = None
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name, scale in (("min_quality", QUALITY_SCALE), ("min_difficulty", DIFFICULTY_SCALE),
                            ("max_difficulty", DIFFICULTY_SCALE)):
            value = getattr(self, name)
            if value is not None and value not in scale:
                raise FilterError(f"{name} must be one of {list(scale)}, got {value!r}")
        bad = [d for d in self.dedup if d not in DEDUP_KINDS]
        if bad:
            raise FilterError(f"unknown dedup kind(s) {bad}; choose from {list(DEDUP_KINDS)}")
        cats = []
        for c in self.categories:
            m = match_category(c)
            if m is None:
                raise FilterError(f"unknown task category {c!r}")
            cats.append(m)
        self.categories = tuple(cats)

    @property
    def needs_ratings(self) -> list[str]:
        """The rating kinds the thresholds read."""
        kinds = []
        if self.min_quality:
            kinds.append("quality")
        if self.min_difficulty or self.max_difficulty:
            kinds.append("difficulty")
        if self.categories:
            kinds.append("category")
        return kinds


@dataclass
class FilterResult:
    """What ``filter_dataset`` wrote."""

    run_dir: Path
    kept: int
    rejected_by_rule: dict[str, int]
    carried_rejected: int  # rejected rows copied over from the source

    def summary(self) -> str:
        rules = ", ".join(f"{k}: {v}" for k, v in self.rejected_by_rule.items()) or "none"
        return f"{self.kept} kept; filtered out {sum(self.rejected_by_rule.values())} ({rules}) " \
               f"-> {self.run_dir}"


def rating_rejection(record: Record, verdict: Verdict | None, cfg: DatasetFilterConfig) -> Record | None:
    """The rejected copy of ``record`` when its ratings fail ``cfg`` (None when it passes).

    >>> cfg = DatasetFilterConfig(min_quality="good")
    >>> v = {"ratings": {"quality": {"label": "poor", "score": 2, "status": "ok"}}}
    >>> rating_rejection({"id": "a", "messages": []}, v, cfg)["rejection"]["rule"]
    'min_quality'
    """
    ratings = (verdict or {}).get("ratings") or {}
    for kind in cfg.needs_ratings:
        r = ratings.get(kind)
        if r is None or r.get("status") != "ok":
            return rejected(record, stage=STAGE, rule=f"unrated_{kind}",
                            reason=f"the judge's {kind} answer could not be read, so the "
                                   f"{kind} filter cannot be passed",
                            evidence={"raw": (r or {}).get("raw")})
        label = r["label"]
        if kind == "quality" and QUALITY_SCALE.index(label) < QUALITY_SCALE.index(cfg.min_quality):
            return rejected(record, stage=STAGE, rule="min_quality",
                            reason=f"quality {label!r} is below {cfg.min_quality!r}",
                            evidence={"quality": label})
        if kind == "difficulty":
            i = DIFFICULTY_SCALE.index(label)
            if cfg.min_difficulty and i < DIFFICULTY_SCALE.index(cfg.min_difficulty):
                return rejected(record, stage=STAGE, rule="min_difficulty",
                                reason=f"difficulty {label!r} is below {cfg.min_difficulty!r}",
                                evidence={"difficulty": label})
            if cfg.max_difficulty and i > DIFFICULTY_SCALE.index(cfg.max_difficulty):
                return rejected(record, stage=STAGE, rule="max_difficulty",
                                reason=f"difficulty {label!r} is above {cfg.max_difficulty!r}",
                                evidence={"difficulty": label})
        if kind == "category" and label not in cfg.categories:
            return rejected(record, stage=STAGE, rule="category",
                            reason=f"category {label!r} is not one of {list(cfg.categories)}",
                            evidence={"category": label})
    return None


def deduplicate(
    records: Sequence[Record], cfg: DatasetFilterConfig, *, embed_fn: Any = None
) -> tuple[list[Record], list[Record]]:
    """``(kept, rejected)`` after the dedup kinds of ``cfg``, each run on what the previous
    one kept.  ``embed_fn(texts) -> array`` replaces the embedding model (tests).

    >>> recs = [{"id": i, "messages": [{"role": "user", "content": t}]}
    ...         for i, t in enumerate(["Hi there.", "hi  there.", "Bye."])]
    >>> kept, dropped = deduplicate(recs, DatasetFilterConfig(dedup=("exact",)))
    >>> [r["id"] for r in kept], dropped[0]["rejection"]["evidence"]
    ([0, 2], {'duplicate_of': 0, 'similarity': 1.0})
    """
    kept = list(records)
    dropped: list[Record] = []
    for kind in DEDUP_KINDS:
        if kind not in cfg.dedup or len(kept) < 2:
            continue
        texts = [instruction(r) for r in kept]
        if kind == "exact":
            dups, what = exact_duplicates(texts), "the same text (after normalising case, punctuation and spaces)"
        elif kind == "minhash":
            dups = minhash_duplicates(texts, threshold=cfg.near_dup_threshold)
            what = f"MinHash Jaccard >= {cfg.near_dup_threshold}"
        else:
            if embed_fn is None:
                from instructforge.analysis.embeddings import embed

                vectors = embed(texts, cfg.embedding_model)
            else:
                vectors = embed_fn(texts)
            dups = embedding_duplicates(vectors, threshold=cfg.embedding_threshold)
            what = f"embedding cosine similarity >= {cfg.embedding_threshold}"
        for i, (j, sim) in sorted(dups.items()):
            dropped.append(rejected(
                kept[i], stage=STAGE, rule=f"{kind}_duplicate",
                reason=f"near-duplicate of {kept[j]['id']}: {what}" if kind != "exact"
                else f"duplicate of {kept[j]['id']}: {what}",
                evidence={"duplicate_of": kept[j]["id"], "similarity": sim}))
        kept = [r for i, r in enumerate(kept) if i not in dups]
    return kept, dropped


def filter_dataset(
    source: str | Path | Dataset,
    out_dir: str | Path,
    config: DatasetFilterConfig | None = None,
    *,
    judge_llm: LLM | None = None,
    progress: bool = True,
    embed_fn: Any = None,
) -> FilterResult:
    """Filter ``source`` (run directory or dataset file) into the new run ``out_dir``.

    Raises :class:`FilterError` when a rating filter is asked for but ratings are missing
    and no ``judge_llm`` is given, or when ``out_dir`` already holds data. The output is
    built in ``OUT.partial`` and renamed when complete (see :func:`partial_path`).
    """
    cfg = config or DatasetFilterConfig()
    ds = source if isinstance(source, Dataset) else load_dataset(
        source, instruction_field=cfg.instruction_field, response_field=cfg.response_field,
        id_field=cfg.id_field)
    out = Path(out_dir)
    check_new_run(out, ds, overwrite=cfg.overwrite, error=FilterError)

    verdicts: dict[str, Verdict] = {}
    if cfg.needs_ratings:
        judge_dir = output_paths(ds.source)[0] / "judge"
        verdicts.update(read_verdicts(judge_dir))
        verdicts.update({r["id"]: v for r in ds.records
                         if (v := verdict_from_metadata(r)) is not None})
        missing = [r for r in ds.records if not _has(verdicts.get(r["id"]), cfg.needs_ratings)]
        if missing and judge_llm is not None:
            jcfg = JudgeConfig(ratings=tuple(cfg.needs_ratings), tags=False,
                               max_tokens=cfg.judge.max_tokens,
                               concurrency=cfg.judge.concurrency)
            verdicts.update(judge_records(missing, judge_llm, judge_dir, jcfg, progress=progress))
        elif missing:
            raise FilterError(
                f"{len(missing)} of {len(ds.records)} records have no {'/'.join(cfg.needs_ratings)}"
                f" rating (e.g. {missing[0]['id']!r}); run `instructforge analyze {ds.source} "
                "--judge MODEL` first, or pass --judge MODEL"
            )

    kept: list[Record] = []
    dropped: list[Record] = []
    for rec in ds.records:
        v = verdicts.get(rec["id"])
        if v is not None:  # carry the verdict, so later tools need not ask again
            rec = {**rec, "metadata": {**(rec.get("metadata") or {}), "analysis": v}}
        no = rating_rejection(rec, v, cfg) if cfg.needs_ratings else None
        (dropped if no else kept).append(no or rec)
    kept, dups = deduplicate(kept, cfg, embed_fn=embed_fn)
    dropped.extend(dups)

    write_derived_run(out, ds, kept, dropped, {
        "job": "filter", "source": str(ds.source), **asdict(cfg),
        "judge_model": judge_llm.model_id if judge_llm else None})
    return FilterResult(out, len(kept), dict(Counter(r["rejection"]["rule"] for r in dropped)),
                        len(ds.rejected))


def _has(verdict: Verdict | None, kinds: Sequence[str]) -> bool:
    ratings = (verdict or {}).get("ratings") or {}
    return all(k in ratings for k in kinds)

