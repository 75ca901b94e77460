"""Do a judge's verdict probabilities separate valid evolutions from invalid ones?

For every triple of ``benchmarks/data/elimination_labelled.jsonl`` this runs the project's
elimination (every check) with the judge MODEL served by the embedded llama.cpp server, asking
each judge question under the choice grammar with ``logprobs``, and records the probability of
the eliminating choice (*Equal*, *Answer*, *No*) against the keeping one, from the first token
of each. It prints, per judge question, the AUC: the chance that a random invalid child gets a
higher probability of elimination than a random valid one (0.5: no signal; 1.0: a cut-off
exists that separates them). A judge whose AUC is near 0.5 cannot be rescued by a threshold.

    python benchmarks/bench_judge_probs.py embedded:qwen2.5-coder-1.5b

Answers are appended to ``--out`` (JSONL) and reused by a rerun.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import aiohttp
from bench_quality import LABELLED, eliminate, load

from instructforge.llm import make_llm
from instructforge.llm.structured import choice_grammar
from instructforge.methods import eliminate as el

ELIMINATING = {"Equal", "Answer", "No"}
TEMPLATES = ("equality_judge.jinja", "instruction_judge.jinja", "task_judge.jinja")


def p_eliminate(answer: dict[str, Any]) -> float:
    """P(eliminating choice) / (P(it) + P(keeping choice)), from first-token logprobs."""
    fire = next(c for c in answer["choices"] if c in ELIMINATING)
    keep = next(c for c in answer["choices"] if c != fire)
    top = answer["top"]

    def logprob(choice: str) -> float:
        heads = [t for t in top if t and choice.startswith(t)]
        return top[max(heads, key=len)] if heads else -30.0

    return 1 / (1 + math.exp(logprob(keep) - logprob(fire)))


def auc(valid: list[float], invalid: list[float]) -> float:
    return sum((n > p) + 0.5 * (n == p) for p in valid for n in invalid) / (
        len(valid) * len(invalid))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an embedded model spec, e.g. embedded:qwen2.5-coder-1.5b")
    ap.add_argument("--out", type=Path, default=Path("judge_probs.jsonl"))
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()
    triples = load(LABELLED)
    llm = make_llm(args.model)
    done = {}
    if args.out.exists():
        done = {d["prompt"]: d for d in map(json.loads, args.out.read_text().splitlines())}
    sem = asyncio.Semaphore(args.concurrency)
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        with args.out.open("a", encoding="utf-8") as fh:
            async def judge(prompt: str, choices: tuple[str, ...]) -> str:
                if prompt not in done:
                    async with sem, http.post(f"{llm.base_url}/chat/completions", json={
                        "model": llm.model, "messages": [{"role": "user", "content": prompt}],
                        "temperature": 0, "max_tokens": 16, "seed": 0,
                        "grammar": choice_grammar(choices), "logprobs": True,
                        "top_logprobs": 20}) as r:
                        choice = (await r.json())["choices"][0]
                    first = (choice.get("logprobs") or {}).get("content") or [{}]
                    done[prompt] = {"prompt": prompt, "choices": list(choices),
                                    "text": choice["message"]["content"],
                                    "top": {t["token"]: t["logprob"]
                                            for t in first[0].get("top_logprobs", [])}}
                    fh.write(json.dumps(done[prompt]) + "\n")
                return done[prompt]["text"]

            cfg = el.EliminationConfig.preset("all")
            await asyncio.gather(*[eliminate(t, cfg, judge) for t in triples])
    await llm.aclose()
    print(f"{len(done)} verdicts ({time.perf_counter() - t0:.0f} s) by {args.model}")
    for template in TEMPLATES:
        valid, invalid = [], []
        for t in triples:
            child, _ = el.normalise_instruction(t["raw_evolution"])
            answer = done.get(el.render_judge(template, t["parent"], child))
            if answer:
                (valid if t["valid"] else invalid).append(p_eliminate(answer))
        if valid and invalid:
            print(f"  {template:<24} asked of {len(valid)} valid, {len(invalid)} invalid: "
                  f"AUC {auc(valid, invalid):.3f}; P(eliminate) valid "
                  f"{min(valid):.2f}-{max(valid):.2f}, invalid {min(invalid):.2f}-"
                  f"{max(invalid):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
