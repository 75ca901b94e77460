"""Paying for an API: streaming vs the Batch API, and 429s with and without rate control.

Against the development server (instant answers, an emulated Batch API and an optional
requests-per-window limit), runs ``evolve`` on N seeds and prints:

1. streaming vs ``--batch``: wall time, HTTP requests the server saw (for batch mode: file
   uploads, batch creations, polls and downloads), and the batches made;
2. against a server that answers 429 above a rate limit: the share of requests answered
   429 with a fixed concurrency, with adaptive concurrency (the default), and with ``rpm``
   set to the limit.

    python benchmarks/bench_paid.py                       # 200 seeds x 2 rounds
    python benchmarks/bench_paid.py --seeds 50 --limit 100 --window 10

The rate limit is scaled (``--limit`` requests per ``--window`` seconds) so the run takes
minutes, not hours; ``rpm`` is set to the same rate per minute.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import write_instructions

from instructforge.devserver import DevServer
from instructforge.llm import openai as openai_backend
from instructforge.llm.config import ModelConfig
from instructforge.methods.evol_instruct import EvolConfig, evolve


def run(seeds: Path, out: Path, rounds: int, srv: DevServer, **model: Any) -> dict[str, Any]:
    role = ModelConfig("dev", srv.url, max_retries=8, **model)
    cfg = EvolConfig(evol_llm=role, response_llm=role, judge_llm=role, rounds=rounds,
                     concurrency=10_000 if model.get("batch") else 64)
    before, t0 = srv.requests, time.perf_counter()
    res = evolve(seeds, out, cfg, progress=False)
    return {"wall": time.perf_counter() - t0, "requests": srv.requests - before,
            "kept": res.kept, "failed": res.failed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--limit", type=int, default=100, help="requests per window (429 above)")
    ap.add_argument("--window", type=float, default=10.0, help="seconds")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_paid-"))
    seeds = write_instructions(tmp / "seeds.jsonl", args.seeds)

    print(f"evolve, {args.seeds} seeds x {args.rounds} rounds, development server")
    with DevServer() as srv:
        s = run(seeds, tmp / "stream", args.rounds, srv)
    with DevServer(batch_polls=1) as srv:
        b = run(seeds, tmp / "batch", args.rounds, srv, batch=True, batch_poll=0.2,
                batch_window=0.5)
        batches = len(srv.batches) if hasattr(srv, "batches") else "?"
        lines = sum(srv.submitted.values())
    print(f"  {'mode':<10} {'wall s':>7} {'HTTP requests':>13} {'kept':>5} {'failed':>6}")
    print(f"  {'streaming':<10} {s['wall']:>7.1f} {s['requests']:>13} {s['kept']:>5} "
          f"{s['failed']:>6}")
    print(f"  {'batch':<10} {b['wall']:>7.1f} {b['requests']:>13} {b['kept']:>5} "
          f"{b['failed']:>6}   ({batches} batches, {lines} batch lines)")

    rpm = args.limit * 60 / args.window
    print(f"\nrate limit {args.limit} requests / {args.window:g} s ({rpm:.0f}/min), "
          f"{args.seeds} seeds x 1 round, concurrency 64")
    print(f"  {'client':<28} {'wall s':>7} {'requests':>8} {'429s':>5} {'429 share':>9}")
    init = openai_backend.OpenAICompatible.__init__
    assert init.__kwdefaults__ is not None
    for name, adaptive, model in (("fixed concurrency", False, {}),
                                  ("adaptive concurrency", True, {}),
                                  (f"adaptive + rpm {rpm:.0f}", True, {"rpm": rpm})):
        init.__kwdefaults__["adaptive"] = adaptive
        with DevServer(rate_limit=args.limit, rate_window=args.window) as srv:
            r = run(seeds, tmp / f"rate-{len(name)}", 1, srv, **model)
            share = srv.throttled / max(1, srv.requests)
            print(f"  {name:<28} {r['wall']:>7.1f} {srv.requests:>8} {srv.throttled:>5} "
                  f"{share:>9.1%}")
    init.__kwdefaults__["adaptive"] = True


if __name__ == "__main__":
    main()
