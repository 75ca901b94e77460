"""Elimination accuracy on a hand-labelled set, and an Evol-Instruct run's quality per round.

1. For every triple of ``benchmarks/data/elimination_labelled.jsonl`` (parent, the evolving
   model's raw output, the cleaned child, the answer; labelled by hand as a valid evolution
   or not, and why) runs the project's elimination exactly as ``evolve`` does, once with the
   paper's four rules and once with every check, for each judge model given. Prints the
   precision of what is kept (share of kept children that are valid), the recall of valid
   evolutions (share of valid children kept), how many children were kept, and how many
   judge verdicts could not be read.
2. ``--evolve MODEL``: runs ``evolve`` with MODEL in every role on N held-out seeds x R rounds
   and prints the keep rate per operation and round and, with MODEL as the InsTag tagger,
   the complexity (tags per instruction) and diversity (distinct tags) of the seeds and of
   each round's kept instructions.

    python benchmarks/bench_quality.py --judge embedded --judge embedded:qwen2.5-coder-1.5b
    python benchmarks/bench_quality.py --judge embedded:qwen2.5-coder-1.5b \
        --evolve embedded:qwen2.5-coder-1.5b --seeds 20 --rounds 3

Judge answers are cached in ``--cache-dir`` (default: a folder under the system temp dir),
so a rerun only asks what it has not asked before; pass a new folder for a cold run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from instructforge.analysis.tags import complexity_diversity, tag
from instructforge.engine import Context, RunDir
from instructforge.engine.cache import RequestCache
from instructforge.llm import LLM, make_llm
from instructforge.llm.base import SamplingParams
from instructforge.methods import eliminate as el
from instructforge.methods.evol_instruct import EvolConfig, evolve, summarise
from instructforge.methods.respond import ModelConfig
from instructforge.records import instruction

ROOT = Path(__file__).resolve().parent.parent
LABELLED = ROOT / "benchmarks" / "data" / "elimination_labelled.jsonl"
SHARED_SEEDS = ROOT.parent / "shared" / "data" / "alpaca_seed_tasks.jsonl"
JUDGE_MAX_TOKENS = 16  # evolve's default


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


async def eliminate(t: dict[str, Any], cfg: el.EliminationConfig, judge: el.Judge
                    ) -> list[el.Finding]:
    """The elimination ``evolve`` applies to one child, on the stored triple."""
    child, norms = el.normalise_instruction(t["raw_evolution"])
    findings = await el.check_instruction(
        t["parent"], child, judge, cfg, normalisations=norms,
        truncated=t["evolution_finish_reason"] == "length", operation=t["operation"])
    if el.first_fired(findings) is None:
        findings += el.check_response(t["answer"], cfg,
                                      truncated=t["answer_finish_reason"] == "length")
    return findings


def scores(triples: list[dict[str, Any]], kept: list[bool]) -> dict[str, Any]:
    valid = [t["valid"] for t in triples]
    k = sum(kept)
    tp = sum(v and s for v, s in zip(valid, kept, strict=True))
    return {
        "kept": k,
        "precision": round(tp / k, 3) if k else None,
        "recall": round(tp / sum(valid), 3) if sum(valid) else None,
        "valid_kept": tp,
    }


async def accuracy(triples: list[dict[str, Any]], spec: str, cache_dir: Path,
                   concurrency: int) -> dict[str, Any]:
    llm = make_llm(spec)
    ctx = Context(RequestCache(cache_dir / f"{spec.replace('/', '_').replace(':', '_')}.sqlite"))
    sem = asyncio.Semaphore(concurrency)

    async def ask(prompt: str, choices: tuple[str, ...]) -> str:
        async with sem:
            out = await ctx.chat(llm, [{"role": "user", "content": prompt}],
                                 SamplingParams(0.0, 1.0, JUDGE_MAX_TOKENS, 0, choices=choices),
                                 step="judge")
        return out.text

    out: dict[str, Any] = {"judge": spec}
    t0 = time.perf_counter()
    try:
        for preset in ("paper", "all"):
            cfg = el.EliminationConfig.preset(preset)
            results = await asyncio.gather(*[eliminate(t, cfg, ask) for t in triples])
            kept = [el.first_fired(f) is None for f in results]
            dicts = [[f.to_dict() for f in fs] for fs in results]
            asked = sum(1 for fs in dicts for f in fs if (f.get("evidence") or {}).get("judge"))
            fired = Counter(el.first_fired(f).rule for f in results if el.first_fired(f))
            # Per evolving model, and per split: "design" triples were read while the checks
            # were written, "holdout" ones were collected and labelled after.
            groups = sorted({t["model"] for t in triples} | {t["split"] for t in triples})
            by_source = {
                g: scores([t for t in triples if g in (t["model"], t["split"])],
                          [k for t, k in zip(triples, kept, strict=True)
                           if g in (t["model"], t["split"])])
                for g in groups
            }
            out[preset] = {
                **scores(triples, kept),
                "judge_verdicts": asked,
                "unreadable": sum(el.unreadable_verdicts(d) for d in dicts),
                "eliminated_by": dict(fired.most_common()),
                "by_source": by_source,
                "wrongly_kept": [t["id"] for t, k in zip(triples, kept, strict=True)
                                 if k and not t["valid"]],
                "wrongly_eliminated": {t["id"]: el.first_fired(f).rule for t, f in
                                       zip(triples, results, strict=True)
                                       if t["valid"] and el.first_fired(f)},
            }
        u = ctx.usage.as_dict()
        out["calls"] = {m: {s: v["requests"] for s, v in steps.items()} for m, steps in u.items()}
        out["unconstrained"] = sum(v["unconstrained"] for steps in u.values()
                                   for v in steps.values())
        out["seconds"] = round(time.perf_counter() - t0, 1)
    finally:
        await llm.aclose()
    return out


def print_accuracy(res: dict[str, Any], n: int, n_valid: int) -> None:
    print(f"\njudge {res['judge']}: {n} labelled triples, {n_valid} valid "
          f"({res['seconds']} s, {res['unconstrained']} calls unconstrained)")
    print(f"  {'rules':<6} {'kept':>5} {'precision':>9} {'recall':>7} {'verdicts':>8} "
          f"{'unreadable':>10}")
    for preset in ("paper", "all"):
        r = res[preset]
        p = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        rc = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        print(f"  {preset:<6} {r['kept']:>5} {p:>9} {rc:>7} "
              f"{r['judge_verdicts']:>8} {r['unreadable']:>10}")
        for src, s in r["by_source"].items():
            sp = "-" if s["precision"] is None else f"{s['precision']:.3f}"
            sr = "-" if s["recall"] is None else f"{s['recall']:.3f}"
            print(f"    {src:<8} kept {s['kept']:>3}  precision {sp}  recall {sr}")
        print(f"    eliminated by: {r['eliminated_by']}")
        print(f"    wrongly kept: {', '.join(r['wrongly_kept']) or 'none'}")
        wrong = ", ".join(f"{k} ({v})" for k, v in r["wrongly_eliminated"].items())
        print(f"    wrongly eliminated: {wrong or 'none'}")


def held_out_seeds(path: Path, n: int, out: Path) -> Path:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines()[-n:]:  # the set's tail
        task = json.loads(line)
        given = (task.get("instances") or [{}])[0].get("input", "").strip()
        text = task["instruction"].strip() + (f"\n{given}" if given else "")
        rows.append({"id": task["id"], "instruction": text})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


async def tag_all(records: list[dict[str, Any]], llm: LLM, ctx: Context) -> list[Any]:
    async def chat(llm: LLM, messages: Any, params: SamplingParams, step: str) -> Any:
        return await ctx.chat(llm, messages, params, step=step)

    results = await asyncio.gather(*[tag(r, llm, chat=chat) for r in records])
    return [r["tags"] for r in results]


def evolve_quality(spec: str, seeds: int, rounds: int, run_dir: Path,
                   response_max_tokens: int = 256) -> None:
    seeds_file = held_out_seeds(SHARED_SEEDS, seeds, run_dir.parent / "held_out_seeds.jsonl")
    role = ModelConfig(spec)
    cfg = EvolConfig(evol_llm=role, response_llm=role, judge_llm=role, rounds=rounds,
                     response_max_tokens=response_max_tokens)
    t0 = time.perf_counter()
    evolve(seeds_file, run_dir, cfg, progress=False)
    print(f"\nevolve with {spec}: {seeds} seeds x {rounds} rounds in "
          f"{time.perf_counter() - t0:.0f} s -> {run_dir}")
    summary = summarise(run_dir)
    print(f"  {'operation':<26} {'attempted':>9} {'kept':>5} {'keep rate':>9}")
    for row in summary["per_operation"]:
        print(f"  {row['operation']:<26} {row['attempted']:>9} {row['kept']:>5} "
              f"{row['kept'] / row['attempted']:>9.0%}")
    t = summary["total"]
    print(f"  {'all':<26} {t['attempted']:>9} {t['kept']:>5} {t['kept'] / t['attempted']:>9.0%}")
    print(f"  eliminated by: {t['eliminated']}")

    kept = RunDir(run_dir).kept()
    seeds_rec = [{"id": json.loads(line)["id"], "messages": [
        {"role": "user", "content": json.loads(line)["instruction"]}]}
        for line in seeds_file.read_text().splitlines()]
    by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in kept:
        by_round[r["lineage"]["round"]].append(r)

    async def run_tags() -> dict[int, Any]:
        llm = make_llm(spec)
        ctx = Context(RequestCache(run_dir / "tags-cache.sqlite"))
        try:
            out = {0: await tag_all(seeds_rec, llm, ctx)}
            for k in sorted(by_round):
                out[k] = await tag_all(by_round[k], llm, ctx)
            return out
        finally:
            await llm.aclose()

    tags = asyncio.run(run_tags())
    print(f"  InsTag by {spec}:")
    print(f"  {'round':<6} {'kept':>5} {'tagged':>6} {'complexity':>10} {'diversity':>9} "
          f"{'words':>6}")
    for k, tag_lists in sorted(tags.items()):
        recs = seeds_rec if k == 0 else by_round[k]
        cd = complexity_diversity(tag_lists)
        words = sum(len(instruction(r).split()) for r in recs) / max(1, len(recs))
        cx = "-" if cd["complexity"] is None else f"{cd['complexity']:.2f}"
        print(f"  {('seeds' if k == 0 else k)!s:<6} {len(recs):>5} {cd['tagged']:>6} "
              f"{cx:>10} {cd['diversity']:>9} {words:>6.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--judge", action="append", default=None,
                    help="judge model spec (repeatable; default: embedded)")
    ap.add_argument("--set", default=str(LABELLED), help="labelled triples (JSONL)")
    ap.add_argument("--evolve", default=None, help="model spec for the evolve run (part 2)")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--response-max-tokens", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "bench_quality"))
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    triples = load(Path(args.set))
    n_valid = sum(t["valid"] for t in triples)
    results = []
    for spec in args.judge or (["embedded"] if not args.evolve else []):
        res = asyncio.run(accuracy(triples, spec, cache, args.concurrency))
        print_accuracy(res, len(triples), n_valid)
        results.append(res)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.evolve:
        run_dir = cache / f"evolve-{int(time.time())}" / "run"
        run_dir.parent.mkdir(parents=True)
        evolve_quality(args.evolve, args.seeds, args.rounds, run_dir, args.response_max_tokens)


if __name__ == "__main__":
    main()
