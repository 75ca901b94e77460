"""Shared CLI pieces: the app, recipe files (``--config``), model options, error handling."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from instructforge.engine import JobResult, RunDir
from instructforge.errors import InstructForgeError
from instructforge.llm.prices import PriceError, parse_price
from instructforge.llm.urls import redact_urls

app = typer.Typer(
    name="instructforge",
    help="Grow instruction-tuning datasets with LLMs: Evol-Instruct, Auto Evol-Instruct, "
    "Magpie, and tuning. Every job writes a resumable run directory.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

F = TypeVar("F", bound=Callable[..., Any])


def positive(value: float | None) -> float | None:
    """Option callback: the value must be above 0 (``min=`` allows the bound itself). Like
    ``min=``/``max=``, it checks values from a ``--config`` recipe too."""
    if value is not None and value <= 0:
        raise typer.BadParameter(f"must be > 0, got {value:g}")
    return value


def load_recipe(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """``--config recipe.yaml``: its keys become the defaults of the command's options
    (flags given on the command line still win)."""
    if value is None:
        return None
    try:
        data = yaml.safe_load(Path(value).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise typer.BadParameter(f"{value}: no such file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise typer.BadParameter(f"{value}:{where}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{value}: a recipe must be a mapping of option: value")
    if isinstance(data.get("job"), str) and ctx.command.name != "rerun":
        raise typer.BadParameter(f"{value} is a run's config.yaml, not a recipe; reproduce the "
                                 f"run with: instructforge rerun --config {value} -o NEW_RUN_DIR")
    keys = recipe_keys(ctx.command)
    defaults: dict[str, Any] = {}
    for key, v in data.items():
        name = keys.get(str(key).replace("_", "-"))
        if name is None:
            valid = ", ".join(sorted({k for k, n in keys.items() if k == _long(ctx.command, n)}))
            raise typer.BadParameter(f"{value}: unknown key {key!r}; valid keys: {valid}")
        defaults[name] = v
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def recipe_keys(command: click.Command) -> dict[str, str]:
    """The keys a recipe may use for ``command``, each mapped to its parameter: every long
    option name without its dashes (``num`` and ``n`` alike for ``-n/--num``) and the
    parameter's own name (arguments too), ``-`` or ``_`` between words."""
    keys: dict[str, str] = {}
    for p in command.params:
        if not p.name or p.name == "config":
            continue
        keys[p.name.replace("_", "-")] = p.name
        for opt in p.opts:
            if opt.startswith("--"):
                keys[opt[2:].replace("_", "-")] = p.name
    return keys


def _long(command: click.Command, name: str) -> str:
    """The first long option name of parameter ``name``, without its dashes."""
    p = next(p for p in command.params if p.name == name)
    return next((o[2:] for o in p.opts if o.startswith("--")), name.replace("_", "-"))


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Recipe YAML whose keys are this command's long option names (flags win).",
        callback=load_recipe,
        is_eager=True,
        dir_okay=False,
    ),
]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Model spec: 'embedded' (default, SmolLM2-135M on CPU, a smoke-test model), "
        "'embedded:qwen2.5-coder-1.5b' (stronger, CPU; bash scripts/install.sh qwen), a .gguf path, "
        "'openai:MODEL@URL', 'openai:MODEL' (uses OPENAI_BASE_URL), or the model name on "
        "--base-url.",
    ),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1."),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="OPENAI_API_KEY",
        show_envvar=True,
        help="API key for the server (never written to the run directory).",
        show_default=False,
    ),
]
ModelPathOpt = Annotated[
    str | None, typer.Option("--model-path", help="Serve this GGUF file with the embedded engine.")
]
MaxConcurrencyOpt = Annotated[
    int | None,
    typer.Option("--max-concurrency", min=1, help="Requests in flight per backend (default: "
                 "16; embedded: its slots + 4)."),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option("--timeout", callback=positive, help="Seconds per attempt (> 0), answer "
                 "included (default: 120; embedded: 600; connecting: 10 s at most)."),
]
MaxRetriesOpt = Annotated[
    int | None,
    typer.Option("--max-retries", min=0, help="Attempts made again per request after HTTP "
                 "429/5xx, a timeout, a dropped connection or an unusable answer (default: 5)."),
]
DryRunOpt = Annotated[
    bool,
    typer.Option("--dry-run", help="Validate input and config, print the planned LLM calls and "
                 "tokens, call nothing."),
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress bar.")]
SkipInvalidOpt = Annotated[
    bool,
    typer.Option("--skip-invalid", help="Skip bad input rows (listed in rejected.jsonl) instead "
                 "of failing before any LLM call."),
]
ColumnOpt = Annotated[
    str, typer.Option("--column", help="Input field that holds the instruction.")
]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", min=1, help="Use only the first N records.")
]
SharedCacheOpt = Annotated[
    str | None,
    typer.Option("--shared-cache", help="Extra SQLite request cache shared between runs."),
]
ExecutorOpt = Annotated[
    str,
    typer.Option("--executor", help="local (this process) or ray (sharded over the Ray cluster "
                 "in RAY_ADDRESS, or a local one)."),
]
ShardsOpt = Annotated[
    int | None,
    typer.Option("--shards", min=1, help="Shards for --executor ray (default: the cluster's CPUs; "
                 "fixed once a run directory is split)."),
]


