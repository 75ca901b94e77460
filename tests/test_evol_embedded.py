"""Evol-Instruct on the real embedded model (SmolLM2-135M over HTTP): each operation yields
a child, and the `evolve` command runs end to end. Small token caps keep it fast."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from instructforge.cli import app
from instructforge.engine import RunDir
from instructforge.llm import SamplingParams
from instructforge.methods.eliminate import normalise_instruction
from instructforge.methods.evol_instruct import load_operations

pytestmark = pytest.mark.llm

SEED = "Explain why leaves change colour in autumn."


def test_each_operation_renders_and_produces_a_child(embedded_llm):
    ops = load_operations()

    async def evolve_all():
        params = SamplingParams(temperature=0.7, max_tokens=32, seed=1)
        return await asyncio.gather(*[
            embedded_llm.chat([{"role": "user", "content": op.render(SEED)}], params)
            for op in ops.values()
        ])

    outs = asyncio.run(evolve_all())
    assert len(outs) == 6
    for name, out in zip(ops, outs, strict=True):
        child, _ = normalise_instruction(out.text)
        assert child.strip(), f"{name}: the model returned no instruction"
        assert out.completion_tokens > 0


def test_evolve_command_end_to_end(embedded_llm, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        json.dumps({"id": "a", "instruction": SEED}) + "\n"
        + json.dumps({"id": "b", "instruction": "Name three uses of copper."}) + "\n"
    )
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "evolve", str(seeds), "-o", str(run_dir), "--rounds", "2", "--keep-seeds",
        "--base-url", embedded_llm.base_url, "--evol-max-tokens", "40", "--max-tokens", "32",
        "--judge-max-tokens", "8", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    assert "Evol-Instruct: per round and operation" in result.output
    rd = RunDir(run_dir)
    kept, dropped = list(rd.kept()), list(rd.dropped())
    children = {r["id"] for r in [*kept, *dropped] if r["lineage"]["round"] > 0}
    assert children == {"a-r1", "a-r2", "b-r1", "b-r2"}
    assert {r["id"] for r in kept if r["lineage"]["round"] == 0} == {"a", "b"}
    for r in kept:
        assert r["messages"][-1]["role"] == "assistant"
        assert r["lineage"]["history"][0] in (SEED, "Name three uses of copper.")
    for r in dropped:
        assert r["rejection"]["rule"] and r["rejection"]["evidence"] is not None
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["total"]["attempted"] == 4
    assert rd.parquet.exists()


def test_elimination_judges_always_answer_one_of_their_choices(embedded_llm):
    """Every judge question of the elimination, asked of the real model with its choice
    constraint over llama.cpp: no verdict is unreadable, every answer is a choice."""
    from instructforge.engine import Context
    from instructforge.methods import eliminate as el

    cases = [
        ("Name three uses of copper.", "Name three uses of copper in electronics, with one "
         "example product for each.", "add_constraints"),
        ("What is 12 times 8?", "If 12 is multiplied by 8 the result is 96, which is even.",
         "deepening"),
        ("Explain photosynthesis.", "Explain photosynthesis.\n", "concretizing"),
        ("Sort these numbers: 5, 2, 9.", "Write a haiku about the sea.", "increased_reasoning_steps"),
        ("Describe a cat.", "Describe a rare breed of cat and its temperament.", "in_breadth"),
    ]
    ctx = Context(None)
    answers: list[tuple[str, tuple[str, ...], str]] = []

    async def ask(prompt: str, choices: tuple[str, ...]) -> str:
        out = await ctx.chat(embedded_llm, [{"role": "user", "content": prompt}],
                             SamplingParams(0.0, 1.0, 8, 0, choices=choices), step="judge")
        answers.append((out.text, choices, out.extra.get("constraint")))
        return out.text

    async def run_all():
        return await asyncio.gather(*[
            el.check_instruction(p, c, ask, el.EliminationConfig(), operation=op)
            for p, c, op in cases])

    results = asyncio.run(run_all())
    assert len(answers) >= 4  # at least the equality question of each non-copy
    for text, choices, constraint in answers:
        assert text in choices and constraint == "native"
    assert sum(el.unreadable_verdicts([f.to_dict() for f in fs]) for fs in results) == 0
    # The word-for-word copy is Equal without asking.
    assert el.first_fired(results[2]).rule == el.NO_INFORMATION_GAIN
