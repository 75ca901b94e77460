"""One definition of a duplicate for Magpie's live filter, ``analyze`` and ``filter``."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from instructforge.analysis.analyze import AnalyzeConfig
from instructforge.analysis.filter import DatasetFilterConfig
from instructforge.cli import app
from instructforge.dedup import (
    NEAR_DUP_THRESHOLD,
    NearDedup,
    exact_duplicates,
    minhash_duplicates,
)
from instructforge.methods.filters import FilterConfig as MagpieFilterConfig
from instructforge.methods.filters import TextFilters

TRIP = ("I'm planning a trip to Japan next spring and I want to see the cherry blossoms. "
        "Can you suggest an itinerary for two weeks?")
TRIP_REWORDED = TRIP.replace("Can you", "Could you")
TRIP_OTHER = "What documents do I need to rent a car in Japan as a tourist?"


def test_exact_duplicates_ignore_punctuation_as_magpie_does():
    texts = ["What is a black hole?", "what is a BLACK hole"]
    f = TextFilters(MagpieFilterConfig(languages=None))
    f.remember(texts[0], "magpie-0")
    assert f.check_duplicate(texts[1]).rule == "exact_duplicate"
    assert exact_duplicates(texts) == {1: (0, 1.0)}


def test_the_batch_and_the_live_near_duplicate_checks_agree():
    live = NearDedup()
    live.add(TRIP, "0")
    batch = minhash_duplicates([TRIP, TRIP_REWORDED, TRIP_OTHER])
    assert live.check(TRIP_REWORDED) is not None and live.check(TRIP_OTHER) is None
    assert list(batch) == [1] and batch[1][0] == 0


def test_every_command_has_the_same_default_near_duplicate_threshold():
    assert (MagpieFilterConfig().near_dup_threshold == AnalyzeConfig().near_dup_threshold
            == DatasetFilterConfig().near_dup_threshold == NEAR_DUP_THRESHOLD)


def test_analyze_and_filter_name_the_embedding_threshold_alike():
    for command in ("analyze", "filter"):
        res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert "--embedding-threshold" in res.output and "--near-dup-threshold" in res.output
        assert "--duplicate-threshold" not in res.output
        assert "--minhash-threshold" not in res.output


def test_the_old_option_names_still_work_with_a_warning(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "instruction": t}) + "\n"
                           for i, t in enumerate([TRIP, TRIP_REWORDED, TRIP_OTHER])))
    res = CliRunner().invoke(app, ["filter", str(src), "-o", str(tmp_path / "out"),
                                   "--dedup", "minhash", "--minhash-threshold", "0.99",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "--minhash-threshold is deprecated" in res.output
    assert "3 kept" in res.output  # 0.99 is stricter than the light rewording


def test_a_threshold_of_one_keeps_all_but_identical_texts():
    assert minhash_duplicates([TRIP, TRIP_REWORDED, TRIP], threshold=1.0) == {2: (0, 1.0)}
