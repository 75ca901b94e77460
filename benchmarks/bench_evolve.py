"""Evol-Instruct throughput on the embedded model, and how well the engine saturates it.

1. Runs ``evolve`` (fresh run directory, no cache) on N seeds x R rounds with the embedded
   SmolLM2 server, recording every request the engine sends.
2. Prints kept instructions per hour and generated tokens per second.
3. Replays exactly those requests straight at the same server, all at once (bounded only by
   the backend's own concurrency limit, as in the run) with no engine, cache or chain
   dependencies: the server's raw concurrent tokens/s on the same work. The saturation ratio
   is engine tokens/s over raw tokens/s (1.0 = the engine keeps the server as busy as a raw
   flood would; chains are sequential per seed, so a few seeds cannot fill every slot).

    python benchmarks/bench_evolve.py                    # 20 seeds x 2 rounds
    python benchmarks/bench_evolve.py --seeds 40 --rounds 3 --max-tokens 256
    python benchmarks/bench_evolve.py --no-speculative-answer   # answers only after the judge

Seeds: ../shared/data/alpaca_seed_tasks.jsonl when present (not shipped with the project),
else examples/seeds.jsonl repeated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from instructforge.engine import RunDir
from instructforge.llm import LLM, Completion, ServerSettings, embedded_llm
from instructforge.llm.base import Message, SamplingParams
from instructforge.methods.evol_instruct import EvolConfig, Models, evolve, summarise

ROOT = Path(__file__).resolve().parent.parent
SHARED_SEEDS = ROOT.parent / "shared" / "data" / "alpaca_seed_tasks.jsonl"


class Recording(LLM):
    """Passes calls to ``inner`` and remembers each request (for the raw replay)."""

    def __init__(self, inner: LLM) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.max_concurrency = inner.max_concurrency
        self.requests: list[tuple[list[Message], SamplingParams]] = []
        self.cancelled = 0  # speculative answers given up before they finished

    def is_local(self) -> bool:
        return self.inner.is_local()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def chat(self, messages: list[Message], params: SamplingParams) -> Completion:
        try:
            out = await self.inner.chat(messages, params)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.requests.append((messages, params))  # finished calls only: the replay's work
        return out

    async def complete(self, text: str, params: SamplingParams) -> Completion:
        raise NotImplementedError("Evol-Instruct only chats")

    async def resolve_model(self) -> Any:
        resolve = getattr(self.inner, "resolve_model", None)
        return await resolve() if resolve else None


def write_seeds(path: Path, n: int) -> Path:
    source = SHARED_SEEDS if SHARED_SEEDS.exists() else ROOT / "examples" / "seeds.jsonl"
    texts = [json.loads(line)["instruction"] for line in source.open() if line.strip()]
    with path.open("w") as f:
        for i in range(n):
            suffix = "" if i < len(texts) else f" (variant {i // len(texts)})"
            f.write(json.dumps({"id": f"b{i:03d}", "instruction": texts[i % len(texts)] + suffix})
                    + "\n")
    return path


async def replay(llm: LLM, requests: list[tuple[list[Message], SamplingParams]]) -> tuple[int, float]:
    t0 = time.perf_counter()
    try:
        outs = await asyncio.gather(*(llm.chat(m, p) for m, p in requests))
    finally:
        await llm.aclose()  # its session belongs to this event loop
    return sum(o.completion_tokens for o in outs), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=256, help="answer cap")
    ap.add_argument("--evol-max-tokens", type=int, default=128)
    ap.add_argument("--parallel", type=int, default=8, help="server slots")
    ap.add_argument("--threads", type=int, default=None,
                    help="server CPU threads (0: all cores; default: as the embedded server "
                    "chooses, INSTRUCTFORGE_LLAMA_THREADS or every core but one)")
    ap.add_argument("--speculative-answer", action=argparse.BooleanOptionalAction,
                    default=True, help="start a child's answer while the judge runs")
    args = ap.parse_args()

    settings = ServerSettings(parallel=args.parallel)
    if args.threads is not None:
        settings.threads = args.threads
    inner = embedded_llm(settings=settings)
    async def warm_up() -> None:
        await inner.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=4))
        await inner.aclose()  # its session belongs to this event loop

    asyncio.run(warm_up())
    rec = Recording(inner)
    cfg = EvolConfig(rounds=args.rounds, response_max_tokens=args.max_tokens,
                     evol_max_tokens=args.evol_max_tokens,
                     speculative_answer=args.speculative_answer)
    with tempfile.TemporaryDirectory() as tmp:
        seeds = write_seeds(Path(tmp) / "seeds.jsonl", args.seeds)
        t0 = time.perf_counter()
        evolve(seeds, Path(tmp) / "run", cfg, models=Models(rec, rec, rec), progress=False)
        wall = time.perf_counter() - t0
        usage = json.loads(RunDir(Path(tmp) / "run").usage.read_text())["total"]
        summary = summarise(Path(tmp) / "run")
    steps = [s for m in usage.values() for s in m.values()]
    completion = sum(s["completion_tokens"] for s in steps)
    prompt = sum(s["prompt_tokens"] for s in steps)
    kept = summary["total"]["kept"]
    eng_tps = completion / wall

    raw_tokens, raw_wall = asyncio.run(replay(inner, rec.requests))
    raw_tps = raw_tokens / raw_wall

    print(f"Evol-Instruct, {args.seeds} seeds x {args.rounds} rounds, embedded {inner.model_id}")
    print(f"  requests            {len(rec.requests)} finished, {rec.cancelled} cancelled "
          f"(server slots {args.parallel}, threads {settings.threads}, client concurrency "
          f"{inner.max_concurrency}, speculative answers "
          f"{'on' if args.speculative_answer else 'off'})")
    print(f"  wall                {wall:.1f} s")
    print(f"  children            {summary['total']['attempted']} attempted, {kept} kept, "
          f"eliminated {summary['total']['eliminated']}")
    print(f"  kept / hour         {kept / wall * 3600:.0f}")
    print(f"  tokens              {prompt} prompt, {completion} generated")
    print(f"  engine tokens/s     {eng_tps:.1f} generated")
    print(f"  raw replay          {raw_tokens} tokens in {raw_wall:.1f} s = {raw_tps:.1f} tok/s")
    print(f"  saturation ratio    {eng_tps / raw_tps:.2f}")


if __name__ == "__main__":
    main()