def check_price(value: str | None) -> str | None:
    """Option callback: ``--price`` must read as ``IN,OUT``."""
    if value is not None:
        try:
            parse_price(value)
        except PriceError as e:
            raise typer.BadParameter(str(e).removeprefix(f"--price {value!r}: ")) from None
    return value


PriceOpt = Annotated[
    str | None,
    typer.Option("--price", callback=check_price, help="What the model's tokens cost: "
                 "'IN,OUT', USD per million prompt and completion tokens (e.g. 0.15,0.60), for "
                 "every model of the run. Default: the prices file (INSTRUCTFORGE_PRICES "
                 "extends it); models run here are free."),
]
MaxCostOpt = Annotated[
    float | None,
    typer.Option("--max-cost", callback=positive, help="Dollars the run may spend, earlier "
                 "invocations included: no call starts that could pass it; the job stops "
                 "with exit code 4 and a rerun with a higher cap continues."),
]
RpmOpt = Annotated[
    float | None,
    typer.Option("--rpm", callback=positive, help="Requests per minute per server, at most "
                 "(its rate limit)."),
]
BatchOpt = Annotated[
    bool,
    typer.Option("--batch", help="Send the calls to a server model through its Batch API "
                 "(about half the price; answers within the provider's 24 h window). Calls in "
                 "flight go as one batch per step (--concurrency is raised to 10000); a rerun polls the batches already "
                 "submitted (state/batches.jsonl) instead of paying for them again."),
]
# Records in flight at least with --batch: a step's calls then go as one batch, not 64 at a
# time (each batch may take hours).
BATCH_IN_FLIGHT = 10_000


def in_flight(concurrency: int, batch: bool) -> int:
    """``--concurrency``, raised to :data:`BATCH_IN_FLIGHT` with ``--batch``."""
    return max(concurrency, BATCH_IN_FLIGHT) if batch else concurrency


BatchPollOpt = Annotated[
    float,
    typer.Option("--batch-poll", callback=positive, help="Seconds between two looks at a "
                 "submitted batch's status (--batch)."),
]
BatchWindowOpt = Annotated[
    float,
    typer.Option("--batch-window", callback=positive, help="Seconds a batch collects calls "
                 "after its first before it is submitted (--batch)."),
]
TpmOpt = Annotated[
    float | None,
    typer.Option("--tpm", callback=positive, help="Tokens per minute per server, at most "
                 "(prompt, roughly, plus --max-tokens per request)."),
]


def print_error(message: object) -> None:
    """``error: MESSAGE`` on stderr, the message as written: its brackets (an install hint
    like ``instructforge[train]``, a file name, a row's text) are never read as markup, and
    control characters in it (a server's answer quoted in the message) are shown escaped."""
    console.print(f"[red]error:[/red] {terminal_text(str(message))}", highlight=False)


# Exit codes. 0: the run is complete. 1: an error stopped it (server unreachable, too many
# failures in a row). 2: bad input or options (nothing was called). 3: it finished, but some
# inputs failed after retries (rule call_failed in rejected.jsonl); the same command retries
# them. 4: it stopped at its --max-cost (BudgetExceeded); rerun with a higher cap.
# 130: interrupted.
EXIT_INCOMPLETE = 3


