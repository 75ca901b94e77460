"""The one dataset reader: rows from JSONL, JSON, Parquet, CSV or a Hugging Face dataset,
lazily, each located (file and line or row), for every command (the methods' inputs here;
``analyze``/``filter`` through :mod:`instructforge.analysis.dataset`, ``export``/``train``
through :mod:`instructforge.tuning.export`). :func:`read_rows` gives the raw rows;
:class:`InstructionSource` turns them into instruction records.

Every problem names the file, the line (or row) and the field::

    source = InstructionSource("seeds.jsonl", column="instruction")
    source.validate()          # raises InputError listing every bad row, before any LLM call
    for record in source:      # records.py schema, id from an "id" field or the line number
        ...

With ``skip_invalid=True`` bad rows come out as rejected records (``rejected.jsonl``) and the
good ones are processed.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructforge.errors import InstructForgeError
from instructforge.records import IdIndex, Record, id_problem, new_record, rejected

SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")
INVALID_ID_PREFIX = "invalid-line-"  # + the line: the id of a row rejected as invalid


# Large enough for any real field and within a C long on every platform.
_CSV_FIELD_LIMIT = 2**31 - 1


def _not_utf8(e: UnicodeDecodeError, start: int) -> str:
    """The bad byte and its offset in the file (the decoded part starts at ``start``)."""
    return (f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at file offset {start + e.start} "
            f"({e.reason})")


def read_rows(path: str | Path, *, split: str = "train") -> Iterator[Row]:
    """Every row of a dataset, in order: a ``.jsonl``/``.ndjson``, ``.json``, ``.parquet`` or
    ``.csv`` file, a folder saved with ``Dataset.save_to_disk``, or ``hf:NAME[:split]``.

    A row that cannot be read comes with its ``problem`` (bad JSON, bytes that are not UTF-8,
    not an object...) instead of ``data``, so a caller can reject it alone; a file that cannot
    be read at all raises :class:`InputError`.
    """
    return InstructionSource(path, split=split).rows()


class InputError(InstructForgeError, ValueError):
    """Bad input, with every problem located (file, line/row, field)."""

    def __init__(self, problems: list[str], total_bad: int | None = None) -> None:
        self.problems = problems
        more = (total_bad or len(problems)) - len(problems)
        text = "\n".join(f"  {p}" for p in problems)
        if more > 0:
            text += f"\n  ... and {more} more"
        super().__init__(f"invalid input:\n{text}")


@dataclass
class Row:
    where: str  # "file.jsonl:12" or "file.parquet row 3"
    line: int
    data: dict[str, Any] | None
    problem: str | None = None


class InstructionSource:
    """A lazily read, re-iterable source of instruction records."""

    def __init__(
        self,
        path: str | Path,
        *,
        column: str = "instruction",
        id_column: str = "id",
        skip_invalid: bool = False,
        limit: int | None = None,
        split: str = "train",
    ) -> None:
        self.spec = str(path)
        self.path = Path(path)
        self.column = column
        self.id_column = id_column
        self.skip_invalid = skip_invalid
        self.limit = limit
        self.split = split
        self.kind = self._kind()

    def _kind(self) -> str:
        if self.spec.startswith("hf:"):
            return "hf"
        if self.path.is_dir():
            return "hf-disk"
        if not self.path.exists():
            raise InputError([f"{self.spec}: no such file"])
        suffix = self.path.suffix.lower()
        if suffix not in SUFFIXES:
            raise InputError(
                [f"{self.spec}: unsupported file type {suffix!r} (use {', '.join(SUFFIXES)})"]
            )
        return "jsonl" if suffix == ".ndjson" else suffix[1:]

    # -- raw rows ---------------------------------------------------------------------------
    def rows(self) -> Iterator[Row]:
        """The raw rows (see :func:`read_rows`)."""
        name = self.spec
        if self.kind == "jsonl":
            offset = 0  # of the line in the file, for a byte-exact location
            with open(self.path, "rb") as f:
                for n, raw in enumerate(f, 1):
                    start, offset = offset, offset + len(raw)
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        yield Row(f"{name}:{n}", n, None, _not_utf8(e, start))
                        continue
                    if not text.strip():
                        continue
                    try:
                        data = json.loads(text)
                    except json.JSONDecodeError as e:
                        problem = f"invalid JSON: {e.msg} (column {e.colno})"
                        if not raw.endswith(b"\n"):
                            problem += ("; the last record is cut short (no line ending): if a "
                                        "job was writing this file, rerun it, which repairs it")
                        yield Row(f"{name}:{n}", n, None, problem)
                        continue
                    yield self._obj(f"{name}:{n}", n, data)
        elif self.kind == "json":
            raw = self.path.read_bytes()
            try:
                data = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                line = raw.count(b"\n", 0, e.start) + 1
                yield Row(f"{name}:{line}", line, None, _not_utf8(e, 0))
                return
            except json.JSONDecodeError as e:
                yield Row(f"{name}:{e.lineno}", e.lineno, None, f"invalid JSON: {e.msg}")
                return
            if isinstance(data, dict):
                # {"data": [...]} or {"train": [...]}: the rows inside; else one object.
                inner = data.get("data", next(iter(data.values())) if len(data) == 1 else None)
                data = inner if isinstance(inner, list) else [data]
            if not isinstance(data, list):
                yield Row(name, 0, None, "expected a JSON array of objects")
                return
            for i, item in enumerate(data):
                yield self._obj(f"{name} item {i}", i + 1, item)
        elif self.kind == "csv":
            yield from self._csv_rows()
        elif self.kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            n = 0
            try:
                for batch in pq.ParquetFile(self.path).iter_batches(batch_size=4096):
                    for item in batch.to_pylist():
                        n += 1
                        yield self._obj(f"{name} row {n}", n, item)
            except (pa.ArrowException, OSError) as e:  # a damaged or truncated file
                at = f" at row {n + 1}" if n else ""
                raise InputError([f"{name}: not a readable Parquet file{at} ({e})"]) from None
        else:
            for n, item in enumerate(self._hf_rows(), 1):
                yield self._obj(f"{name} row {n}", n, item)

    def _csv_rows(self) -> Iterator[Row]:
        """CSV rows, decoded line by line: a bad byte or a malformed row costs that row only.

        A row is located by its last line (a quoted field may span several), as ``csv``
        counts; the problem names the exact line and byte of a decoding error."""
        name = self.spec
        # The csv module refuses fields over 128 KiB by default; a long instruction is data.
        csv.field_size_limit(_CSV_FIELD_LIMIT)
        undecodable: dict[int, str] = {}  # physical line -> what is wrong with it

        def lines() -> Iterator[str]:
            n = offset = 0
            with open(self.path, "rb") as f:
                for chunk in f:
                    # csv wants lines with their endings; "\r"-only endings count as lines
                    # too, as in text mode with newline="".
                    for raw in chunk.splitlines(keepends=True):
                        n, start, offset = n + 1, offset, offset + len(raw)
                        try:
                            yield raw.decode("utf-8")
                        except UnicodeDecodeError as e:
                            undecodable[n] = _not_utf8(e, start)
                            yield raw.decode("utf-8", errors="replace")

        reader = csv.reader(lines())
        header: list[str] | None = None
        last = 0
        for fields in reader:
            first, last = last + 1, reader.line_num
            where = f"{name}:{last}"
            bad = [n for n in range(first, last + 1) if n in undecodable]
            problem = None
            if bad:
                problem = undecodable[bad[0]] + (f" on line {bad[0]}" if bad[0] != last else "")
                for n in bad:
                    del undecodable[n]
            if header is None:
                if problem:
                    raise InputError([f"{where}: the header line is unreadable: {problem}"])
                if fields:
                    header = fields
                continue
            if not fields:  # a blank line
                continue
            if problem:
                yield Row(where, last, None, problem)
            elif len(fields) > len(header):
                yield Row(where, last, None,
                          f"{len(fields)} fields but the header has {len(header)} (quote a "
                          "field that contains a comma)")
            else:  # a short row lacks its last fields
                yield Row(where, last, dict(zip(header, fields, strict=False)))

    def _hf_rows(self) -> Iterator[dict[str, Any]]:
        import datasets

        if self.kind == "hf-disk":
            try:
                ds = datasets.load_from_disk(str(self.path))
            except FileNotFoundError:
                raise InputError([
                    f"{self.spec}: a folder, but not a dataset saved with "
                    "Dataset.save_to_disk; pass a .jsonl, .json, .parquet or .csv file, such a "
                    "folder, or hf:NAME[:split]"]) from None
            if isinstance(ds, datasets.DatasetDict):
                if self.split not in ds:
                    raise InputError([f"{self.spec}: no split {self.split!r} (splits: "
                                      f"{', '.join(ds)})"])
                ds = ds[self.split]
            yield from ds
            return
        name, _, split = self.spec[3:].partition(":")
        try:
            yield from datasets.load_dataset(name, split=split or self.split, streaming=True)
        except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:
            # Network, a missing dataset or split: datasets raises each as its own type.
            save = (f'python -c "import datasets; datasets.load_dataset({name!r}, '
                    f"split={split or self.split!r}).save_to_disk('{name.replace('/', '_')}')\"")
            if any(getattr(datasets.config, v, False)
                   for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
                raise InputError([
                    f"{self.spec}: offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) "
                    f"and the dataset is not in the local cache ({e}). On a machine with "
                    f"network access, save it with {save} and pass that folder, or run "
                    "without offline mode"]) from None
            raise InputError([f"{self.spec}: cannot load the Hugging Face dataset ({e})"]) from None

    @staticmethod
    def _obj(where: str, line: int, item: Any) -> Row:
        if not isinstance(item, dict):
            return Row(where, line, None, f"expected a JSON object, got {type(item).__name__}")
        return Row(where, line, item)

    # -- records ----------------------------------------------------------------------------
    def _check(self, row: Row) -> str | None:
        if row.problem:
            return row.problem
        assert row.data is not None
        if self.column not in row.data:
            cols = ", ".join(sorted(row.data)) or "none"
            return f"field {self.column!r} is missing (fields present: {cols}; set --column)"
        value = row.data[self.column]
        if not isinstance(value, str):
            return f"field {self.column!r} must be a string, got {type(value).__name__}"
        if not value.strip():
            return f"field {self.column!r} is empty"
        return None

    def _record(self, row: Row) -> Record:
        assert row.data is not None
        rid = row.data.get(self.id_column)
        rid = str(rid) if isinstance(rid, str | int) and str(rid).strip() else f"line-{row.line}"
        return new_record(
            rid,
            row.data[self.column].strip(),
            method="input",
            source={"file": self.spec, "line": row.line, "id": rid},
        )

    def __iter__(self) -> Iterator[Record]:
        n = 0
        with IdIndex() as seen:
            for row in self.rows():
                if self.limit is not None and n >= self.limit:
                    return
                rec, problem = self._checked(row, seen)
                if rec is not None:
                    n += 1
                    yield rec
                else:
                    yield self._invalid(row, problem or "invalid row")

    def _checked(self, row: Row, ids: IdIndex) -> tuple[Record | None, str | None]:
        """The row's record, or why it is bad (a field, or an id seen before in ``ids``)."""
        problem = self._check(row)
        if problem is not None:
            return None, problem
        rec = self._record(row)
        if problem := id_problem(rec["id"]):
            return None, problem
        if rec["id"].startswith(INVALID_ID_PREFIX):
            # The id of the rejected row at that line: the two would clash in the run.
            return None, (f"id {rec['id']!r} is reserved: ids starting with "
                          f"{INVALID_ID_PREFIX!r} name the rows --skip-invalid rejects; "
                          "rename it")
        if first := ids.first_seen(rec["id"], row.where):
            return None, f"duplicate id {rec['id']!r} (first at {first})"
        return rec, None

    def _invalid(self, row: Row, problem: str) -> Record:
        """A bad row as a rejected record (``skip_invalid``), or :class:`InputError`."""
        if not self.skip_invalid:
            raise InputError([f"{row.where}: {problem}"])
        rec = new_record(f"{INVALID_ID_PREFIX}{row.line}", method="input",
                         source={"file": self.spec, "line": row.line})
        return rejected(rec, stage="input", rule="invalid_input",
                        reason=f"{row.where}: {problem}", evidence=row.data)

    def validate(self, max_problems: int = 20) -> int:
        """Read everything once; raise :class:`InputError` listing the problems unless
        ``skip_invalid``. Returns the number of valid records (after ``limit``)."""
        good = bad = 0
        problems: list[str] = []
        with IdIndex() as ids:
            for row in self.rows():
                problem = self._checked(row, ids)[1]
                if problem is None:
                    good += 1
                else:
                    bad += 1
                    if len(problems) < max_problems:
                        problems.append(f"{row.where}: {problem}")
        if good + bad == 0:
            raise InputError([f"{self.spec}: the file is empty (no records)"])
        if bad and not self.skip_invalid:
            raise InputError(problems, bad)
        if good == 0:
            raise InputError([f"{self.spec}: no valid records", *problems], bad)
        return good if self.limit is None else min(good, self.limit)
