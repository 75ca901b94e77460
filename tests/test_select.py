"""``select``: IFD / IC-IFD with the real 135M student (slow), locally and through a server's
prompt log-probabilities over real HTTP (a vLLM-format stand-in computing real logprobs with
the same student; the real llama.cpp server, which ignores echo, is refused); the ranking,
cut, rejected rows, rating/reward scores, --dry-run and the report with a fake scorer
(fast)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from instructforge.analysis.select import SelectConfig, SelectError, plan_select, select_dataset
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
                                 str(tmp_path / "out")], terminal_width=300)
    assert r.exit_code == 2 and "already exists" in " ".join(r.output.split())
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


# ---------------------------------------------------------------------------- server path


def chat_template_file(tmp_path: Path, tok) -> Path:
    """A --prompt-template that renders exactly the local student's prompts: its chat
    template around the instruction, and its start token before the response alone."""
    given = tok.apply_chat_template([{"role": "user", "content": "@@INS@@"}], tokenize=False,
                                    add_generation_prompt=True)
    path = tmp_path / "student.jinja"
    path.write_text("{% if instruction is none %}" + tok.bos_token + "{% else %}"
                    + given.replace("@@INS@@", "{{ instruction }}") + "{% endif %}")
    return path


@pytest.fixture(scope="module")
def echo_server(scorer):
    from ifd_echo_server import EchoServer

    with EchoServer(scorer.model, scorer.tok) as server:
        yield server


@pytest.mark.slow
@pytest.mark.llm
def test_the_server_path_gives_the_local_students_ifd(tmp_path, scorer, echo_server):
    from instructforge.llm import make_llm
    from instructforge.tuning.ifd import ServerIFDScorer

    pairs = [*MATCHED, MISMATCHED]
    local = scorer(pairs)
    remote = ServerIFDScorer(make_llm("embedded", base_url=echo_server.url),
                             template=chat_template_file(tmp_path, scorer.tok))(pairs)
    for (lg, la), (rg, ra) in zip(local, remote, strict=True):
        assert rg == pytest.approx(lg, rel=1e-3) and ra == pytest.approx(la, rel=1e-3)
        assert rg / ra == pytest.approx(lg / la, rel=2e-3)
    body = echo_server.requests[-1]
    assert (body["echo"], body["logprobs"], body["max_tokens"]) == (True, 1, 1)


@pytest.mark.slow
@pytest.mark.llm
def test_select_through_the_server_ranks_a_matched_pair_above_the_mismatched_one(
        tmp_path, scorer, echo_server):
    run = make_run(tmp_path, [MISMATCHED, *MATCHED])
    cli = CliRunner().invoke(app, ["select", str(run), "--by", "ifd", "--top", "100%",
                                   "--base-url", echo_server.url, "--api-key", "sk-secret",
                                   "-o", str(tmp_path / "out")], terminal_width=200)
    assert cli.exit_code == 0, cli.output
    kept = read(tmp_path / "out" / "data" / "records.jsonl")
    scores = {r["id"]: r["metadata"]["selection"]["score"] for r in kept}
    rej = {r["id"]: r["rejection"] for r in read(tmp_path / "out" / "rejected.jsonl")}
    assert rej["r0"]["rule"] == "ifd_misaligned" and rej["r0"]["evidence"]["score"] >= 1
    assert scores and max(scores.values()) < 1 <= rej["r0"]["evidence"]["score"]
    # The built-in template: the Alpaca layout, and the response alone after its header.
    prompts = [b["prompt"] for b in echo_server.requests[-8:]]
    given = [p for p in prompts if p.startswith("### Instruction:\n")]
    assert len(given) == 4 and all("\n\n### Response:\n" in p for p in given)
    assert sorted(p for p in prompts if p not in given) == sorted(
        f"### Response:\n{res}" for _, res in [MISMATCHED, *MATCHED])
    config = (tmp_path / "out" / "config.yaml").read_text()
    assert echo_server.url in config and "sk-secret" not in config


@pytest.mark.slow
@pytest.mark.llm
def test_a_server_without_prompt_logprobs_is_refused_clearly(tmp_path, embedded_llm):
    # llama.cpp's server (the embedded model) ignores echo: its logprobs cover the generated
    # token only.
    run = make_run(tmp_path, MATCHED[:1])
    r = CliRunner().invoke(app, ["select", str(run), "--by", "ifd", "--base-url",
                                 embedded_llm.base_url, "-o", str(tmp_path / "out")],
                           terminal_width=300)
    assert r.exit_code == 1, r.output
    assert f"{embedded_llm.base_url} does not return prompt log-probabilities (echo); use " \
           "a vLLM server or the local student" in " ".join(r.output.split())
    assert not (tmp_path / "out").exists()


def test_an_unreachable_server_is_a_clear_error_and_writes_nothing(tmp_path):
    run = make_run(tmp_path, MATCHED[:1])
    r = CliRunner().invoke(app, ["select", str(run), "--base-url", "http://127.0.0.1:9/v1",
                                 "--max-retries", "0", "-o", str(tmp_path / "out")])
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "cannot connect to http://127.0.0.1:9/v1" in text, r.output
    assert "Traceback" not in r.output and not (tmp_path / "out").exists()


def test_span_loss_reads_the_response_tokens_only_and_refuses_missing_logprobs():
    from instructforge.llm.base import LLMError
    from instructforge.tuning.ifd import span_loss

    lp = {"tokens": ["Q", ":", " a", " b", "!"], "token_logprobs": [None, -9.0, -1.0, -3.0, -7.0],
          "text_offset": [0, 1, 2, 4, 6]}
    assert span_loss(lp, 2, 6, 1024, "u") == 2.0  # " a", " b"; the generated "!" is not
    assert span_loss(lp, 2, 6, 1, "u") == 1.0  # the first --max-tokens response tokens
    for bad in (None, {"content": [{"token": "!", "logprob": -1.0}]},
                {"tokens": ["!"], "token_logprobs": [-7.0], "text_offset": [6]}):
        with pytest.raises(LLMError, match=r"u does not return prompt log-probabilities"):
            span_loss(bad, 2, 6, 1024, "u")


def test_the_server_template_renders_ic_ifd_examples_and_a_broken_one_is_named(tmp_path):
    from instructforge.tuning.ifd import ic_prefix_messages, render_prefix, server_template
    from instructforge.tuning.train import TrainError

    text = render_prefix(server_template(), None, ic_prefix_messages())
    assert text.startswith("### Instruction:\nGive one word") and text.endswith(
        "12 times 3 is 36.\n\n### Response:\n")
    (tmp_path / "bad.jinja").write_text("line one\n{% if instruction %}")
    with pytest.raises(TrainError, match=r"bad.jinja: line 2"):
        server_template(tmp_path / "bad.jinja")


# ---------------------------------------------------------------------------- dry run, report


def test_dry_run_says_what_would_be_done_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one table row a line
    run = make_run(tmp_path, [("a", "x"), ("b", "y"), ("c", "z")])
    r = CliRunner().invoke(app, ["select", str(run), "--by", "ifd", "--top", "50%", "--base-url",
                                 "http://user:pw@127.0.0.1:9/v1", "--model", "m", "--dry-run",
                                 "-o", str(tmp_path / "out")], terminal_width=300)
    assert r.exit_code == 0, r.output
    text = " ".join(re.sub(r"[│┃┌┐└┘─┬┴├┤┼]", " ", r.output).split())
    assert "nothing was called" in text and "records 3" in text
    assert "at most 2 (--top 50%)" in text and "of m at http://127.0.0.1:9/v1" in text
    assert "pw" not in text and not (tmp_path / "out").exists()
    plan = plan_select(run, tmp_path / "out", SelectConfig(ic_ifd=True))
    assert plan["by"] == "ic_ifd" and "local student embedded" in plan["scorer"]
    with pytest.raises(SelectError, match=r"record 'r0' has no readable quality rating"):
        plan_select(run, tmp_path / "out", SelectConfig(by="quality"))
    with pytest.raises(SelectError, match="--base-url applies to --by ifd only"):
        SelectConfig(by="quality", base_url="http://127.0.0.1:9/v1")


def test_the_report_shows_each_selected_records_score_and_rank_escaped(tmp_path):
    from instructforge.analysis.analyze import AnalyzeConfig, analyze

    pairs = [("<script>alert(1)</script> list primes", "2, 3, 5."), ("b", "x"), ("c", "y")]
    run = make_run(tmp_path, pairs)
    select_dataset(run, tmp_path / "out", SelectConfig(top="2"),
                   loss_fn=fake_losses({pairs[0][0]: (0.25, 1.0), "b": (0.5, 1.0),
                                        "c": (0.1, 1.0)}))
    res = analyze(tmp_path / "out", AnalyzeConfig(embeddings=False))
    page = res.report.read_text(encoding="utf-8")
    section = page[page.index('<section id="selection">'):]
    section = section[:section.index("</section>")]
    rows = re.findall(r"<tr><td>(\d+)</td><td>([\d.]+)</td>.*?<code>(\w+)</code></td><td>(.*?)</td>",
                      section)
    assert [(rank, score, rid) for rank, score, rid, _ in rows] == [
        ("1", "0.5", "r1"), ("2", "0.25", "r0")]
    assert "&lt;script&gt;alert(1)&lt;/script&gt; list primes" in rows[1][3]
    assert "<script>alert" not in page
    assert "ifd" in section and 'href="#selection"' in page


def test_the_report_has_no_selection_section_for_an_unselected_run(tmp_path):
    from instructforge.analysis.analyze import AnalyzeConfig, analyze

    run = make_run(tmp_path, [("a", "x"), ("b", "y")])
    page = analyze(run, AnalyzeConfig(embeddings=False)).report.read_text(encoding="utf-8")
    assert '<section id="selection">' not in page and 'href="#selection"' not in page


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
