"""Read any dataset into records: a run directory, or a JSONL / JSON / Parquet / CSV file.

A run directory gives its kept records (``data/records.jsonl`` or ``data/records.parquet``),
its audit trail (``rejected.jsonl``), ``usage.json`` and ``config.yaml``.  Any other file is
read row by row: rows that already hold a ``messages`` chat are taken as records; other rows
are mapped from instruction / response columns (auto-detected, or named by the caller).

>>> ds = load_dataset("runs/demo")                                   # doctest: +SKIP
>>> ds = load_dataset("alpaca.json", instruction_field="instruction")  # doctest: +SKIP
>>> len(ds.records), len(ds.rejected)                                # doctest: +SKIP
(120, 31)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from instructforge import inputs
from instructforge.engine import RunDir, partial_path, write_parquet
from instructforge.errors import InstructForgeError
from instructforge.inputs import InputError
from instructforge.records import Record, messages_problem, new_record

# Common column names in public datasets, tried in order when the caller names none.
INSTRUCTION_FIELDS = ("instruction", "prompt", "query", "question", "input", "text")
RESPONSE_FIELDS = ("response", "output", "completion", "answer", "chosen")
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "system": "system", "bot": "assistant", "model": "assistant"}


class DatasetError(InstructForgeError, ValueError):
    """A dataset file could not be read; the message names the file, line and field."""


@dataclass
class Dataset:
    """Records to analyse, plus what a run directory adds around them."""

    name: str
    source: Path
    records: list[Record]
    rejected: list[Record] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    run_dir: Path | None = None

    @property
    def all_records(self) -> list[Record]:
        """Kept records followed by rejected ones (for lineage look-ups)."""
        return self.records + self.rejected


def check_new_run(out: Path, ds: Dataset, *, overwrite: bool,
                  error: type[InstructForgeError]) -> None:
    """Raise ``error`` unless ``out`` may become a new run derived from ``ds``: not the
    source itself, and empty or absent unless ``overwrite``."""
    if out.resolve() == Path(ds.source).resolve():
        raise error(f"{out}: the output must be a new run directory, not the source")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise error(f"{out}: already exists and is not empty (use --overwrite)")


def write_derived_run(out: Path, ds: Dataset, kept: Sequence[Record],
                      dropped: Sequence[Record], config: dict[str, Any]) -> None:
    """Write the run a filtering job derives from ``ds``: ``kept`` as its records, the
    source's rejected rows then ``dropped`` as ``rejected.jsonl``, ``config`` (made
    YAML-safe) and the source's ``usage.json``. Built whole in ``OUT.partial`` and renamed:
    ``out`` is complete or absent, and a rerun after a kill starts the partial folder over."""
    staging = partial_path(out)
    shutil.rmtree(staging, ignore_errors=True)
    run = RunDir(staging)
    run.data.mkdir(parents=True, exist_ok=True)
    for path, rows in ((run.records, kept), (run.rejected, [*ds.rejected, *dropped])):
        with path.open("w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    run.write_config(json.loads(json.dumps(config)))  # tuples -> lists
    if ds.run_dir is not None and (ds.run_dir / "usage.json").exists():
        shutil.copyfile(ds.run_dir / "usage.json", run.usage)
    write_parquet(run)
    if out.exists():
        shutil.rmtree(out)  # empty, or --overwrite
    staging.rename(out)


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` is a run directory (it has ``data/records.jsonl`` or ``.parquet``)."""
    p = Path(path)
    return p.is_dir() and any((p / "data" / f"records.{ext}").exists() for ext in ("jsonl", "parquet"))