def exit_if_incomplete(result: JobResult) -> None:
    """Say how many inputs failed and exit with :data:`EXIT_INCOMPLETE` when any did."""
    if not result.failed:
        return
    console.print(
        f"[yellow]incomplete:[/yellow] {result.failed} input(s) failed after retries; their "
        f"reasons are in {escape(str(result.run_dir.rejected))} (rule call_failed). Rerun the "
        "same command to retry them.", highlight=False)
    raise typer.Exit(EXIT_INCOMPLETE)


def handle_errors(fn: F) -> F:
    """Turn expected failures (any :class:`InstructForgeError`) into ``error: MESSAGE`` and
    the error's exit code, never a bare traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InstructForgeError as e:  # 2: input, options, run directory; 1: LLM, job
            print_error(e)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            console.print("interrupted; rerun the same command to resume.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


# Characters a terminal acts on instead of showing: C0 controls but newline and tab (ESC starts
# sequences that set the window title or clear the screen; BEL rings; CR and BS overwrite),
# DEL, the C1 controls (8-bit CSI...) and the bidirectional overrides that reorder text.
TERMINAL_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def terminal_text(text: str, *, markup: bool = True) -> str:
    r"""Model-written ``text`` made safe to print: control characters shown as ``\uXXXX``
    escapes (valid in JSON too), newlines and tabs kept; with ``markup`` (for a rich markup
    string) ``[tags]`` are escaped as well, else print it with ``markup=False``.

    >>> terminal_text("hi\x1b]0;pwned\x07 [bold]x")
    'hi\\u001b]0;pwned\\u0007 \\[bold]x'
    """
    safe = TERMINAL_CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return escape(safe) if markup else safe


def print_samples(run: RunDir, k: int) -> None:
    """The first ``k`` kept conversations, as plain text on stdout (control characters
    escaped: model text never drives the terminal), then where all the records are."""
    for i, rec in enumerate(run.kept()):
        if i >= k:
            break
        cat = (rec.get("metadata") or {}).get("category")
        out.print(f"[bold]--- {terminal_text(rec['id'])}"
                  f"{terminal_text(f' ({cat})') if cat else ''}[/bold]", highlight=False)
        for m in rec["messages"]:
            text = m["content"] if len(m["content"]) <= 600 else m["content"][:600] + " [...]"
            out.print(f"[cyan]{terminal_text(m['role'])}:[/cyan] {terminal_text(text)}",
                      highlight=False)
    console.print(f"records: {terminal_text(str(run.records))}", highlight=False, soft_wrap=True)


def smoke_test_note(model: str, base_url: str | None, model_path: str | None) -> None:
    """Say, when the default embedded model answers, that it is a smoke-test model and how to
    name a real one."""
    if base_url or model_path or model.strip() not in ("embedded", "embedded:smollm2-135m"):
        return
    console.print("[yellow]note:[/yellow] the default model, SmolLM2-135M on CPU, is a "
                  "smoke-test model that shows the pipeline works, not one to make data with. "
                  "For real data: --model embedded:qwen2.5-coder-1.5b (CPU; bash "
                  "scripts/install.sh qwen), or any OpenAI-compatible server: --base-url "
                  "http://HOST:PORT/v1 --model NAME.", highlight=False, soft_wrap=True)


def print_plan(plan: dict[str, Any]) -> None:
    """The ``--dry-run`` report (server URLs without their credentials)."""
    t = Table(title="Dry run: nothing was called", show_header=False)
    for k, v in plan.items():
        t.add_row(k.replace("_", " "), f"{v:,}" if isinstance(v, int) else redact_urls(str(v)))
    out.print(t)


def print_usage(usage: dict[str, Any]) -> None:
    t = Table(title="Token usage (this invocation)")
    for col in ("model", "step", "requests", "cached", "errors", "prompt tok", "completion tok",
                "cost $"):
        # Model ids are long: fold them on a narrow terminal rather than cut them with "…".
        t.add_column(col, overflow="fold")
    runs = usage.get("runs") or [{}]
    for model, steps in runs[-1].get("by_model_step", {}).items():
        for step, u in steps.items():
            cost = u.get("cost_usd")
            t.add_row(model, step, str(u["requests"]), str(u["cached"]), str(u["errors"]),
                      str(u["prompt_tokens"]), str(u["completion_tokens"]),
                      "?" if cost is None else f"{cost:.4f}")
    console.print(t)

