"""Magpie throughput on the embedded model: pairs/hour, tokens/s, and engine saturation.

Each repetition runs the same Magpie conversations two ways against one embedded llama.cpp
server, with the same seeds and the same request concurrency:

- **raw**: a bare aiohttp client that does exactly Magpie's calls (pre-query completion, query
  filter, response completion, per conversation) and nothing else;
- **engine**: the real job (``magpie()``: request cache, store, filters, dedup, progress off).

Figures: instruction/response pairs per hour (kept, and generated), completion tokens/s, and
the saturation ratio = engine tokens/s / raw tokens/s (the engine's overhead measure; target >= 0.95).

    python benchmarks/bench_magpie.py --n 32 --max-tokens 128
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import aiohttp

from instructforge.engine import RunDir
from instructforge.llm import ServerSettings, embedded_llm
from instructforge.llm.templates import get_template
from instructforge.methods.magpie import (
    Magpie,
    MagpieConfig,
    magpie,
    pick_category,
    system_prompt_for,
)
from instructforge.methods.respond import ModelConfig


async def raw_magpie(url: str, model: str, job: Magpie, n: int, conc: int) -> tuple[int, int, float]:
    """Magpie's calls with a bare client: (completion tokens, pairs generated, seconds)."""
    sem = asyncio.Semaphore(conc)
    tpl, cfg = job.template, job.cfg
    tokens = pairs = 0

    async def call(session: aiohttp.ClientSession, prompt: str, p) -> dict:
        nonlocal tokens
        body = {"model": model, "prompt": prompt, "temperature": p.temperature,
                "top_p": p.top_p, "max_tokens": p.max_tokens, "seed": p.seed, "stop": list(p.stop)}
        async with sem:
            for attempt in range(3):  # a busy server may drop a kept-alive connection
                try:
                    async with session.post(f"{url}/completions", json=body) as r:
                        data = await r.json()
                    break
                except aiohttp.ServerDisconnectedError:
                    if attempt == 2:
                        raise
        tokens += data["usage"]["completion_tokens"]
        return data["choices"][0]

    async def conversation(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal pairs
        rid = f"magpie-{i}"
        system = system_prompt_for(cfg, tpl, pick_category(cfg.categories, rid, cfg.seed))
        kw = {"system": system, "use_default_system": cfg.use_default_system, "bos": cfg.add_bos}
        messages: list[dict[str, str]] = []
        for turn in range(1, cfg.turns + 1):
            q = await call(session, tpl.query_prompt(messages, **kw), job.query_params(rid, turn))
            query = q["text"].strip()
            messages.append({"role": "user", "content": query})
            if job.filters.check(query, field="instruction",
                                 finish_reason=q.get("finish_reason") or "stop"):
                return
            a = await call(session, tpl.response_prompt(messages, **kw),
                           job.response_params(rid, turn))
            messages.append({"role": "assistant", "content": a["text"].strip()})
            pairs += 1

    t0 = time.perf_counter()
    # No total timeout: on a loaded CPU one answer can take minutes.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as s:
        await asyncio.gather(*(conversation(s, i) for i in range(n)))
    return tokens, pairs, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="conversations per repetition")
    ap.add_argument("--turns", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=128, help="answer cap")
    ap.add_argument("--query-max-tokens", type=int, default=128)
    ap.add_argument("--parallel", type=int, default=8, help="server slots")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    llm = embedded_llm(settings=ServerSettings(parallel=args.parallel))
    conc = llm.max_concurrency
    raw_tok = raw_s = eng_tok = eng_s = 0.0
    kept_pairs = gen_pairs = 0
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            cfg = MagpieConfig(llm=ModelConfig(model_path=llm.embedded_path), n=args.n,
                               turns=args.turns, template="smollm2", seed=1000 + rep,
                               query_max_tokens=args.query_max_tokens,
                               response_max_tokens=args.max_tokens)
            job = Magpie(cfg, llm, get_template("smollm2"))
            tok, _, dt = asyncio.run(raw_magpie(llm.base_url, llm.model, job, args.n, conc))
            raw_tok += tok
            raw_s += dt
            print(f"rep {rep} raw:    {tok:6d} tokens in {dt:6.1f}s = {tok / dt:6.1f} tok/s",
                  flush=True)
            run = Path(tmp) / f"run{rep}"
            t0 = time.perf_counter()
            result = magpie(run, cfg, llm=llm, progress=False)
            dt = time.perf_counter() - t0
            usage = json.loads(RunDir(run).usage.read_text())
            tok = sum(s["completion_tokens"] for m in usage["total"].values()
                      for s in m.values())
            eng_tok += tok
            eng_s += dt
            kept_pairs += result.kept * args.turns
            gen_pairs += sum(len(r["messages"]) // 2 for r in RunDir(run).kept()) + sum(
                len(r["messages"]) // 2 for r in RunDir(run).dropped())
            print(f"rep {rep} engine: {tok:6d} tokens in {dt:6.1f}s = {tok / dt:6.1f} tok/s, "
                  f"{result.kept}/{args.n} conversations kept", flush=True)
    print(f"\nN={args.n} conversations x {args.turns} turn(s) x {args.reps} reps, "
          f"request concurrency {conc}, {args.parallel} slots, answers <= {args.max_tokens} tok")
    print(f"pairs/hour (kept)      {kept_pairs / eng_s * 3600:9.0f}")
    print(f"pairs/hour (generated) {gen_pairs / eng_s * 3600:9.0f}")
    print(f"raw    {raw_tok / raw_s:7.1f} tok/s")
    print(f"engine {eng_tok / eng_s:7.1f} tok/s")
    print(f"saturation ratio (engine / raw) = {(eng_tok / eng_s) / (raw_tok / raw_s):.3f}")


if __name__ == "__main__":
    main()
