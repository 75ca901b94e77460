"""``select``: keep the most useful records of a run by a score, into a new run directory.

Scores (``--by``):

- ``ifd``: Instruction-Following Difficulty (Li et al. 2023, "From Quantity to Quality"),
  ``loss(response | instruction) / loss(response alone)`` under a student causal LM
  (see :mod:`instructforge.tuning.ifd`). A record whose IFD is >= 1 is *misaligned* (the
  instruction does not help predict the response) and is dropped first, whatever ``top``
  says; the rest are ranked from the highest IFD (hardest to follow, most to learn) down.
  ``ic_ifd=True`` scores IC-IFD instead (see :mod:`instructforge.tuning.ifd`). With
  ``base_url`` the losses come from an OpenAI-compatible server's prompt log-probabilities
  (vLLM's ``echo``; :class:`~instructforge.tuning.ifd.ServerIFDScorer`) instead of a local
  student.
- ``quality`` / ``difficulty``: the judge's rating score from ``analyze`` (in the records'
  ``metadata.analysis`` or the source's judge run), highest first.
- ``reward``: a number in ``metadata.reward`` (or ``metadata.reward.score``), highest first.

Ties keep file order. Kept records carry ``metadata.selection = {"by", "score", "rank"}``
(and for IFD the two losses); records below the cut go to ``rejected.jsonl`` with the same
fields in the rejection's evidence. The new run is built in ``OUT.partial`` and renamed.

>>> parse_top("25%"), parse_top("100")
((0.25, None), (None, 100))
>>> cut(10, (0.25, None)), cut(10, (None, 100))
(3, 10)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from instructforge.analysis.analyze import output_paths
from instructforge.analysis.dataset import Dataset, check_new_run, load_dataset, write_derived_run
from instructforge.analysis.judge import read_verdicts, verdict_from_metadata
from instructforge.errors import InstructForgeError
from instructforge.llm.urls import redact_urls
from instructforge.records import instruction, rejected, response

SCORES = ("ifd", "quality", "difficulty", "reward")
STAGE = "select"

# ``ifd_fn(pairs) -> [(loss given the instruction, loss alone), ...]`` for (instruction,
# response) pairs; the default is instructforge.tuning.ifd.IFDScorer (tests pass a fake).
LossFn = Callable[[Sequence[tuple[str, str]]], list[tuple[float, float]]]


class SelectError(InstructForgeError, ValueError):
    """``select`` cannot run as asked (bad --top, missing scores, output exists)."""


@dataclass
class SelectConfig:
    """What ``select_dataset`` scores and how many records it keeps."""

    by: str = "ifd"
    top: str = "25%"  # "N%" of the records, or a count N
    ic_ifd: bool = False
    model: str = "embedded"  # the student for IFD: a HF model folder, a .gguf, 'embedded'
    batch_size: int = 8
    max_tokens: int = 1024  # longer instruction/response token lists are cut to this
    overwrite: bool = False
    # The server path (IFD from prompt log-probabilities); ``model`` then names the served
    # model ('embedded': the server's only one). The API key is never part of the config.
    base_url: str | None = None
    prompt_template: str | None = None  # default: prompts/tuning/ifd_server.jinja
    max_concurrency: int | None = None
    timeout: float | None = None
    max_retries: int | None = None

    def __post_init__(self) -> None:
        if self.by not in SCORES:
            raise SelectError(f"--by must be one of {list(SCORES)}, got {self.by!r}")
        parse_top(self.top)
        if self.ic_ifd and self.by != "ifd":
            raise SelectError("--ic-ifd applies to --by ifd only")
        if self.base_url and self.by != "ifd":
            raise SelectError("--base-url applies to --by ifd only (the other scores are "
                              "read from the records)")
        if self.prompt_template and not self.base_url:
            raise SelectError("--prompt-template is for the server path (--base-url); the "
                              "local student scores in its own chat template")
        if self.prompt_template and not Path(self.prompt_template).is_file():
            raise SelectError(f"--prompt-template {self.prompt_template}: no such file")

    def scorer(self) -> str:
        """Who computes the scores, in words (for --dry-run)."""
        if self.by != "ifd":
            return f"the {self.by} score already in the records"
        what = "IC-IFD" if self.ic_ifd else "IFD"
        if self.base_url:
            served = ("the server's only model" if self.model in ("embedded", "")
                      else self.model)
            return (f"{what} from prompt log-probabilities of {served} at "
                    f"{redact_urls(self.base_url)} (2 requests per record, template "
                    f"{self.prompt_template or 'prompts/tuning/ifd_server.jinja'})")
        return f"{what} from the local student {self.model} (transformers, CPU)"


def parse_top(top: str) -> tuple[float | None, int | None]:
    """``("25%" -> (0.25, None))``, ``("100" -> (None, 100))``; a clear error otherwise."""
    text = str(top).strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1]) / 100
            if not 0 < share <= 1:
                raise ValueError
            return share, None
        n = int(text)
        if n < 1:
            raise ValueError
        return None, n
    except ValueError:
        raise SelectError(f"--top {top!r}: give a percentage in (0, 100] such as 25% "
                          "or a record count such as 500") from None


def cut(n_records: int, top: tuple[float | None, int | None]) -> int:
    """How many of ``n_records`` ranked records ``top`` keeps (a share rounds up)."""
    share, count = top
    if share is not None:
        return min(n_records, math.ceil(share * n_records))
    return min(n_records, count or 0)


def rating_scores(ds: Dataset, kind: str) -> dict[str, float]:
    """Each record's ``kind`` rating score from metadata or the source's judge run; a clear
    error naming a record without one."""
    verdicts = read_verdicts(output_paths(ds.source)[0] / "judge")
    verdicts.update({r["id"]: v for r in ds.records if (v := verdict_from_metadata(r)) is not None})
    scores = {}
    for r in ds.records:
        rating = ((verdicts.get(r["id"]) or {}).get("ratings") or {}).get(kind)
        if not rating or rating.get("status") != "ok" or rating.get("score") is None:
            raise SelectError(
                f"{ds.source}: record {r['id']!r} has no readable {kind} rating; run "
                f"`instructforge analyze {ds.source} --judge MODEL --ratings {kind}` first "
                "(or `filter` the unrated ones out)")
        scores[r["id"]] = float(rating["score"])
    return scores


def reward_scores(ds: Dataset) -> dict[str, float]:
    """``metadata.reward`` (a number, or an object with ``score``) of every record."""
    scores = {}
    for r in ds.records:
        value = (r.get("metadata") or {}).get("reward")
        if isinstance(value, dict):
            value = value.get("score")
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise SelectError(
                f"{ds.source}: record {r['id']!r} has no reward score (a number in "
                "metadata.reward or metadata.reward.score); --by reward needs one on "
                "every record, so use --by ifd, quality or difficulty instead")
        scores[r["id"]] = float(value)
    return scores


def ifd_pairs(ds: Dataset) -> list[tuple[str, str]]:
    """Every record's (instruction, response); a clear error naming one without both."""
    pairs = [(instruction(r), response(r)) for r in ds.records]
    for r, (ins, res) in zip(ds.records, pairs, strict=True):
        if not ins or not res:
            raise SelectError(f"{ds.source}: record {r['id']!r} has no "
                              f"{'instruction' if not ins else 'response'}; IFD needs both")
    return pairs


