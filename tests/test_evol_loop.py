"""The Evol-Instruct loop on a scripted fake LLM: lineage, the pool rule, the rules in the
loop, reproducibility, resume and the summary."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from instructforge.engine import RunDir
from instructforge.llm import LLM, Completion, SamplingParams
from instructforge.methods.eliminate import EliminationConfig
from instructforge.methods.evol_instruct import (
    EvolConfig,
    EvolError,
    Models,
    chain_records,
    evolve,
    load_operations,
    parse_weights,
    pick_operation,
    select_operations,
    summarise,
)

GIVEN = re.compile(r"#(?:The )?Given Prompt#:\n(.*)\n\n#(?:Rewritten|Created) Prompt#:$", re.S)


class ScriptedLLM(LLM):
    """Plays all three roles. An evolution appends " +N" (N = round) to its parent; the
    judge says Not Equal; our two judges say the child is an instruction that keeps its task;
    the answer is a plain sentence. ``evolve_reply`` /
    ``judge_reply`` / ``answer_reply`` override a reply for a given parent / child text;
    a callable override gets the times that text was seen so far."""

    model_id = "scripted"

    def __init__(self, evolve_reply=None, judge_reply=None, answer_reply=None,
                 finish_reason: str = "stop") -> None:
        self.evolve_reply = evolve_reply or {}
        self.judge_reply = judge_reply or {}
        self.answer_reply = answer_reply or {}
        self.finish_reason = finish_reason
        self.calls: list[tuple[str, str]] = []  # (role, prompt)
        self.seen: dict[str, int] = {}

    @staticmethod
    def role(prompt: str) -> str:
        if GIVEN.search(prompt):
            return "evolve"
        if prompt.startswith("Here are two instructions"):
            return "judge"
        if prompt.startswith("A model was asked to rewrite an instruction"):
            return "instruction_judge"
        if prompt.startswith("An instruction was rewritten"):
            return "task_judge"
        return "respond"

    def reply(self, prompt: str) -> str:
        role = self.role(prompt)
        self.calls.append((role, prompt))
        if role == "evolve":
            parent = GIVEN.search(prompt).group(1)
            n = self.seen[parent] = self.seen.get(parent, 0) + 1
            r = self.evolve_reply.get(parent)
            if callable(r):
                r = r(n)
            return r if r is not None else f"{parent} +{parent.count('+') + 1}"
        if role == "judge":
            child = prompt.split("The Second Prompt: ", 1)[1].split("\n\n")[0]
            return self.judge_reply.get(child, "Not Equal")
        if role == "instruction_judge":
            return "Instruction"
        if role == "task_judge":
            return "Yes"
        return self.answer_reply.get(prompt, f"Here is a careful answer to: {prompt}")

    async def chat(self, messages, params: SamplingParams) -> Completion:
        text = self.reply(messages[-1]["content"])
        finish = self.finish_reason if self.role(messages[-1]["content"]) == "respond" else "stop"
        return Completion(text, finish, prompt_tokens=10, completion_tokens=5,
                          model=self.model_id)

    async def complete(self, text, params):  # pragma: no cover - Evol-Instruct only chats
        raise NotImplementedError

    def count(self, role: str) -> int:
        return sum(1 for r, _ in self.calls if r == role)


def write_seeds(path: Path, texts: list[str]) -> Path:
    with open(path, "w") as f:
        for i, t in enumerate(texts, 1):
            f.write(json.dumps({"id": f"s{i}", "instruction": t}) + "\n")
    return path


def run(tmp_path: Path, llm: ScriptedLLM, seeds=("Name a fruit.",), run_name="run",
        **cfg) -> RunDir:
    inp = write_seeds(tmp_path / "seeds.jsonl", list(seeds))
    config = EvolConfig(**{"rounds": 3, **cfg})
    evolve(inp, tmp_path / run_name, config, models=Models(llm, llm, llm), progress=False)
    return RunDir(tmp_path / run_name)


def by_id(records) -> dict[str, dict]:
    return {r["id"]: r for r in records}


# --- lineage -------------------------------------------------------------------------------


def test_lineage_across_three_rounds(tmp_path):
    kept = by_id(run(tmp_path, ScriptedLLM()).kept())
    assert sorted(kept) == ["s1-r1", "s1-r2", "s1-r3"]
    r3 = kept["s1-r3"]
    assert r3["lineage"]["seed_id"] == "s1"
    assert r3["lineage"]["parent_id"] == "s1-r2"
    assert kept["s1-r2"]["lineage"]["parent_id"] == "s1-r1"
    assert kept["s1-r1"]["lineage"]["parent_id"] == "s1"
    assert [kept[f"s1-r{i}"]["lineage"]["round"] for i in (1, 2, 3)] == [1, 2, 3]
    assert r3["lineage"]["history"] == [
        "Name a fruit.", "Name a fruit. +1", "Name a fruit. +1 +2", "Name a fruit. +1 +2 +3"
    ]
    assert r3["messages"][0] == {"role": "user", "content": "Name a fruit. +1 +2 +3"}
    assert r3["messages"][1]["role"] == "assistant"
    assert r3["lineage"]["operation"] in load_operations()
    assert r3["lineage"]["elimination"]["kept"] is True
    assert r3["method"] == "evol_instruct" and r3["status"] == "kept"


def test_each_round_evolves_the_current_pool_member(tmp_path):
    llm = ScriptedLLM()
    run(tmp_path, llm)
    parents = [GIVEN.search(p).group(1) for r, p in llm.calls if r == "evolve"]
    assert parents == ["Name a fruit.", "Name a fruit. +1", "Name a fruit. +1 +2"]


def test_seeds_are_kept_with_an_answer_only_when_asked(tmp_path):
    assert "s1" not in by_id(run(tmp_path, ScriptedLLM()).kept())
    kept = by_id(run(tmp_path, ScriptedLLM(), run_name="with", keep_seeds=True).kept())
    seed = kept["s1"]
    assert seed["lineage"]["round"] == 0 and seed["lineage"]["parent_id"] is None
    assert seed["messages"][-1]["role"] == "assistant"


# --- the pool rule -------------------------------------------------------------------------


def test_failed_child_leaves_its_parent_for_the_next_round(tmp_path):
    # Round 2 echoes the evolving prompt (rule 4); round 3 retries the round-1 child.
    llm = ScriptedLLM(evolve_reply={
        "Name a fruit. +1": lambda n: "Rewrite the given prompt about fruit." if n == 1 else None
    })
    rd = run(tmp_path, llm)
    kept, dropped = by_id(rd.kept()), by_id(rd.dropped())
    assert sorted(kept) == ["s1-r1", "s1-r3"]
    assert dropped["s1-r2"]["rejection"]["rule"] == "copies_evolving_prompt"
    assert dropped["s1-r2"]["rejection"]["evidence"]["matches"] == ["given prompt"]
    r3 = kept["s1-r3"]["lineage"]
    assert r3["parent_id"] == "s1-r1"
    assert r3["history"] == ["Name a fruit.", "Name a fruit. +1", "Name a fruit. +1 +2"]
    parents = [GIVEN.search(p).group(1) for r, p in llm.calls if r == "evolve"]
    assert parents == ["Name a fruit.", "Name a fruit. +1", "Name a fruit. +1"]


def test_seeds_evolve_independently(tmp_path):
    llm = ScriptedLLM(evolve_reply={"Name a city.": "#Rewritten Prompt#"})
    rd = run(tmp_path, llm, seeds=("Name a fruit.", "Name a city."), rounds=2)
    assert sorted(by_id(rd.kept())) == ["s1-r1", "s1-r2"]
    assert sorted(by_id(rd.dropped())) == ["s2-r1", "s2-r2"]


# --- each rule inside the loop ---------------------------------------------------------


def test_equal_verdict_eliminates_with_the_judge_text_as_evidence(tmp_path):
    llm = ScriptedLLM(judge_reply={"Name a fruit. +1": "I believe they are Equal."})
    dropped = by_id(run(tmp_path, llm, rounds=1).dropped())
    rej = dropped["s1-r1"]["rejection"]
    assert rej["rule"] == "no_information_gain"
    assert rej["evidence"]["judge"] == "I believe they are Equal."
    assert llm.count("respond") == 0  # no answer is paid for a child already failed


def test_identical_child_is_eliminated_without_asking_the_judge(tmp_path):
    llm = ScriptedLLM(evolve_reply={"Name a fruit.": "name a fruit"})
    dropped = by_id(run(tmp_path, llm, rounds=1).dropped())
    assert dropped["s1-r1"]["rejection"]["rule"] == "no_information_gain"
    assert llm.count("judge") == 0


def test_short_sorry_answer_eliminates(tmp_path):
    llm = ScriptedLLM(answer_reply={"Name a fruit. +1": "Sorry, I can't help with that."})
    rej = by_id(run(tmp_path, llm, rounds=1).dropped())["s1-r1"]
    assert rej["rejection"]["rule"] == "hard_to_respond"
    assert rej["messages"][-1]["content"] == "Sorry, I can't help with that."


def test_stop_word_answer_eliminates(tmp_path):
    llm = ScriptedLLM(answer_reply={"Name a fruit. +1": "It is what it is."})
    rej = by_id(run(tmp_path, llm, rounds=1).dropped())["s1-r1"]
    assert rej["rejection"]["rule"] == "only_stop_words"


def test_empty_evolution_eliminates(tmp_path):
    llm = ScriptedLLM(evolve_reply={"Name a fruit.": "  \n"})
    rej = by_id(run(tmp_path, llm, rounds=1).dropped())["s1-r1"]
    assert rej["rejection"]["rule"] == "empty_instruction"


def test_a_switched_off_rule_does_not_fire(tmp_path):
    llm = ScriptedLLM(answer_reply={"Name a fruit. +1": "It is what it is."})
    rules = EliminationConfig(only_stop_words=False)
    kept = by_id(run(tmp_path, llm, rounds=1, elimination=rules).kept())
    findings = kept["s1-r1"]["lineage"]["elimination"]["findings"]
    assert "only_stop_words" not in [f["rule"] for f in findings]


def test_judge_is_not_called_when_rule1_is_off(tmp_path):
    llm = ScriptedLLM()
    run(tmp_path, llm, rounds=1, elimination=EliminationConfig(no_information_gain=False))
    assert llm.count("judge") == 0


def test_echoed_label_is_normalised_recorded_and_kept(tmp_path):
    llm = ScriptedLLM(evolve_reply={"Name a fruit.": "#Rewritten Prompt#: Name a rare fruit."})
    rec = by_id(run(tmp_path, llm, rounds=1).kept())["s1-r1"]
    assert rec["messages"][0]["content"] == "Name a rare fruit."
    assert [n["name"] for n in rec["lineage"]["normalisations"]] == ["leading_label"]
    assert rec["metadata"]["raw_evolution"] == "#Rewritten Prompt#: Name a rare fruit."


def test_answers_cut_at_the_token_limit_are_marked(tmp_path):
    rec = by_id(run(tmp_path, ScriptedLLM(finish_reason="length"), rounds=1).kept())["s1-r1"]
    assert rec["metadata"]["finish_reason"] == "length"
    assert rec["metadata"]["truncated"] is True


# --- operations: selection, weights, reproducibility, user folders ------------------------


def ops_used(rd: RunDir) -> list[str]:
    recs = sorted([*rd.kept(), *rd.dropped()], key=lambda r: r["id"])
    return [r["lineage"]["operation"] for r in recs]


def test_same_seed_same_operations_other_seed_others(tmp_path):
    seeds = [f"Task number {i}." for i in range(8)]
    a = ops_used(run(tmp_path, ScriptedLLM(), seeds=seeds, run_name="a"))
    b = ops_used(run(tmp_path, ScriptedLLM(), seeds=seeds, run_name="b"))
    c = ops_used(run(tmp_path, ScriptedLLM(), seeds=seeds, run_name="c", seed=7))
    assert a == b
    assert a != c


def test_ops_selects_the_operations(tmp_path):
    rd = run(tmp_path, ScriptedLLM(), seeds=[f"T{i}." for i in range(5)],
             operations=["deepening", "in_breadth"])
    assert set(ops_used(rd)) <= {"deepening", "in_breadth"}


def test_zero_weight_operation_is_never_picked():
    import random

    names, weights = select_operations(load_operations(), None, {"in_breadth": 0})
    rng = random.Random(0)
    picks = {pick_operation(rng, names, weights) for _ in range(500)}
    assert "in_breadth" not in picks and len(picks) == 5


def test_default_weights_are_uniform_over_six():
    names, weights = select_operations(load_operations(), None, None)
    assert len(names) == 6 and set(weights) == {1.0}


def test_unknown_operation_is_a_clear_error():
    with pytest.raises(EvolError, match="unknown operation.*widen"):
        select_operations(load_operations(), ["widen"], None)


def test_bad_weight_spec_is_a_clear_error():
    with pytest.raises(EvolError, match="NAME=NUMBER"):
        parse_weights("deepening:2")


def test_user_folder_adds_an_operation_that_can_extend_the_in_depth_frame(tmp_path):
    folder = tmp_path / "ops"
    folder.mkdir()
    (folder / "add_humour.jinja").write_text(
        '{% extends "in_depth.jinja" %}{% block method %}Ask for a joke too.{% endblock %}'
    )
    ops = load_operations(folder)
    assert len(ops) == 7
    text = ops["add_humour"].render("Name a fruit.")
    assert "Ask for a joke too." in text and "#The Given Prompt#:\nName a fruit." in text


def test_user_template_without_the_instruction_is_rejected_naming_the_file(tmp_path):
    folder = tmp_path / "ops"
    folder.mkdir()
    (folder / "broken.jinja").write_text("Make it harder.")
    with pytest.raises(EvolError, match=r"broken\.jinja.*instruction"):
        load_operations(folder)


def test_missing_ops_folder_is_a_clear_error(tmp_path):
    with pytest.raises(EvolError, match="does not exist"):
        load_operations(tmp_path / "nope")


# --- ids, resume, summary ------------------------------------------------------------------


def test_rerun_makes_no_llm_call_and_writes_nothing_twice(tmp_path):
    first = ScriptedLLM()
    run(tmp_path, first, seeds=("A.", "B."))
    again = ScriptedLLM()
    rd = run(tmp_path, again, seeds=("A.", "B."))
    assert again.calls == []
    ids = [r["id"] for r in rd.kept()]
    assert len(ids) == len(set(ids)) == 6


def test_unfinished_chain_replays_its_finished_calls_from_cache(tmp_path):
    # First run: the chain is lost after its calls finished (no record written, as after
    # a kill); the rerun gets every call from the cache.
    first = ScriptedLLM()
    run(tmp_path, first, seeds=("A.",))
    rd = RunDir(tmp_path / "run")
    rd.records.write_text("")
    rd.done.write_text("")
    again = ScriptedLLM()
    run(tmp_path, again, seeds=("A.",))
    assert again.calls == []
    assert len(list(rd.kept())) == 3


def test_summary_counts_per_round_and_operation(tmp_path):
    llm = ScriptedLLM(
        evolve_reply={"B.": "#Rewritten Prompt#", "C.": "#Rewritten Prompt#: C, harder."},
        answer_reply={"A. +1": "Sorry, no."},
    )
    rd = run(tmp_path, llm, seeds=("A.", "B.", "C."), rounds=1,
             elimination=EliminationConfig.preset("paper"))
    s = summarise(rd.root)
    assert s["total"]["attempted"] == 3
    assert s["total"]["kept"] == 1
    assert s["total"]["eliminated"] == {"copies_evolving_prompt": 1, "hard_to_respond": 1}
    assert s["total"]["normalised"] == 1
    assert s["per_round"][0]["round"] == 1
    assert sum(r["attempted"] for r in s["rows"]) == 3
    # evolve 3 + judge 2 + respond 2 calls at 10 prompt tokens each
    assert s["total"]["prompt_tokens"] == 70
    saved = json.loads((rd.root / "summary.json").read_text())
    assert saved == json.loads(json.dumps(s))


def test_chain_records_lists_a_seeds_attempts_in_round_order(tmp_path):
    llm = ScriptedLLM(evolve_reply={"A. +1": lambda n: "#Rewritten Prompt#" if n == 1 else None})
    rd = run(tmp_path, llm, seeds=("A.", "B."))
    chain = chain_records(rd.root, "s1-r3")
    assert [(r["id"], r["status"]) for r in chain] == [
        ("s1-r1", "kept"), ("s1-r2", "rejected"), ("s1-r3", "kept")
    ]
    assert [r["id"] for r in chain_records(rd.root, "s2")] == ["s2-r1", "s2-r2", "s2-r3"]
    with pytest.raises(EvolError, match="no Evol-Instruct record"):
        chain_records(rd.root, "s9")


def test_lineage_command_prints_the_chain_with_verdicts(tmp_path):
    from typer.testing import CliRunner

    from instructforge.cli import app

    llm = ScriptedLLM(evolve_reply={"A. +1": lambda n: "#Rewritten Prompt#" if n == 1 else None})
    rd = run(tmp_path, llm, seeds=("A.",))
    result = CliRunner().invoke(app, ["lineage", str(rd.root), "s1-r3"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "s1 (seed): A."
    assert "s1-r2 <- s1-r1: eliminated copies_evolving_prompt" in result.output
    assert "s1-r3 <- s1-r1: kept" in result.output


def test_more_rounds_in_a_new_run_replay_the_old_rounds_from_a_shared_cache(tmp_path):
    run(tmp_path, ScriptedLLM(), seeds=("A.",), rounds=2)
    more = ScriptedLLM()
    rd = run(tmp_path, more, seeds=("A.",), rounds=3, run_name="more",
             shared_cache=str(tmp_path / "run" / "cache.sqlite"))
    # Round 3 only: evolve, the three judges (the task judge unless in-breadth), respond.
    roles = [role for role, _ in more.calls]
    assert roles[:3] == ["evolve", "judge", "instruction_judge"]
    assert roles[3:] in (["task_judge", "respond"], ["respond"])
    assert sorted(by_id(rd.kept())) == ["s1-r1", "s1-r2", "s1-r3"]


# --- speculative answers (local servers only) -----------------------------------------------


class LocalScripted(ScriptedLLM):
    """A scripted server on this machine: the judge takes a few loop turns to answer, and an
    answer to a child in ``hang`` never comes (it can only end by being cancelled)."""

    def __init__(self, *a, hang: tuple[str, ...] = (), **kw) -> None:
        super().__init__(*a, **kw)
        self.hang = hang
        self.cancelled: list[str] = []

    def is_local(self) -> bool:
        return True

    async def chat(self, messages, params: SamplingParams) -> Completion:
        prompt = messages[-1]["content"]
        if self.role(prompt) == "judge":
            for _ in range(5):
                await asyncio.sleep(0)
        elif self.role(prompt) == "respond" and prompt in self.hang:
            self.calls.append(("respond", prompt))
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(prompt)
                raise
        return await super().chat(messages, params)


def test_a_local_answer_starts_with_the_judge_and_is_dropped_when_the_child_fails(tmp_path):
    llm = LocalScripted(judge_reply={"Name a fruit. +1": "Equal"}, hang=("Name a fruit. +1",))
    rec = by_id(run(tmp_path, llm, rounds=1).dropped())["s1-r1"]
    assert llm.count("respond") == 1  # started beside the judge...
    assert llm.cancelled == ["Name a fruit. +1"]  # ...and cancelled when it said Equal
    assert rec["rejection"]["rule"] == "no_information_gain"
    assert [m["role"] for m in rec["messages"]] == ["user"]
    assert "respond" not in rec["metadata"]["usage"]


def test_speculative_answers_change_no_record(tmp_path):
    judged = {"Name a fruit. +1": "Equal"}
    remote, local = ScriptedLLM(judge_reply=judged), LocalScripted(judge_reply=judged)
    a, b = run(tmp_path, remote, run_name="remote"), run(tmp_path, local, run_name="local")
    assert list(a.kept()) == list(b.kept()) and list(a.dropped()) == list(b.dropped())
    assert local.count("respond") == remote.count("respond") + 1  # the one thrown away


@pytest.mark.parametrize("llm, option", [(ScriptedLLM(judge_reply={"Name a fruit. +1": "Equal"}),
                                          True),
                                         (LocalScripted(judge_reply={"Name a fruit. +1": "Equal"}),
                                          False)])
def test_no_answer_is_started_early_for_a_remote_server_or_when_switched_off(tmp_path, llm,
                                                                             option):
    run(tmp_path, llm, rounds=1, speculative_answer=option)
    assert llm.count("respond") == 0
