"""report.html: self-contained and offline, safe against record text, and rendered for real
in headless Chromium (charts, map, lineage browser, no console errors, a screenshot saved to
test-artifacts/report.png)."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from analysis_fixtures import make_evolve_run
from test_analysis import FakeJudge

from instructforge.analysis.analyze import AnalyzeConfig, analyze
from instructforge.records import new_record

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
]


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary, installed by scripts/install-test-deps.sh when missing (root +
    apt only); skips with the reason when it truly cannot be had."""
    path = _find_chromium()
    script = ROOT / "scripts" / "install-test-deps.sh"
    if path is None and os.geteuid() == 0 and shutil.which("apt-get") and script.exists():
        subprocess.run(["bash", str(script)], capture_output=True, timeout=900, check=False)
        path = _find_chromium()
    if path is None:
        pytest.skip("Chromium is not installed and could not be installed here (needs root and "
                    "apt-get); run scripts/install-test-deps.sh")
    return path


def open_in_chromium(binary: str, page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000",
         *extra, page.as_uri()],
        capture_output=True, text=True, timeout=180, check=False)


def page_errors(dom: str, stderr: str) -> list[str]:
    """Errors the page reported (its own collector in <html data-errors>) plus uncaught
    errors in Chromium's console log."""
    errors = []
    tag = re.search(r"<html[^>]*>", dom)  # the first one is the real element
    m = re.search(r'\bdata-errors="([^"]*)"', tag.group(0)) if tag else None
    if m:
        errors.append(html.unescape(m.group(1)))
    errors += [line for line in stderr.splitlines()
               if "CONSOLE" in line and re.search(r"Uncaught|Error", line)]
    return errors


def body_attrs(dom: str) -> dict[str, str]:
    m = re.search(r"<body([^>]*)>", dom)
    return dict(re.findall(r'(data-[\w-]+)="([^"]*)"', m.group(1))) if m else {}


@pytest.fixture(scope="module")
def evolve_report(tmp_path_factory) -> Path:
    """A full report: an evolve run with embeddings (the real offline model) and a judge."""
    run = make_evolve_run(tmp_path_factory.mktemp("report"))
    analyze(run, AnalyzeConfig(), judge_llm=FakeJudge(), progress=False)
    return run / "report.html"


def test_report_is_one_self_contained_offline_file(evolve_report):
    text = evolve_report.read_text(encoding="utf-8")
    assert "<script src" not in text and "<link" not in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert "Chart.js v4" in text  # the bundled library is inlined


def test_record_text_cannot_break_out_of_the_page(tmp_path):
    src = tmp_path / "evil.jsonl"
    evil = new_record("x", '</script><script>alert("pwned")</script> <b>bold</b>', method="input")
    src.write_text(__import__("json").dumps(evil) + "\n")
    text = analyze(src, AnalyzeConfig(embeddings=False), progress=False).report.read_text()
    assert text.count("</script>") == len(re.findall(r"<script[\s>]", text)) == 4
    assert 'alert("pwned")' not in text


def test_report_renders_in_headless_chromium(evolve_report, chromium, tmp_path):
    proc = open_in_chromium(chromium, evolve_report, tmp_path, "--dump-dom")
    dom = proc.stdout
    attrs = body_attrs(dom)
    assert attrs.get("data-ready") == "1", proc.stderr[-2000:]
    assert page_errors(dom, proc.stderr) == []
    # lengths x2, map, quality, difficulty, category, tags, per-round, elimination
    assert int(attrs["data-charts"]) == 9
    assert int(attrs["data-points"]) == 20
    # The lineage browser opens the deepest record: seed -> round 1 -> round 2 -> round 3.
    assert int(attrs["data-lineage-steps"]) >= 4
    detail = dom.split('id="lineage-detail"', 1)[1].split("</section>", 1)[0]
    assert "Path from the seed" in detail and "seed" in detail and "round 3" in detail
    assert dom.count('<li data-id="') == 20

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    proc = open_in_chromium(chromium, evolve_report, tmp_path, "--window-size=1400,5200",
                            f"--screenshot={shot}")
    assert shot.exists() and shot.stat().st_size > 50_000, proc.stderr[-2000:]


def test_a_script_error_in_the_page_would_be_caught(evolve_report, chromium, tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text(evolve_report.read_text(encoding="utf-8").replace(
        "</body>", "<script>null.boom;</script></body>"), encoding="utf-8")
    proc = open_in_chromium(chromium, broken, tmp_path, "--dump-dom")
    assert any("null" in e for e in page_errors(proc.stdout, proc.stderr))


def test_lineage_browser_takes_missing_ancestors_from_the_history(chromium, tmp_path):
    run = make_evolve_run(tmp_path)
    records = run / "data" / "records.jsonl"
    lines = [x for x in records.read_text().splitlines() if '"round": 0' not in x]
    records.write_text("\n".join(lines) + "\n")  # as `evolve --no-keep-seeds` writes it
    report = analyze(run, AnalyzeConfig(embeddings=False), progress=False).report
    proc = open_in_chromium(chromium, report, tmp_path, "--dump-dom")
    detail = proc.stdout.split('id="lineage-detail"', 1)[1].split("</section>", 1)[0]
    assert page_errors(proc.stdout, proc.stderr) == []
    assert "(from lineage.history)" in detail and "Name three fruits." in detail
    assert "Path from the seed (3 evolution steps)" in detail


def test_per_round_note_says_whether_round_0_holds_the_seeds(tmp_path):
    import json

    run = make_evolve_run(tmp_path)
    records = run / "data" / "records.jsonl"
    lines = records.read_text().splitlines()
    with_seeds = analyze(run, AnalyzeConfig(embeddings=False), progress=False).report
    assert "Round 0 holds the seeds." in with_seeds.read_text()
    # An evolve run without --keep-seeds: every record is a child (round >= 1).
    records.write_text("".join(line + "\n" for line in lines
                               if json.loads(line)["lineage"]["round"] > 0))
    text = analyze(run, AnalyzeConfig(embeddings=False), progress=False).report.read_text()
    assert "Round 0 holds the seeds" not in text
    assert "The seeds were not kept, so there is no round 0" in text