def default_loss_fn(cfg: SelectConfig, api_key: str | None = None) -> LossFn:
    """The IFD scorer ``cfg`` asks for: the server's prompt log-probabilities with
    ``base_url``, else the local student."""
    if cfg.base_url:
        from instructforge.llm import make_llm
        from instructforge.tuning.ifd import ServerIFDScorer

        llm = make_llm(cfg.model, base_url=cfg.base_url, api_key=api_key,
                       max_concurrency=cfg.max_concurrency, timeout=cfg.timeout,
                       max_retries=cfg.max_retries)
        return ServerIFDScorer(llm, max_tokens=cfg.max_tokens, in_context=cfg.ic_ifd,
                               template=cfg.prompt_template)
    from instructforge.tuning.ifd import IFDScorer

    return IFDScorer(cfg.model, batch_size=cfg.batch_size, max_tokens=cfg.max_tokens,
                     in_context=cfg.ic_ifd)


def ifd_scores(ds: Dataset, cfg: SelectConfig, loss_fn: LossFn | None = None,
               api_key: str | None = None) -> dict[str, dict[str, float]]:
    """``{id: {"score", "loss_given_instruction", "loss_alone"}}`` for every record."""
    pairs = ifd_pairs(ds)
    if loss_fn is None:
        loss_fn = default_loss_fn(cfg, api_key)
    losses = loss_fn(pairs)
    return {r["id"]: {"score": given / alone if alone > 0 else math.inf,
                      "loss_given_instruction": given, "loss_alone": alone}
            for r, (given, alone) in zip(ds.records, losses, strict=True)}


@dataclass
class SelectResult:
    """What ``select_dataset`` wrote."""

    run_dir: Path
    by: str
    kept: int
    below_cut: int
    misaligned: int  # IFD >= 1
    scored: int

    def summary(self) -> str:
        mis = (f", {self.misaligned} misaligned ({self.by.upper()} >= 1)"
               if self.by in ("ifd", "ic_ifd") else "")
        return (f"{self.kept} of {self.scored} kept by {self.by}; rejected {self.below_cut} "
                f"below the cut{mis} -> {self.run_dir}")


