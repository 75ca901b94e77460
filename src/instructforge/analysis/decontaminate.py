"""``decontaminate``: drop records that overlap the benchmarks a model will be evaluated on.

Two checks of every turn of a record (user turns: "instruction"; assistant turns: "response")
against every benchmark item's prompt and answer:

- **word n-grams** (GPT-3's and datatrove's practice, n = 13 by default): texts are lower-cased,
  punctuation becomes space, and a record that shares any run of n words with a benchmark text
  is contaminated. A benchmark text shorter than n words is one n-gram of its own length (the
  whole text); texts under :data:`MIN_WORDS` words are too common to mean anything and are
  skipped by this check.
- **embedding near-matches**: cosine similarity of sentence embeddings (all-MiniLM-L6-v2 by
  default) of instruction vs benchmark prompts and response vs benchmark answers, at or above
  a threshold: catches paraphrases that share no long n-gram.

The new run directory holds the kept records; every dropped record goes to ``rejected.jsonl``
(stage ``decontaminate``) with the benchmark item it matched: file, row index, field and the
shared n-gram or the similarity.

>>> bench = load_benchmarks(["gsm8k"])
>>> item = bench[0]
>>> rec = {"id": "r", "messages": [{"role": "user", "content": item.prompt.upper()}]}
>>> ngram_matches([rec], bench, n=13)[0]["rule"]
'benchmark_ngram'
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from instructforge.analysis.dataset import Dataset, check_new_run, load_dataset, write_derived_run
from instructforge.errors import InstructForgeError
from instructforge.inputs import InputError, read_rows
from instructforge.records import Record, rejected
from instructforge.tuning.eval import BUILTIN_DATA

STAGE = "decontaminate"
NGRAM = 13
MIN_WORDS = 5
EMBEDDING_THRESHOLD = 0.9
PROMPT_FIELDS = ("question", "prompt", "instruction")
ANSWER_FIELDS = ("answer", "canonical_solution", "response")
# The built-in eval sets of ``instructforge eval`` that have answers (pairwise has none).
BUILTIN = {task: BUILTIN_DATA[task] for task in ("gsm8k", "code")}
_WORD = re.compile(r"[^\W_]+")

EmbedFn = Callable[[Sequence[str]], np.ndarray]


class DecontaminateError(InstructForgeError, ValueError):
    """Decontamination cannot run as asked (unreadable benchmark, output exists...)."""


@dataclass
class DecontaminateConfig:
    """What counts as contamination."""

    against: Sequence[str] = ("gsm8k", "code")  # files, hf:NAME[:split], or gsm8k / code
    ngram: int = NGRAM
    embeddings: bool = True
    embedding_threshold: float = EMBEDDING_THRESHOLD
    embedding_model: str | None = None
    prompt_fields: Sequence[str] = PROMPT_FIELDS
    answer_fields: Sequence[str] = ANSWER_FIELDS
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise DecontaminateError(f"ngram must be at least 1, got {self.ngram}")
        if not 0.0 <= self.embedding_threshold <= 1.0:
            raise DecontaminateError(
                f"embedding_threshold must be in [0, 1], got {self.embedding_threshold}")
        if not self.against:
            raise DecontaminateError("give at least one benchmark to check against")


@dataclass
class BenchmarkItem:
    """One benchmark row: where it is, and its prompt and answer text ('' when absent)."""

    benchmark: str  # as given: a built-in name, a file or hf:NAME
    file: str  # the file read (the built-in sets' data file)
    index: int  # 0-based row of the file
    prompt: str
    answer: str
    prompt_field: str | None
    answer_field: str | None


@dataclass
class DecontaminateResult:
    """What :func:`decontaminate` wrote (or, with ``dry_run``, would write)."""

    run_dir: Path
    kept: int
    rejected_by_rule: dict[str, int]
    benchmark_items: int

    def summary(self) -> str:
        dropped = sum(self.rejected_by_rule.values())
        rules = ", ".join(f"{k}: {v}" for k, v in self.rejected_by_rule.items()) or "none"
        return (f"{self.kept} kept; dropped {dropped} contaminated ({rules}) against "
                f"{self.benchmark_items} benchmark items -> {self.run_dir}")


def words(text: str) -> list[str]:
    """Lower-cased words, punctuation dropped.

    >>> words("Lena buys 3 notebooks, at $4 each!")
    ['lena', 'buys', '3', 'notebooks', 'at', '4', 'each']
    """
    return _WORD.findall(text.lower())


def load_benchmarks(
    against: Sequence[str],
    prompt_fields: Sequence[str] = PROMPT_FIELDS,
    answer_fields: Sequence[str] = ANSWER_FIELDS,
) -> list[BenchmarkItem]:
    """Every row of the benchmarks: built-in names (``gsm8k``, ``code``), files any reader
    reads (``.jsonl``, ``.parquet``...) or ``hf:NAME[:split]``. A row needs a prompt or an
    answer field (the first of each list present); one that has neither is an error naming
    its file and line."""
    items: list[BenchmarkItem] = []
    for spec in against:
        path = str(BUILTIN.get(spec, spec))
        found = 0
        try:
            for i, row in enumerate(read_rows(path)):
                if row.problem is not None or row.data is None:
                    raise DecontaminateError(f"{row.where}: {row.problem}")
                pf = next((f for f in prompt_fields if _text(row.data.get(f))), None)
                af = next((f for f in answer_fields if _text(row.data.get(f))), None)
                if pf is None and af is None:
                    raise DecontaminateError(
                        f"{row.where}: no prompt field ({', '.join(prompt_fields)}) or answer "
                        f"field ({', '.join(answer_fields)}); name them with --prompt-field / "
                        "--answer-field")
                items.append(BenchmarkItem(spec, path, i, _text(row.data.get(pf)) if pf else "",
                                           _text(row.data.get(af)) if af else "", pf, af))
                found += 1
        except InputError as e:
            raise DecontaminateError("\n".join(e.problems)) from None
        if not found:
            raise DecontaminateError(f"{spec}: no rows")
    return items


def _text(value: Any) -> str:
    return value if isinstance(value, str) and value.strip() else ""


def ngram_matches(records: Sequence[Record], items: Sequence[BenchmarkItem], *, n: int = NGRAM
                  ) -> dict[int, dict[str, Any]]:
    """``{record index: evidence}`` for records sharing a word n-gram with a benchmark text
    (the first match found: user turns before assistant turns).

    >>> item = BenchmarkItem("b", "b.jsonl", 0, "one two three four five six", "", "question", None)
    >>> rec = {"id": "r", "messages": [{"role": "user", "content": "Say: ONE two, three four five six!"}]}
    >>> ngram_matches([rec], [item], n=13)[0]["ngram"]
    'one two three four five six'
    """
    index: dict[tuple[str, ...], tuple[int, str]] = {}
    lengths: set[int] = set()
    for k, item in enumerate(items):
        for field_name, text in (("prompt", item.prompt), ("answer", item.answer)):
            w = words(text)
            if len(w) < MIN_WORDS:
                continue
            size = min(n, len(w))
            lengths.add(size)
            for start in range(len(w) - size + 1):
                index.setdefault(tuple(w[start:start + size]), (k, field_name))
    found: dict[int, dict[str, Any]] = {}
    for r, rec in enumerate(records):
        for rec_field, m, text in _turns(rec):
            w = words(text)
            hit = next(((g, index[g]) for size in sorted(lengths, reverse=True)
                        for start in range(len(w) - size + 1)
                        if (g := tuple(w[start:start + size])) in index), None)
            if hit is not None:
                gram, (k, bench_field) = hit
                found[r] = _evidence(items[k], bench_field, rec_field, m,
                                     rule="benchmark_ngram", ngram=" ".join(gram))
                break
    return found


def _turns(record: Record) -> list[tuple[str, int, str]]:
    """``(field, message index, text)`` of every user turn ("instruction") and then every
    assistant turn ("response"), so later turns of a multi-turn chat are checked too."""
    msgs = [(i, m) for i, m in enumerate(record.get("messages") or []) if m.get("content")]
    return [(name, i, m["content"]) for role, name in (("user", "instruction"),
                                                       ("assistant", "response"))
            for i, m in msgs if m.get("role") == role and isinstance(m["content"], str)]


def embedding_matches(records: Sequence[Record], items: Sequence[BenchmarkItem], *,
                      threshold: float, embed_fn: EmbedFn) -> dict[int, dict[str, Any]]:
    """``{record index: evidence}`` for records with a user turn at least ``threshold``
    cosine-similar to a benchmark prompt, or an assistant turn to a benchmark answer.
    ``embed_fn(texts)`` returns L2-normalised vectors."""
    found: dict[int, dict[str, Any]] = {}
    turns = [(r, *t) for r, rec in enumerate(records) for t in _turns(rec)]
    for rec_field, bench_field in (("instruction", "prompt"), ("response", "answer")):
        rows = [(r, m, t) for r, f, m, t in turns if f == rec_field and r not in found]
        bench = [(k, t) for k, item in enumerate(items) if (t := getattr(item, bench_field))]
        if not rows or not bench:
            continue
        a = embed_fn([t for _, _, t in rows])
        b = embed_fn([t for _, t in bench])
        for block in range(0, len(rows), 1024):
            sims = a[block:block + 1024] @ b.T
            for j, col in enumerate(sims.argmax(axis=1)):
                sim = float(sims[j, col])
                r, m, _ = rows[block + j]
                if sim >= threshold - 1e-6 and r not in found:
                    found[r] = _evidence(items[bench[col][0]], bench_field, rec_field, m,
                                         rule="benchmark_embedding", similarity=round(sim, 4))
    return found


def _evidence(item: BenchmarkItem, bench_field: str, rec_field: str, message: int, *,
              rule: str, **match: Any) -> dict[str, Any]:
    name = item.prompt_field if bench_field == "prompt" else item.answer_field
    return {"rule": rule, "benchmark": item.benchmark, "file": item.file, "index": item.index,
            "benchmark_field": name, "record_field": rec_field, "message": message, **match}


def decontaminate(
    source: str | Path | Dataset,
    out_dir: str | Path,
    config: DecontaminateConfig | None = None,
    *,
    embed_fn: EmbedFn | None = None,
    dry_run: bool = False,
) -> DecontaminateResult:
    """Check ``source`` (run directory or dataset file) against the benchmarks and write the
    kept records to the new run ``out_dir`` (built in ``OUT.partial``, then renamed).
    ``embed_fn`` replaces the embedding model (tests); ``dry_run`` checks inputs and the
    output path and writes nothing."""
    cfg = config or DecontaminateConfig()
    ds = source if isinstance(source, Dataset) else load_dataset(source)
    out = Path(out_dir)
    check_new_run(out, ds, overwrite=cfg.overwrite, error=DecontaminateError)
    items = load_benchmarks(cfg.against, cfg.prompt_fields, cfg.answer_fields)
    if dry_run:
        return DecontaminateResult(out, len(ds.records), {}, len(items))

    found = ngram_matches(ds.records, items, n=cfg.ngram)
    if cfg.embeddings:
        rest = [r for i, r in enumerate(ds.records) if i not in found]
        position = [i for i in range(len(ds.records)) if i not in found]
        if embed_fn is None:
            from instructforge.analysis.embeddings import embed, load_encoder

            try:
                encoder = load_encoder(cfg.embedding_model)
            except RuntimeError as e:  # the analysis extra is missing, or the model
                raise DecontaminateError(f"{e} (or pass --no-embeddings)") from None

            def embed_fn(texts: Sequence[str]) -> np.ndarray:
                return embed(texts, encoder=encoder)

        near = embedding_matches(rest, items, threshold=cfg.embedding_threshold,
                                 embed_fn=embed_fn)
        found.update({position[i]: ev for i, ev in near.items()})

    kept: list[Record] = []
    dropped: list[Record] = []
    for i, rec in enumerate(ds.records):
        ev = found.get(i)
        if ev is None:
            kept.append(rec)
            continue
        how = (f"shares the n-gram {ev['ngram']!r} with" if "ngram" in ev
               else f"has cosine similarity {ev['similarity']} with")
        dropped.append(rejected(
            rec, stage=STAGE, rule=ev["rule"],
            reason=f"its {ev['record_field']} (message {ev['message']}) {how} "
                   f"{ev['benchmark']} row {ev['index']} "
                   f"({ev['benchmark_field']})",
            evidence={k: v for k, v in ev.items() if k != "rule"}))

    write_derived_run(out, ds, kept, dropped,
                      {"job": "decontaminate", "source": str(ds.source), **asdict(cfg)})
    return DecontaminateResult(out, len(kept), dict(Counter(r["rejection"]["rule"]
                                                            for r in dropped)), len(items))

