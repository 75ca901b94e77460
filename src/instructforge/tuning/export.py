"""Export a run's kept records in the formats trainers read.

Four formats, one JSON object a line, each loadable with
``datasets.load_dataset("json", data_files=PATH)``:

- ``messages``: ``{"id", "messages": [{"role", "content"}, ...]}``, the conversational format
  TRL's ``SFTTrainer`` reads directly;
- ``alpaca``: ``{"id", "instruction", "input", "output", "system", "history"}``; the last user
  turn is the instruction, the last assistant turn the output, and earlier turns of a multi-turn
  chat go to ``history`` as ``[user, assistant]`` pairs (the LLaMA-Factory convention);
- ``sharegpt``: ``{"id", "conversations": [{"from": "system"|"human"|"gpt", "value"}, ...]}``;
- ``dpo``: ``{"id", "prompt": [messages], "chosen": [assistant], "rejected": [assistant]}``,
  the conversational preference format TRL's ``DPOTrainer`` reads, from a run of
  ``instructforge preferences`` (records without a pair are skipped as "no pair").

>>> from instructforge.records import new_record
>>> r = new_record("a", messages=[{"role": "user", "content": "Hi"},
...                               {"role": "assistant", "content": "Hello!"}], method="respond")
>>> to_alpaca(r)["output"]
'Hello!'
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructforge.engine.store import partial_path, unfinished_problem
from instructforge.errors import InstructForgeError
from instructforge.files import open_atomic
from instructforge.inputs import InputError, read_rows
from instructforge.records import Record, messages_problem

FORMATS = ("messages", "alpaca", "sharegpt", "dpo")
SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}


class ExportError(InstructForgeError, ValueError):
    """A records file that cannot be exported, with the file, line and field at fault."""


@dataclass
class ExportResult:
    """What an export wrote: the output path, rows written and records skipped (with why)."""

    path: Path
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def records_path(run: str | Path) -> Path:
    """The records file of a run directory (or ``run`` itself when it is a JSONL file).

    >>> records_path("runs/demo").as_posix()
    'runs/demo/data/records.jsonl'
    """
    p = Path(run)
    if p.suffix == ".jsonl" or p.is_file():
        return p
    return p / "data" / "records.jsonl"


def read_records(path: str | Path) -> Iterator[tuple[int, Record]]:
    """Yield ``(line_number, record)`` from a records JSONL file, checking each record's chat.

    Raises :class:`ExportError` naming the file, line and field for anything malformed,
    and for an unfinished input: a folder still being written (``OUT.partial``, or a run
    a job holds) or a last record cut short by a kill.

    >>> # for line, rec in read_records("runs/demo/data/records.jsonl"): ...
    """
    path = Path(path)
    check_input(path)
    try:
        for row in read_rows(path):
            if row.problem is not None:
                raise ExportError(f"{row.where}: {row.problem}")
            assert row.data is not None
            if problem := messages_problem(row.data.get("messages")):
                raise ExportError(f"{row.where}: {problem}")
            yield row.line, row.data
    except InputError as e:
        raise ExportError("\n".join(e.problems)) from None


def check_input(path: Path) -> None:
    """Raise :class:`ExportError` unless the records file ``path`` exists and is finished
    (not in an ``OUT.partial`` folder, not in a run a job still holds)."""
    if problem := unfinished_problem(path):
        raise ExportError(problem)
    if not path.exists():
        run = path.parent.parent if path.parent.name == "data" else path
        hint = (f"; {partial_path(run)} is an unfinished output: rerun the command that "
                "writes it" if partial_path(run).exists() else "")
        raise ExportError(
            f"{path}: no such file (expected a run directory with data/records.jsonl){hint}"
        )


def training_messages(record: Record) -> list[dict[str, str]] | None:
    """The record's chat cleaned for training, or None when it has nothing to learn from.

    Keeps only ``role``/``content``, and drops trailing turns after the last assistant answer
    (a question with no answer teaches nothing). Returns None when no non-empty assistant
    message follows a user message.

    >>> training_messages({"messages": [{"role": "user", "content": "Q"}]}) is None
    True
    """
    msgs = [{"role": m["role"], "content": m["content"]} for m in record.get("messages") or []]
    while msgs and msgs[-1]["role"] != "assistant":
        msgs.pop()
    if not msgs or not msgs[-1]["content"].strip():
        return None
    if not any(m["role"] == "user" for m in msgs):
        return None
    return msgs


def to_messages(record: Record) -> dict[str, Any] | None:
    """One ``messages`` row (TRL's conversational format), or None if the record has no answer.

    >>> to_messages({"id": "x", "messages": [{"role": "user", "content": "Q"},
    ...              {"role": "assistant", "content": "A"}]})["messages"][1]
    {'role': 'assistant', 'content': 'A'}
    """
    msgs = training_messages(record)
    if msgs is None:
        return None
    return {"id": str(record.get("id", "")), "messages": msgs}


def to_alpaca(record: Record) -> dict[str, Any] | None:
    """One Alpaca row; earlier turns of a multi-turn chat become ``history`` pairs.

    >>> row = to_alpaca({"id": "x", "messages": [
    ...     {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
    ...     {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]})
    >>> row["instruction"], row["output"], row["history"]
    ('Q2', 'A2', [['Q1', 'A1']])
    """
    msgs = training_messages(record)
    if msgs is None:
        return None
    system = "\n\n".join(m["content"] for m in msgs if m["role"] == "system")
    turns = [m for m in msgs if m["role"] != "system"]
    # Pair each assistant answer with the user text since the previous answer; consecutive
    # user messages are joined so no text is lost.
    pairs: list[list[str]] = []
    pending: list[str] = []
    for m in turns:
        if m["role"] == "user":
            pending.append(m["content"])
        else:
            pairs.append(["\n\n".join(pending), m["content"]])
            pending = []
    instruction, output = pairs[-1]
    return {
        "id": str(record.get("id", "")),
        "instruction": instruction,
        "input": "",
        "output": output,
        "system": system,
        "history": pairs[:-1],
    }


def to_sharegpt(record: Record) -> dict[str, Any] | None:
    """One ShareGPT row (``from``: system / human / gpt).

    >>> to_sharegpt({"id": "x", "messages": [{"role": "user", "content": "Q"},
    ...              {"role": "assistant", "content": "A"}]})["conversations"][0]
    {'from': 'human', 'value': 'Q'}
    """
    msgs = training_messages(record)
    if msgs is None:
        return None
    conv = [{"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in msgs]
    return {"id": str(record.get("id", "")), "conversations": conv}


def to_dpo(record: Record) -> dict[str, Any] | None:
    """One preference row (TRL's conversational ``prompt``/``chosen``/``rejected``), or None
    when the record holds no pair (``metadata["preferences"]``, written by ``preferences``).

    >>> row = to_dpo({"id": "x", "messages": [{"role": "user", "content": "Q"},
    ...               {"role": "assistant", "content": "good"}],
    ...               "metadata": {"preferences": {"chosen": "good", "rejected": "bad"}}})
    >>> row["prompt"], row["rejected"]
    ([{'role': 'user', 'content': 'Q'}], [{'role': 'assistant', 'content': 'bad'}])
    """
    pref = (record.get("metadata") or {}).get("preferences")
    msgs = training_messages(record)
    if not isinstance(pref, dict) or msgs is None:
        return None
    chosen, rejected = pref.get("chosen"), pref.get("rejected")
    if not (isinstance(chosen, str) and isinstance(rejected, str) and chosen and rejected):
        return None
    return {
        "id": str(record.get("id", "")),
        "prompt": msgs[:-1],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


CONVERTERS: dict[str, Callable[[Record], dict[str, Any] | None]] = {
    "messages": to_messages,
    "alpaca": to_alpaca,
    "sharegpt": to_sharegpt,
    "dpo": to_dpo,
}


def export_run(
    run: str | Path, fmt: str = "messages", output: str | Path | None = None
) -> ExportResult:
    """Write a run's kept records as ``fmt`` JSONL and return what was written.

    ``run`` is a run directory (reads ``data/records.jsonl``) or a records JSONL file. The
    default output is ``RUN_DIR/export/<fmt>.jsonl``. Rejected records and records without an
    answer are skipped and counted.

    >>> # res = export_run("runs/demo", "sharegpt"); print(res.path, res.written)
    """
    if fmt not in CONVERTERS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    src = records_path(run)
    check_input(src)  # before creating anything beside it
    if output is None:
        base = src.parent.parent if src.parent.name == "data" else src.parent
        output = base / "export" / f"{fmt}.jsonl"
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = ExportResult(path=out)
    convert = CONVERTERS[fmt]
    # Renamed into place whole, so a crash never leaves a half-written export behind.
    with open_atomic(out) as fh:
        for _, rec in read_records(src):
            if rec.get("status", "kept") != "kept":
                result.skipped["not kept"] = result.skipped.get("not kept", 0) + 1
                continue
            row = convert(rec)
            if row is None:
                why = "no pair" if fmt == "dpo" else "no answer"
                result.skipped[why] = result.skipped.get(why, 0) + 1
                continue
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            result.written += 1
    return result