def rank(scores: dict[str, float], ids: Sequence[str], top: tuple[float | None, int | None],
         *, misaligned_at: float | None = None) -> tuple[list[str], list[str], list[str]]:
    """``(kept, below_cut, misaligned)`` ids: drop ids scoring >= ``misaligned_at``, rank the
    rest by score, highest first (ties in ``ids`` order), keep the top of them.

    >>> rank({"a": 0.5, "b": 0.9, "c": 1.2}, ["a", "b", "c"], (None, 1), misaligned_at=1.0)
    (['b'], ['a'], ['c'])
    """
    bad = [i for i in ids if misaligned_at is not None and scores[i] >= misaligned_at]
    ok = sorted((i for i in ids if i not in set(bad)), key=lambda i: -scores[i])
    n = cut(len(ids), top)
    return ok[:n], ok[n:], bad


def _checked_source(source: str | Path | Dataset, out: Path, cfg: SelectConfig) -> Dataset:
    """The source dataset, after the checks that need no model: the output is new, there
    are records, and they hold what the score needs."""
    ds = source if isinstance(source, Dataset) else load_dataset(source)
    check_new_run(out, ds, overwrite=cfg.overwrite, error=SelectError)
    if not ds.records:
        raise SelectError(f"{ds.source}: no kept records to select from")
    if cfg.by == "ifd":
        ifd_pairs(ds)
    return ds


def plan_select(source: str | Path | Dataset, out_dir: str | Path,
                config: SelectConfig | None = None) -> dict[str, Any]:
    """What :func:`select_dataset` would do (``--dry-run``): the source checked (and the
    rating or reward scores read), nothing scored by a model, nothing written."""
    cfg = config or SelectConfig()
    out = Path(out_dir)
    ds = _checked_source(source, out, cfg)
    if cfg.by == "reward":
        reward_scores(ds)
    elif cfg.by != "ifd":
        rating_scores(ds, cfg.by)
    elif cfg.base_url:
        from instructforge.tuning.ifd import render_prefix, server_template

        render_prefix(server_template(cfg.prompt_template), "x")
    n = len(ds.records)
    return {"source": str(ds.source), "records": n, "by": "ic_ifd" if cfg.ic_ifd else cfg.by,
            "scorer": cfg.scorer(),
            "keep": f"at most {cut(n, parse_top(cfg.top))} (--top {cfg.top})"
                    + (", after dropping those with IFD >= 1" if cfg.by == "ifd" else ""),
            "output": str(out)}


def select_dataset(
    source: str | Path | Dataset,
    out_dir: str | Path,
    config: SelectConfig | None = None,
    *,
    loss_fn: LossFn | None = None,
    api_key: str | None = None,
) -> SelectResult:
    """Score the records of ``source`` and write the top ones to the new run ``out_dir``.

    The cut is taken of *all* records (``--top 25%`` of 100 keeps at most 25), after the
    misaligned ones are dropped for IFD. ``api_key`` (the server path) is used for requests
    only, never written.
    """
    cfg = config or SelectConfig()
    top = parse_top(cfg.top)
    out = Path(out_dir)
    ds = _checked_source(source, out, cfg)

    extra: dict[str, dict[str, float]] = {}
    if cfg.by == "ifd":
        extra = ifd_scores(ds, cfg, loss_fn, api_key)
        scores = {i: e["score"] for i, e in extra.items()}
    elif cfg.by == "reward":
        scores = reward_scores(ds)
    else:
        scores = rating_scores(ds, cfg.by)
    ids = [r["id"] for r in ds.records]
    kept_ids, below, bad = rank(scores, ids, top, misaligned_at=1.0 if cfg.by == "ifd" else None)
    by_name = "ic_ifd" if cfg.ic_ifd else cfg.by
    ranks = {i: n for n, i in enumerate([*kept_ids, *below], start=1)}

    def info(rid: str) -> dict[str, Any]:
        return {"by": by_name, "score": scores[rid], "rank": ranks.get(rid), **{
            k: v for k, v in extra.get(rid, {}).items() if k != "score"}}

    by_id = {r["id"]: r for r in ds.records}
    kept = [{**by_id[i], "metadata": {**(by_id[i].get("metadata") or {}), "selection": info(i)}}
            for i in kept_ids]
    n_kept = len(kept_ids)
    dropped = [rejected(by_id[i], stage=STAGE, rule=f"{by_name}_below_top",
                        reason=f"{by_name} {scores[i]:.4g} ranks {ranks[i]} of the {len(ranks)} ranked, "
                               f"below the top {n_kept} (--top {cfg.top})", evidence=info(i))
               for i in below]
    dropped += [rejected(by_id[i], stage=STAGE, rule=f"{by_name}_misaligned",
                         reason=f"{by_name} {scores[i]:.4g} >= 1: the instruction does not "
                                "help the model predict the response", evidence=info(i))
                for i in bad]

    write_derived_run(out, ds, kept, dropped, redact_urls({
        "job": "select", "source": str(ds.source), **json.loads(json.dumps(asdict(cfg)))}))
    return SelectResult(out, by_name, n_kept, len(below), len(bad), len(ids))

