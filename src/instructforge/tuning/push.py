"""Publish a run's kept records to the Hugging Face Hub with a dataset card that says how
they were made.

:func:`prepare` writes what would be uploaded to a local folder: ``data/train.jsonl`` (the
kept records in one of :mod:`instructforge.tuning.export`'s formats), ``README.md`` (the
card, rendered from ``data/dataset_card.md.jinja``) and ``config.yaml`` (the run's, with URL
credentials removed). :func:`push_run` prepares the same files and uploads them:
the rows through ``datasets.Dataset.push_to_hub`` (Parquet, private unless asked
otherwise), then the card and config in one commit through ``huggingface_hub``. The token is
passed to those calls only; it is never written to a file.

>>> size_category(999), size_category(1000)
('n<1K', '1K<n<10K')
>>> md("a|b\\n<i>*x*</i>")
'a\\\\|b &lt;i&gt;\\\\*x\\\\*&lt;/i&gt;'
"""

from __future__ import annotations

import json
import re
import shlex
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml

from instructforge.errors import EXIT_FAILED, InstructForgeError
from instructforge.files import write_atomic
from instructforge.llm.urls import redact_urls
from instructforge.tuning.export import FORMATS, export_run, records_path

#: What the card says of each method: name, paper, reference and one line on what it does.
METHODS: dict[str, dict[str, str]] = {
    "evol_instruct": {
        "name": "Evol-Instruct",
        "paper": "WizardLM: Empowering Large Language Models to Follow Complex Instructions "
                 "(Xu et al., 2023)",
        "ref": "arXiv:2304.12244", "url": "https://arxiv.org/abs/2304.12244",
        "what": "Seed instructions are rewritten round after round by an LLM (in-depth "
                "operations add constraints, deepen, concretise or add reasoning steps; "
                "in-breadth creates a new instruction); each child is answered and checked by "
                "the elimination rules, and the children that fail are dropped.",
    },
    "auto_evol": {
        "name": "Auto Evol-Instruct",
        "paper": "Automatic Instruction Evolving for Large Language Models (Zeng et al., 2024)",
        "ref": "arXiv:2406.00770", "url": "https://arxiv.org/abs/2406.00770",
        "what": "An optimizer LLM improves the evolving method itself from the failures it "
                "sees on a development set; the best method found then evolves the seed "
                "instructions, as Evol-Instruct does.",
    },
    "magpie": {
        "name": "Magpie",
        "paper": "Magpie: Alignment Data Synthesis from Scratch by Prompting Aligned LLMs "
                 "with Nothing (Xu et al., 2024)",
        "ref": "arXiv:2406.08464", "url": "https://arxiv.org/abs/2406.08464",
        "what": "An aligned chat model is given only the start of its chat template's user "
                "turn and writes the instruction itself; the model then answers it.",
    },
    "respond": {
        "name": "Responses", "paper": "", "ref": "", "url": "",
        "what": "Given instructions answered by a model.",
    },
}
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                   (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"))
DATA_FILE = "data/train.jsonl"
_MD_SPECIAL = re.compile(r"([\\`*_\[\]{}()#+!|~])")
_INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


class PushError(InstructForgeError, ValueError):
    """A run that cannot be published as asked (no kept rows, unknown format), explained."""


class UploadError(InstructForgeError, RuntimeError):
    """The Hub refused or failed an upload; the message says what it answered."""

    exit_code = EXIT_FAILED


@dataclass
class PushResult:
    """What was written (``folder``) and, after an upload, where it went."""

    folder: Path
    rows: int
    skipped: dict[str, int] = field(default_factory=dict)
    repo_id: str = ""
    url: str = ""
    files: list[str] = field(default_factory=list)


def md(value: Any) -> str:
    """``value`` as one line of Markdown text: whitespace runs become one space, invisible
    and control characters are shown as ``\\uXXXX``, Markdown punctuation is
    backslash-escaped and HTML's ``& < >`` become entities, so model or user text can
    neither break a table nor inject markup."""
    s = " ".join(str(value).split())
    s = _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", s)
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def num(value: Any) -> str:
    """A figure for a table cell: '-' when absent, floats to 3 significant places."""
    if value is None or isinstance(value, jinja2.Undefined):
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return md(value)


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` value for ``n`` rows."""
    for limit, name in SIZE_CATEGORIES:
        if n < limit:
            return name
    return "n>10M"


def fenced(text: str, info: str = "") -> str:
    """``text`` in a code fence longer than any backtick run inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text.rstrip()}\n{fence}"


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["md"] = md
    env.filters["num"] = num
    text = (resources.files("instructforge") / "data" / "dataset_card.md.jinja").read_text(
        encoding="utf-8")
    return env.from_string(text)


def _read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable (the card then
    leaves its section out)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_config(run: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` with URL credentials removed ({} when there is none)."""
    path = run / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PushError(f"{path}: not valid YAML ({e})") from None
    return redact_urls(data) if isinstance(data, dict) else {}


def models_by_role(config: dict[str, Any]) -> list[dict[str, str]]:
    """``[{role, model, server}]`` from a config's ``*_llm`` / ``llm`` entries.

    >>> models_by_role({"judge_llm": {"model": "m", "base_url": "http://h/v1"}})
    [{'role': 'judge', 'model': 'm', 'server': 'http://h/v1'}]
    """
    out = []
    for key, value in config.items():
        if not (key == "llm" or key.endswith("_llm")) or not value:
            continue
        role = "model" if key == "llm" else key.removesuffix("_llm")
        if isinstance(value, dict):
            model = str(value.get("model") or "")
            server = str(value.get("base_url") or value.get("model_path")
                         or ("llama.cpp on the run's machine" if model.startswith("embedded")
                             else "-"))
        else:
            model, server = str(value), ""
        out.append({"role": role, "model": model, "server": server})
    return out


def rejection_counts(run: Path) -> list[dict[str, Any]]:
    """``[{stage, rule, count}]`` of ``rejected.jsonl``, most frequent first."""
    counts: Counter[tuple[str, str]] = Counter()
    path = run / "rejected.jsonl"
    if path.is_file():
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    rej = json.loads(line).get("rejection") or {}
                except (ValueError, AttributeError):
                    continue  # a torn last line: the run's own reader ignores it too
                counts[(str(rej.get("stage") or "?"), str(rej.get("rule") or "?"))] += 1
    return [{"stage": s, "rule": r, "count": n} for (s, r), n in counts.most_common()]


def round_counts(summary: Any) -> list[dict[str, Any]]:
    """Per-round attempted / kept / eliminated from an evolve run's ``summary.json``."""
    if not isinstance(summary, dict):
        return []
    out = []
    for row in summary.get("per_round") or []:
        out.append({"round": row.get("round"), "attempted": row.get("attempted", 0),
                    "kept": row.get("kept", 0),
                    "eliminated": sum((row.get("eliminated") or {}).values())})
    return out


def _cost(value: Any) -> str:
    return "no price" if value is None else f"${value:.4f}"


def usage_rows(usage: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per model and step rows of ``usage.json``'s ``total``, and their sum."""
    rows: list[dict[str, Any]] = []
    total = {"prompt_tokens": 0, "completion_tokens": 0}
    costs: list[float | None] = []
    if not isinstance(usage, dict):
        return rows, {**total, "cost": _cost(None)}
    for model, steps in (usage.get("total") or {}).items():
        for step, s in (steps or {}).items():
            rows.append({"model": redact_urls(model), "step": step,
                         "requests": s.get("requests", 0),
                         "prompt_tokens": s.get("prompt_tokens", 0),
                         "completion_tokens": s.get("completion_tokens", 0),
                         "cost": _cost(s.get("cost_usd"))})
            total["prompt_tokens"] += s.get("prompt_tokens", 0)
            total["completion_tokens"] += s.get("completion_tokens", 0)
            costs.append(s.get("cost_usd"))
    priced = [c for c in costs if c is not None]
    cost = _cost(sum(priced)) if priced else _cost(None)
    if priced and len(priced) < len(costs):
        cost += " (some models have no price)"
    return rows, {**total, "cost": cost}


def card_context(run: Path, *, fmt: str, rows: int, no_answer: int, repo_id: str,
                 license: str, public: bool) -> dict[str, Any]:
    """Everything the card template shows, gathered from the run's files."""
    config = run_config(run)
    key = str(config.get("method") or config.get("job") or "")
    method = METHODS.get(key) or {"name": key or "unknown", "paper": "", "ref": "", "url": "",
                                  "what": ""}
    rejections = rejection_counts(run)
    eliminated = sum(r["count"] for r in rejections if r["stage"] == "eliminate")
    filtered = sum(r["count"] for r in rejections if r["stage"] == "filter")
    other = sum(r["count"] for r in rejections) - eliminated - filtered
    metrics = _read_json(run / "analysis" / "metrics.json")
    analysis = (metrics.get("per_round") or []) if isinstance(metrics, dict) else []
    usage, usage_total = usage_rows(_read_json(run / "usage.json"))
    title = repo_id.rsplit("/", 1)[-1] or run.name
    front = {
        "license": license,
        "task_categories": ["text-generation"],
        "size_categories": [size_category(rows)],
        "tags": ["synthetic", "instructforge", *([key.replace("_", "-")] if key else [])],
        "pretty_name": title,
        "configs": [{"config_name": "default",
                     "data_files": [{"split": "train", "path": "data/train*"}]}],
    }
    command = ["instructforge", "push", run.as_posix(), repo_id or "REPO_ID", "--format", fmt]
    return {
        "front_matter": yaml.safe_dump(front, sort_keys=False, allow_unicode=True),
        "title": title, "fmt": fmt, "method": method,
        "models": models_by_role(config),
        "counts": {"kept": rows, "no_answer": no_answer, "eliminated": eliminated,
                   "filtered": filtered, "other": other},
        "rejections": rejections,
        "rounds": round_counts(_read_json(run / "summary.json")),
        "analysis": analysis,
        "usage": usage, "usage_total": usage_total,
        "config_block": fenced(yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
                               if config else "# no config.yaml in the run", "yaml"),
        "command": shlex.join(command + (["--public"] if public else [])),
    }


def render_card(context: dict[str, Any]) -> str:
    """The card's Markdown from :func:`card_context`'s output."""
    return _template().render(**context)


def upload_failure(error: Exception, token: str | None = None) -> str:
    """What an exception raised by the upload says, for the user: an HTTP error or a refused
    connection as its message (the Hub's answer in it); an answer the clients could not read
    (not JSON, a field missing) named as such, with the exception's type. ``token`` never
    appears in it.

    >>> upload_failure(json.JSONDecodeError("Expecting value", "<html>", 0))
    "the Hub's answer is not JSON (Expecting value: line 1 column 1 (char 0))"
    >>> upload_failure(KeyError("commitUrl"))
    "the Hub's answer was not understood (KeyError: 'commitUrl')"
    >>> upload_failure(OSError("401 Unauthorized for hf_SECRET"), "hf_SECRET")
    '401 Unauthorized for ***'
    """
    if isinstance(error, json.JSONDecodeError):
        text = f"the Hub's answer is not JSON ({error})"
    elif isinstance(error, OSError) or _is_http_error(error):
        text = str(error) or type(error).__name__
    else:
        text = f"the Hub's answer was not understood ({type(error).__name__}: {error})"
    return text.replace(token, "***") if token else text


def _is_http_error(error: Exception) -> bool:
    """Whether ``error`` is the HTTP library's (a refused connection, a timeout, an error
    status), as ``huggingface_hub`` imports it; or its missing-token error."""
    try:
        from huggingface_hub import errors
    except ImportError:
        return False
    http_error = getattr(errors, "HTTPError", errors.HfHubHTTPError)
    return isinstance(error, (http_error, errors.LocalTokenNotFoundError))


def prepare(run: str | Path, out_dir: str | Path, *, fmt: str = "messages", repo_id: str = "",
            license: str = "other", public: bool = False) -> PushResult:
    """Write ``data/train.jsonl``, ``README.md`` and ``config.yaml`` for ``run`` under
    ``out_dir``: exactly what :func:`push_run` uploads.

    >>> # res = prepare("runs/demo", "runs/demo/hub"); print(res.rows, res.files)
    """
    if fmt not in FORMATS:
        raise PushError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    src = records_path(run)
    run_dir = src.parent.parent if src.parent.name == "data" else src.parent
    out = Path(out_dir)
    exported = export_run(src, fmt, out / DATA_FILE)
    if exported.written == 0:
        exported.path.unlink(missing_ok=True)
        raise PushError(f"{src}: no kept record with an answer to publish")
    ctx = card_context(run_dir, fmt=fmt, rows=exported.written,
                       no_answer=exported.skipped.get("no answer", 0), repo_id=repo_id,
                       license=license, public=public)
    write_atomic(out / "README.md", render_card(ctx))
    files = [DATA_FILE, "README.md"]
    config = run_config(run_dir)
    if config:
        write_atomic(out / "config.yaml",
                     yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        files.append("config.yaml")
    return PushResult(folder=out, rows=exported.written, skipped=exported.skipped,
                      repo_id=repo_id, files=files)


def push_run(run: str | Path, repo_id: str, *, fmt: str = "messages", private: bool = True,
             token: str | None = None, license: str = "other") -> PushResult:
    """Upload ``run``'s kept records as the ``train`` split of the Hub dataset ``repo_id``
    (created private unless ``private=False``), with the card and ``config.yaml``.

    ``token`` defaults to what ``huggingface_hub`` finds (``HF_TOKEN``, a cached login);
    ``HF_ENDPOINT`` points the upload at another Hub. Raises :class:`UploadError` (exit code
    1) whatever the upload raises: the Hub refusing, failing or unreachable, or an answer the
    clients cannot read.
    """
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise PushError(f"repository id {repo_id!r} is not of the form OWNER/NAME")
    try:
        from datasets import Dataset
        from huggingface_hub import CommitOperationAdd, HfApi
    except ImportError as e:
        raise PushError(f"push needs the `datasets` package ({e}); "
                        "install it with `pip install datasets`") from None
    with tempfile.TemporaryDirectory(prefix="instructforge-push-") as tmp:
        res = prepare(run, tmp, fmt=fmt, repo_id=repo_id, license=license, public=not private)
        with (res.folder / DATA_FILE).open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(res.folder / name))
               for name in res.files if name != DATA_FILE]
        try:
            Dataset.from_list(rows).push_to_hub(repo_id, split="train", private=private,
                                                token=token)
            HfApi(token=token).create_commit(
                repo_id, ops, repo_type="dataset",
                commit_message="Dataset card and config.yaml (instructforge push)")
        except Exception as e:  # noqa: BLE001 - whatever the Hub's answer made the clients raise
            raise UploadError(f"upload to {repo_id} failed: {upload_failure(e, token)}") from None
    from huggingface_hub import constants

    res.folder = Path()
    res.url = f"{constants.ENDPOINT}/datasets/{repo_id}"
    return res
