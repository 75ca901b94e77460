"""What the ``preferences`` tests share: an input run and the judge's fixed verdict."""

from __future__ import annotations

import json
from pathlib import Path

from instructforge.records import new_record

VERDICT = json.dumps({"analysis": "Answer 1 names the right city.", "best": "1"})


def make_run(path: Path, n: int = 3) -> Path:
    """A run directory with ``n`` answered instructions."""
    path.joinpath("data").mkdir(parents=True, exist_ok=True)
    with open(path / "data" / "records.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            rec = new_record(f"q{i}", messages=[
                {"role": "user", "content": f"What is the capital of France? ({i})"},
                {"role": "assistant", "content": "old answer"}], method="respond")
            f.write(json.dumps(rec) + "\n")
    return path
