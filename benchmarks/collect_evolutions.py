"""Collect real evolutions for the labelled elimination set (benchmarks/data/).

For N held-out seeds (the Alpaca seed tasks in ../shared/data, with their input appended),
one Evol-Instruct step with the project's own operation templates: the evol model rewrites
the parent (operation drawn per seed), the child is cleaned as the method cleans it, and the
response model answers it. Writes one unlabelled triple per line (parent, raw evolution,
child, answer, finish reasons); a person then labels each as a valid evolution or not, and
why (see benchmarks/data/README.md).

    python benchmarks/collect_evolutions.py --model embedded --seeds 70 -o /tmp/smol.jsonl
    python benchmarks/collect_evolutions.py --model embedded:qwen2.5-coder-1.5b \
        --seeds 70 --offset 70 -o /tmp/qwen.jsonl
    # a second round: evolve children again (JSONL of {"id", "instruction"})
    python benchmarks/collect_evolutions.py --model embedded:qwen2.5-coder-1.5b \
        --parents /tmp/children.jsonl -o /tmp/qwen-r2.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from pathlib import Path
from typing import Any

from instructforge.llm import make_llm
from instructforge.llm.base import SamplingParams
from instructforge.methods.eliminate import normalise_instruction
from instructforge.methods.evol_instruct import load_operations
from instructforge.records import stable_seed

ROOT = Path(__file__).resolve().parent.parent
SHARED_SEEDS = ROOT.parent / "shared" / "data" / "alpaca_seed_tasks.jsonl"


def seed_texts(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        task = json.loads(line)
        text = task["instruction"].strip()
        given = (task.get("instances") or [{}])[0].get("input", "").strip()
        out.append((task["id"], f"{text}\n{given}" if given else text))
    return out


async def collect(args: argparse.Namespace) -> list[dict[str, Any]]:
    llm = make_llm(args.model)
    ops = load_operations()
    names = sorted(ops)
    if args.parents:
        seeds = [(r["id"], r["instruction"]) for r in map(json.loads, Path(args.parents)
                 .read_text(encoding="utf-8").splitlines())]
    else:
        seeds = seed_texts(Path(args.input))[args.offset : args.offset + args.seeds]
    sem = asyncio.Semaphore(args.concurrency)

    async def one(seed_id: str, parent: str) -> dict[str, Any]:
        async with sem:
            op = random.Random(stable_seed(args.seed, seed_id, "op")).choice(names)
            evo = await llm.chat(
                [{"role": "user", "content": ops[op].render(parent)}],
                SamplingParams(0.7, 1.0, args.evol_max_tokens,
                               stable_seed(args.seed, seed_id, "evolve")),
            )
            child, norms = normalise_instruction(evo.text)
            reply = await llm.chat(
                [{"role": "user", "content": child or parent}],
                SamplingParams(0.7, 1.0, args.max_tokens, stable_seed(args.seed, seed_id, "r")),
            )
            print(f"{seed_id} {op}: {child[:70]!r}", flush=True)
            return {
                "id": f"{args.tag}-{seed_id}", "model": args.tag, "operation": op,
                "parent": parent, "raw_evolution": evo.text, "child": child,
                "normalisations": [n["name"] for n in norms],
                "evolution_finish_reason": evo.finish_reason,
                "answer": reply.text.strip(), "answer_finish_reason": reply.finish_reason,
            }

    try:
        return list(await asyncio.gather(*[one(i, t) for i, t in seeds]))
    finally:
        await llm.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--tag", default=None, help="model tag in ids (default from --model)")
    ap.add_argument("--input", default=str(SHARED_SEEDS))
    ap.add_argument("--seeds", type=int, default=70)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--parents", default=None, help="JSONL of {id, instruction} to evolve "
                    "instead of the seed tasks (e.g. kept children, for a second round)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--evol-max-tokens", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    args.tag = args.tag or ("qwen" if "qwen" in args.model else "smollm2")
    rows = asyncio.run(collect(args))
    Path(args.output).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                 encoding="utf-8")
    print(f"wrote {len(rows)} triples to {args.output}")


if __name__ == "__main__":
    main()
