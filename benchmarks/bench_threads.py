"""Threads and slots of the embedded llama.cpp server, idle and beside a busy process.

For each slot count and each thread count 1..N (N: the cores this process may use), starts
one embedded SmolLM2 server and sends ``--requests`` chats at once (default: one per slot,
``max_tokens`` fixed with ``ignore_eos``), ``--reps`` times, first with the machine as it is
("idle"), then beside a neighbour that keeps one core busy (``python -c 'while True: pass'``).
Each cell prints generated tokens/s (median of the repetitions, then the range) and the
1-minute load average when it was measured; a repetition that does not finish within
``--deadline`` seconds counts the tokens of the answers that did and is marked "stall".

    python benchmarks/bench_threads.py                       # slots 8 and 16, threads 1..N
    python benchmarks/bench_threads.py --slots 8 --reps 3 --max-tokens 48

On a machine shared with other work "idle" is not idle: read the load average beside each
figure (a load above 0 is other processes' work competing for the same cores).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import aiohttp

from instructforge.llm.embedded import EmbeddedServer, ServerSettings, auto_threads, cores
from instructforge.llm.local_models import SMOLLM2, model_path

TOPICS = ("a lighthouse", "a lost key", "a robot gardener", "a winter market", "an old map",
          "a river crossing", "a clockmaker", "a paper boat")


async def load(url: str, n: int, max_tokens: int, deadline: float, rep: int
               ) -> tuple[int, float, bool]:
    """``n`` chats at once; (completion tokens, seconds, stalled)."""
    tokens = 0

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal tokens
        body = {"model": SMOLLM2.alias, "max_tokens": max_tokens, "ignore_eos": True,
                "temperature": 0.7, "seed": 1000 * rep + i,
                "messages": [{"role": "user", "content":
                              f"Write a short story about {TOPICS[i % len(TOPICS)]} ({rep}.{i})."}]}
        async with session.post(f"{url}/v1/chat/completions", json=body) as r:
            tokens += (await r.json())["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as s:
        tasks = [asyncio.create_task(one(s, i)) for i in range(n)]
        _, pending = await asyncio.wait(tasks, timeout=deadline)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return tokens, time.perf_counter() - t0, bool(pending)


def busy_neighbour() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure(slots: int, threads: int, args: argparse.Namespace) -> list[str]:
    server = EmbeddedServer(model_path(SMOLLM2), ServerSettings(parallel=slots, threads=threads),
                            SMOLLM2.alias)
    rows = []
    try:
        n = args.requests or slots
        asyncio.run(load(server.address, n, 4, args.deadline, rep=0))  # warm-up
        for condition in ("idle", "busy"):
            neighbour = busy_neighbour() if condition == "busy" else None
            try:
                if neighbour:
                    time.sleep(1.0)  # let it take its core
                figures, loads, stalls = [], [], 0
                for rep in range(1, args.reps + 1):
                    tok, dt, stalled = asyncio.run(load(server.address, n, args.max_tokens,
                                                        args.deadline, rep))
                    figures.append(tok / dt)
                    loads.append(os.getloadavg()[0])
                    stalls += stalled
            finally:
                if neighbour:
                    neighbour.kill()
                    neighbour.wait()
            mark = f"  stall {stalls}/{args.reps}" if stalls else ""
            rows.append(f"| {slots} | {threads} | {condition} | {statistics.median(figures):.1f} "
                        f"| {min(figures):.1f}–{max(figures):.1f} "
                        f"| {min(loads):.2f}–{max(loads):.2f} |{mark}")
            print(rows[-1], flush=True)
    finally:
        server.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slots", type=int, nargs="+", default=[8, 16], help="server slots")
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="thread counts (default 1..cores)")
    ap.add_argument("--requests", type=int, default=0, help="chats at once (default: slots)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--deadline", type=float, default=30.0,
                    help="seconds before a repetition counts as a stall")
    args = ap.parse_args()
    threads = args.threads or list(range(1, cores() + 1))
    print(f"cores {cores()}, auto threads {auto_threads()}, {args.max_tokens} tokens per chat, "
          f"{args.reps} repetitions, deadline {args.deadline:g} s")
    print("| slots | threads | neighbour | tok/s (median) | range | load 1 min |")
    print("|---|---|---|---|---|---|")
    for slots in args.slots:
        for t in threads:
            measure(slots, t, args)


if __name__ == "__main__":
    main()
