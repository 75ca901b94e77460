"""``select``: IFD / IC-IFD with the real 135M student (slow), and the ranking, cut, rejected
rows and rating/reward scores with a fake scorer (fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from instructforge.analysis.select import SelectConfig, SelectError, select_dataset
from instructforge.cli import app
from instructforge.records import new_record

# Matched pairs, and one whose response answers a different instruction.
MATCHED = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Translate 'good morning' into Spanish.", "'Good morning' in Spanish is 'Buenos días'."),
    ("List the first three prime numbers.", "The first three prime numbers are 2, 3 and 5."),
]
MISMATCHED = ("Write a haiku about autumn leaves.",
              "def add(a, b):\n    return a + b\n\nprint(add(2, 3))")


def make_run(root: Path, pairs: list[tuple[str, str]], metadata: list[dict] | None = None) -> Path:
    run = root / "src-run"
    (run / "data").mkdir(parents=True)
    with (run / "data" / "records.jsonl").open("w", encoding="utf-8") as fh:
        for k, (ins, res) in enumerate(pairs):
            rec = new_record(f"r{k}", method="respond", messages=[
                {"role": "user", "content": ins}, {"role": "assistant", "content": res}],
                metadata=(metadata or [{}] * len(pairs))[k])
            fh.write(json.dumps(rec) + "\n")
    (run / "rejected.jsonl").write_text("")
    return run


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fake_losses(table: dict[str, tuple[float, float]]):
    def fn(pairs):
        return [table[ins] for ins, _ in pairs]
    return fn


# ---------------------------------------------------------------------------- pure logic


def test_misaligned_records_are_dropped_and_the_rest_ranked_by_ifd(tmp_path):
    pairs = [("a", "x"), ("b", "x"), ("c", "x"), ("d", "x")]
    losses = {"a": (0.5, 1.0), "b": (0.9, 1.0), "c": (1.5, 1.0), "d": (0.2, 1.0)}
    run = make_run(tmp_path, pairs)
    res = select_dataset(run, tmp_path / "out", SelectConfig(top="2"), loss_fn=fake_losses(losses))
    kept = read(tmp_path / "out" / "data" / "records.jsonl")
    assert [r["id"] for r in kept] == ["r1", "r0"]  # 0.9 then 0.5; 1.5 is misaligned
    sel = kept[0]["metadata"]["selection"]
    assert sel == {"by": "ifd", "score": 0.9, "rank": 1, "loss_given_instruction": 0.9,
                   "loss_alone": 1.0}
    rej = {r["id"]: r["rejection"] for r in read(tmp_path / "out" / "rejected.jsonl")}
    assert rej["r2"]["rule"] == "ifd_misaligned" and rej["r2"]["evidence"]["rank"] is None
    assert rej["r3"]["rule"] == "ifd_below_top" and rej["r3"]["evidence"]["rank"] == 3
    assert (res.kept, res.below_cut, res.misaligned) == (2, 1, 1)
    assert "1 misaligned (IFD >= 1)" in res.summary()
    assert (tmp_path / "out" / "data" / "records.parquet").exists()
    assert not (tmp_path / "out.partial").exists()


def test_ic_ifd_is_named_as_such_in_scores_rules_and_summary(tmp_path):
    run = make_run(tmp_path, [("a", "x"), ("b", "x")])
    res = select_dataset(run, tmp_path / "out", SelectConfig(top="1", ic_ifd=True),
                         loss_fn=fake_losses({"a": (0.5, 1.0), "b": (2.0, 1.0)}))
    kept = read(tmp_path / "out" / "data" / "records.jsonl")
    assert kept[0]["metadata"]["selection"]["by"] == "ic_ifd"
    assert read(tmp_path / "out" / "rejected.jsonl")[0]["rejection"]["rule"] == "ic_ifd_misaligned"
    assert "1 misaligned (IC_IFD >= 1)" in res.summary()


def test_a_share_keeps_that_part_of_all_records_rounded_up(tmp_path):
    pairs = [(str(k), "x") for k in range(8)]
    run = make_run(tmp_path, pairs)
    losses = {str(k): (0.1 * (k + 1), 1.0) for k in range(8)}
    select_dataset(run, tmp_path / "out", SelectConfig(top="25%"), loss_fn=fake_losses(losses))
    assert [r["id"] for r in read(tmp_path / "out" / "data" / "records.jsonl")] == ["r7", "r6"]


def test_quality_ranks_by_the_judges_score_in_metadata(tmp_path):
    def rated(score):
        return {"analysis": {"ratings": {"quality": {"label": "x", "score": score, "status": "ok"}}}}

    run = make_run(tmp_path, [("a", "x"), ("b", "y"), ("c", "z")], [rated(2), rated(5), rated(4)])
    select_dataset(run, tmp_path / "out", SelectConfig(by="quality", top="2"))
    kept = read(tmp_path / "out" / "data" / "records.jsonl")
    assert [r["id"] for r in kept] == ["r1", "r2"]
    assert kept[0]["metadata"]["selection"] == {"by": "quality", "score": 5.0, "rank": 1}
    assert "analysis" in kept[0]["metadata"]  # the ratings stay


def test_unrated_records_are_a_clear_error(tmp_path):
    run = make_run(tmp_path, [("a", "x")])
    with pytest.raises(SelectError, match=r"record 'r0' has no readable difficulty rating"):
        select_dataset(run, tmp_path / "out", SelectConfig(by="difficulty"))
    assert not (tmp_path / "out").exists()


def test_reward_needs_a_reward_score_on_every_record(tmp_path):
    run = make_run(tmp_path, [("a", "x"), ("b", "y")], [{"reward": 0.3}, {}])
    with pytest.raises(SelectError, match=r"record 'r1' has no reward score"):
        select_dataset(run, tmp_path / "out", SelectConfig(by="reward"))
    run2 = make_run(tmp_path / "two", [("a", "x"), ("b", "y")],
                    [{"reward": 0.3}, {"reward": {"score": 0.7}}])
    select_dataset(run2, tmp_path / "out2", SelectConfig(by="reward", top="1"))
    assert [r["id"] for r in read(tmp_path / "out2" / "data" / "records.jsonl")] == ["r1"]


@pytest.mark.parametrize("top", ["0", "0%", "120%", "a quarter", "-3"])
def test_a_bad_top_is_a_clear_error(top):
    with pytest.raises(SelectError, match="--top"):
        SelectConfig(top=top)


def test_the_command_refuses_an_existing_output_and_bad_options(tmp_path):
    run = make_run(tmp_path, [("a", "x")])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    r = CliRunner().invoke(app, ["select", str(run), "--by", "quality", "-o",
                                 str(tmp_path / "out")])
    assert r.exit_code == 2 and "already exists" in r.output
    r = CliRunner().invoke(app, ["select", str(run), "--by", "votes", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--by must be one of" in r.output


# ---------------------------------------------------------------------------- real student


@pytest.fixture(scope="module")
def scorer():
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from instructforge.tuning.ifd import IFDScorer

    return IFDScorer("embedded", batch_size=2)


@pytest.mark.slow
@pytest.mark.llm
def test_the_135m_student_finds_the_matched_pairs_aligned_and_the_mismatched_one_not(scorer):
    losses = scorer([*MATCHED, MISMATCHED])
    ifd = [given / alone for given, alone in losses]
    assert all(x < 1 for x in ifd[:3]), ifd
    assert ifd[3] >= 1, ifd
    # Batching does not change a score (padding is masked).
    alone = scorer([MATCHED[1]])[0]
    assert alone == pytest.approx(losses[1], rel=1e-4)


@pytest.mark.slow
@pytest.mark.llm
def test_select_keeps_a_matched_pair_and_rejects_the_mismatched_one(tmp_path, scorer):
    run = make_run(tmp_path, [MISMATCHED, *MATCHED])
    res = select_dataset(run, tmp_path / "out", SelectConfig(top="100%"), loss_fn=scorer)
    kept = [r["id"] for r in read(tmp_path / "out" / "data" / "records.jsonl")]
    rej = {r["id"]: r["rejection"]["rule"] for r in read(tmp_path / "out" / "rejected.jsonl")}
    assert kept and "r0" not in kept and rej["r0"] == "ifd_misaligned"
    assert res.misaligned >= 1


@pytest.mark.slow
@pytest.mark.llm
def test_ic_ifd_takes_the_alone_loss_after_the_in_context_prefix(scorer):
    from instructforge.tuning.ifd import IFDScorer

    ic = IFDScorer("embedded", batch_size=2, in_context=True)
    plain, inctx = scorer([MATCHED[0]])[0], ic([MATCHED[0]])[0]
    assert inctx[0] == pytest.approx(plain[0], rel=1e-4)  # the same instruction-given loss
    assert inctx[1] != pytest.approx(plain[1], rel=1e-3)  # a different response-alone loss
    assert inctx[0] / inctx[1] < 1


# ---------------------------------------------------------------------------- the recipe


def test_the_ifd_recipe_trains_on_the_selected_subset_and_every_step_parses():
    import typer as _typer

    from instructforge.tuning.experiment import load_recipe

    recipe = Path(__file__).parent.parent / "examples" / "all-vs-ifd-selected.yaml"
    steps = load_recipe(recipe, {"workdir": "w"})
    assert [s.command for s in steps] == ["evolve", "select", "train", "train", "eval", "eval"]
    select = next(s for s in steps if s.command == "select")
    train = next(s for s in steps if s.name == "train-selected")
    assert train.args[0] == select.args[select.args.index("-o") + 1] == "w/selected"
    group = _typer.main.get_command(app)
    for step in steps:
        assert group.commands[step.command].make_context(step.command, list(step.args)).params