def load_dataset(
    path: str | Path,
    *,
    instruction_field: str | None = None,
    response_field: str | None = None,
    id_field: str | None = None,
) -> Dataset:
    """Load a run directory or a JSONL / JSON / Parquet file as a :class:`Dataset`.

    Raises :class:`DatasetError` (naming file, line and field) for anything malformed.

    >>> load_dataset("runs/demo").records[0]["id"]   # doctest: +SKIP
    'a1b2c3d4e5f60708'
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or directory")
    cols = {"instruction_field": instruction_field, "response_field": response_field,
            "id_field": id_field}
    if p.is_dir():
        if not is_run_dir(p):
            raise DatasetError(
                f"{p}: a directory but not a run directory (no data/records.jsonl or "
                "data/records.parquet); pass a run directory or a .jsonl/.json/.parquet file"
            )
        data = p / "data" / "records.jsonl"
        if not data.exists():
            data = p / "data" / "records.parquet"
        records = list(read_rows(data, **cols))
        rejected_path = p / "rejected.jsonl"
        rejected = list(read_rows(rejected_path, **cols)) if rejected_path.exists() else []
        for r in rejected:
            r["status"] = "rejected"
        _unique_ids(records + rejected)
        return Dataset(
            name=p.resolve().name,
            source=p,
            records=records,
            rejected=rejected,
            usage=_read_json(p / "usage.json"),
            config=_read_yaml(p / "config.yaml"),
            run_dir=p,
        )
    records = list(read_rows(p, **cols))
    _unique_ids(records)
    kept = [r for r in records if r.get("status", "kept") != "rejected"]
    dropped = [r for r in records if r.get("status") == "rejected"]
    return Dataset(name=p.stem, source=p, records=kept, rejected=dropped)


def _unique_ids(records: list[Record]) -> None:
    """Give repeated ids a ``~N`` suffix: every analysis table is keyed by id."""
    seen: dict[str, int] = {}
    for r in records:
        rid = str(r["id"])
        if rid in seen:
            seen[rid] += 1
            r["id"] = f"{rid}~{seen[rid]}"
        else:
            seen[rid] = 1
            r["id"] = rid


def read_rows(
    path: Path,
    *,
    instruction_field: str | None = None,
    response_field: str | None = None,
    id_field: str | None = None,
) -> Iterator[Record]:
    """Yield records from one file (read by :func:`instructforge.inputs.read_rows`, the
    reader every command shares), converting plain rows with :func:`row_to_record`."""
    try:
        for row in inputs.read_rows(path):
            where = f"{path}:{row.line}"  # "line" is the row number in a JSON list / Parquet
            if row.problem is not None:
                raise DatasetError(f"{where}: {row.problem}")
            data = row.data
            if path.suffix.lower() == ".parquet":
                data = _nested_from_json(data)
            yield row_to_record(
                data, where, instruction_field=instruction_field,
                response_field=response_field, id_field=id_field,
            )
    except InputError as e:
        raise DatasetError("\n".join(e.problems)) from None


def row_to_record(
    row: Any,
    where: str,
    *,
    instruction_field: str | None = None,
    response_field: str | None = None,
    id_field: str | None = None,
) -> Record:
    """Turn one row into a record; ``where`` (``file:line``) goes into error messages.

    >>> row_to_record({"instruction": "Add 2+2.", "output": "4"}, "x.jsonl:1")["messages"]
    [{'role': 'user', 'content': 'Add 2+2.'}, {'role': 'assistant', 'content': '4'}]
    """
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
    file, _, line = where.rpartition(":")
    source = {"file": file, "line": int(line) if line.isdigit() else line}
    if instruction_field is None and isinstance(row.get("messages"), list):
        rec = dict(row)
        if problem := messages_problem(row["messages"]):
            raise DatasetError(f"{where}: {problem}")
        rec.setdefault("id", str(row.get(id_field)) if id_field and row.get(id_field) is not None
                       else f"line-{source['line']}")
        rec.setdefault("schema_version", 1)
        rec.setdefault("method", "input")
        rec.setdefault("source", source)
        rec.setdefault("lineage", None)
        rec.setdefault("metadata", {})
        rec.setdefault("status", "kept")
        return rec
    if instruction_field is None and isinstance(row.get("conversations"), list):
        # ShareGPT: [{"from": "human", "value": ...}, ...]
        msgs = []
        for i, turn in enumerate(row["conversations"]):
            if not isinstance(turn, dict):
                raise DatasetError(f"{where}: field 'conversations[{i}]' must be an object")
            role = ROLE_ALIASES.get(str(turn.get("from", turn.get("role", ""))).lower())
            if role is None:
                raise DatasetError(
                    f"{where}: field 'conversations[{i}].from' is {turn.get('from')!r}; "
                    "expected human/gpt/system"
                )
            msgs.append({"role": role, "content": str(turn.get("value", turn.get("content", "")))})
        return _plain_record(row, msgs, where, source, id_field)
    ins_key = instruction_field or next((k for k in INSTRUCTION_FIELDS if k in row), None)
    if ins_key is None or ins_key not in row:
        wanted = instruction_field or "/".join(INSTRUCTION_FIELDS)
        raise DatasetError(
            f"{where}: no instruction field {wanted!r} (fields: {sorted(row)[:12]}); "
            "name it with --instruction-field"
        )
    text = row[ins_key]
    if not isinstance(text, str):
        raise DatasetError(f"{where}: field {ins_key!r} must be a string, got {type(text).__name__}")
    # Alpaca keeps the task's input apart from the instruction; the model sees both.
    if ins_key == "instruction" and isinstance(row.get("input"), str) and row["input"].strip():
        text = f"{text}\n\n{row['input']}"
    msgs = [{"role": "user", "content": text}]
    res_key = response_field or next((k for k in RESPONSE_FIELDS if k in row and k != ins_key), None)
    if response_field is not None and response_field not in row:
        raise DatasetError(f"{where}: no response field {response_field!r} (fields: {sorted(row)[:12]})")
    if res_key is not None and row.get(res_key) is not None:
        if not isinstance(row[res_key], str):
            raise DatasetError(
                f"{where}: field {res_key!r} must be a string, got {type(row[res_key]).__name__}"
            )
        msgs.append({"role": "assistant", "content": row[res_key]})
    return _plain_record(row, msgs, where, source, id_field)


def _plain_record(row: dict, msgs: list, where: str, source: dict, id_field: str | None) -> Record:
    if id_field is not None:
        if row.get(id_field) is None:
            raise DatasetError(f"{where}: no id field {id_field!r}")
        rid = str(row[id_field])
    elif row.get("id") is not None:
        rid = str(row["id"])
    else:
        rid = f"line-{source['line']}"  # as the input reader names rows without an id
    meta = {k: v for k, v in row.items() if k in ("category", "round", "operation")}
    rec = new_record(rid, method=str(row.get("method", "input")), messages=msgs, source=source,
                     lineage=row.get("lineage") if isinstance(row.get("lineage"), dict) else None,
                     metadata=meta)
    return rec


def _nested_from_json(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """Our Parquet export stores nested dicts as JSON text: read them back."""
    for key in ("lineage", "metadata", "source", "rejection"):
        if row is not None and isinstance(row.get(key), str):
            try:
                row[key] = json.loads(row[key])
            except json.JSONDecodeError:
                pass
    return row


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: invalid JSON ({e})") from None
    return data if isinstance(data, dict) else None


def _read_yaml(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: invalid YAML ({e})") from None
    return data if isinstance(data, dict) else None
