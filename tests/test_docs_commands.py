"""Every ``instructforge ...`` command line shown in README.md and docs/*.md works as written:
each option it names exists, and it runs in ``--dry-run`` form (``--help`` for commands with
nothing to plan, and for synopses like ``respond INPUT -o RUN_DIR [--column C]``) in a
folder holding the files it reads. So the docs cannot drift from the CLI again. Also: every
relative link in the docs points at a file of the repository."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from instructforge.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Commands whose --dry-run validates inputs and options and calls nothing.
DRY_RUN = {"respond", "evolve", "auto-evol", "magpie", "analyze", "filter", "train", "eval",
           "experiment", "decontaminate", "preferences", "select"}
# Arguments of a synopsis rather than a command to run.
PLACEHOLDER = re.compile(r"^\[|^[A-Z][A-Z_]+$|\.\.\.")


def doc_commands() -> list[tuple[str, str]]:
    """(where, command line) for every command line in the docs' code blocks; a line ending
    in a backslash and the indented lines of a synopsis continue it."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```[a-z]*\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            lines = block.replace("\\\n", " ").splitlines()
            for i, line in enumerate(lines):
                if not line.strip().startswith("instructforge "):
                    continue
                full = line.strip()
                for more in lines[i + 1:]:
                    if not more.startswith((" ", "\t")) or not more.strip().startswith("["):
                        break
                    full += " " + more.strip()
                found.append((f"{doc.name}: {line.strip()[:60]}", full))
    return found


COMMANDS = doc_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) > 40
    assert {shlex.split(c, comments=True)[1] for _, c in COMMANDS} >= DRY_RUN


def _options(command: click.Command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}


def _seed_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (ROOT / "examples" / "seeds.jsonl").read_text()
            .splitlines() if line.strip()]
    if path.suffix == ".json":  # an Alpaca-style file
        path.write_text(json.dumps([{"instruction": r["instruction"], "output": "An answer."}
                                    for r in rows]))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run_dir(path: Path) -> None:
    """A finished run directory with answered chats (what analyze, filter and train read)."""
    from instructforge.records import new_record

    (path / "data").mkdir(parents=True, exist_ok=True)
    recs = [new_record(f"seed-{i:02d}", method="evol_instruct", messages=[
        {"role": "user", "content": f"Question {i}: how do plants make sugar?"},
        {"role": "assistant", "content": f"By photosynthesis, answer {i}."}]) for i in range(4)]
    (path / "data" / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def _pairs_run(path: Path) -> None:
    """A run directory as ``preferences`` writes it: each chat's answer is the chosen one of
    a chosen/rejected pair (what ``export --format dpo`` and ``train --method dpo`` read)."""
    _run_dir(path)
    records = path / "data" / "records.jsonl"
    recs = [json.loads(line) for line in records.read_text().splitlines()]
    for r in recs:
        r["metadata"] = {"preferences": {"chosen": r["messages"][-1]["content"],
                                         "rejected": "I do not know.", "reason": "on topic"}}
    records.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _prepare(args: list[str]) -> None:
    """Create, in the current folder, the inputs ``args`` read that a reader would have."""
    name, rest = args[0], args[1:]
    positional = [a for i, a in enumerate(rest) if not a.startswith("-")
                  and (i == 0 or not rest[i - 1].startswith("-"))]
    source = Path(positional[0]) if positional else None
    dpo = name == "train" and "dpo" in rest
    if (name == "preferences" or dpo) and source and not source.exists():
        _pairs_run(source)
    if name in ("respond", "evolve", "auto-evol") and source and not source.exists():
        _seed_file(source)
    if name in ("analyze", "filter", "train", "decontaminate", "select") and source \
            and not source.exists():
        if source.suffix in (".json", ".jsonl"):
            _seed_file(source)
        else:
            _run_dir(source)
    for i, arg in enumerate(rest[:-1]):  # decontaminate's benchmark files
        bench = Path(rest[i + 1])
        if arg == "--against" and bench.suffix == ".jsonl" and not bench.exists():
            bench.parent.mkdir(parents=True, exist_ok=True)
            bench.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    if "--ops-dir" in rest:
        folder = Path(rest[rest.index("--ops-dir") + 1])
        folder.mkdir(parents=True, exist_ok=True)
        for op in rest[rest.index("--ops") + 1].split(",") if "--ops" in rest else []:
            if not (ROOT / "src/instructforge/prompts/evol/operations" / f"{op}.jinja").exists():
                (folder / f"{op}.jinja").write_text("Rewrite for a new audience: "
                                                    "{{ instruction }}")


@pytest.mark.parametrize(("where", "line"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_doc_command_line_runs(where, line, tmp_path, monkeypatch):
    args = shlex.split(line, comments=True)[1:]
    group = typer.main.get_command(app)
    assert args[0] in group.commands, f"{where}: no command {args[0]!r}"
    command = group.commands[args[0]]
    unknown = [a.split("=")[0] for a in args[1:] if a.startswith("-")
               and a.split("=")[0] not in _options(command)]
    assert not unknown, f"{where}: {args[0]} has no option {', '.join(unknown)}"

    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    synopsis = any(PLACEHOLDER.search(a) for a in args[1:])
    if synopsis or args[0] not in DRY_RUN:
        run = [args[0], "--help"]
    else:
        _prepare(args)
        run = [*args, *([] if "--dry-run" in args else ["--dry-run"])]
    res = CliRunner().invoke(app, run, terminal_width=200)
    assert res.exit_code == 0, f"{where}: instructforge {' '.join(run)}\n{res.output}"
    if "--dry-run" in run:
        assert "nothing was called" in res.output or args[0] == "experiment", res.output


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_relative_links_point_inside_the_repository(doc):
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path = (doc.parent / target).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name}: {target} is outside the repository"
        assert path.exists(), f"{doc.name}: {target} does not exist"
