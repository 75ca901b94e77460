"""Atomic file writes: a reader (or a rerun after ``kill -9``) sees the old file or the whole
new one, never half of it.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "summary.json"
>>> write_atomic(path, {"kept": 3})
>>> path.read_text()
'{\\n  "kept": 3\\n}\\n'
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` (``NAME.tmp``) to write; renamed onto ``path`` when
    the block ends, removed when it raises."""
    final = Path(path)
    tmp = final.with_name(final.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike[str]) -> Iterator[IO[str]]:
    """A UTF-8 text file to write that replaces ``path`` whole when the block ends."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yield f


def write_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Replace ``path`` with ``data``: a string as it is, anything else as indented JSON."""
    text = data if isinstance(data, str) else json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
