"""The report: one self-contained, offline HTML file (``report.html``).

The page inlines everything it needs: the metrics as JSON, a bundled copy of Chart.js
(MIT, ``data/report-chart.umd.min.js``), and its own script and style sheet.  Tables are
rendered here; charts, the 2-D map and the lineage browser are drawn by ``data/report.js``.

>>> data = build_report_data(dataset, metrics, rows, chosen_ids)  # doctest: +SKIP
>>> write_report("runs/demo/report.html", data)           # doctest: +SKIP
PosixPath('runs/demo/report.html')
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from instructforge.analysis.dataset import Dataset
from instructforge.records import instruction, response

TEXT_CHARS = 1_200  # per instruction in the lineage browser; keeps big reports small
SNIPPET_CHARS = 160
SELECTION_ROWS = 500  # best-ranked records listed in the selection table


def _asset(name: str) -> str:
    return (resources.files("instructforge") / "data" / name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    return env.from_string(_asset("report.html.jinja"))


def _num(value: Any, digits: int = 2) -> str:
    """Numbers for tables: thousands separators, at most ``digits`` decimals, '-' for None."""
    if value is None or isinstance(value, jinja2.Undefined):
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}".rstrip("0").rstrip(".") if value % 1 else f"{value:,.0f}"
    return str(value)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def build_report_data(
    ds: Dataset, metrics: dict[str, Any], rows: list[dict[str, Any]], chosen: set[str]
) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data: the metrics, the map points of the
    ``chosen`` records, and the lineage nodes of the records the browser offers."""
    points = [
        {k: r.get(k) for k in ("id", "x", "y", "round", "operation", "category", "method",
                               "quality", "difficulty")}
        | {"text": _clip(instruction(rec), SNIPPET_CHARS)}
        for r, rec in zip(rows, ds.records, strict=True)
        if r["id"] in chosen and "x" in r
    ]
    return {
        "metrics": metrics,
        "points": points,
        "lineage": lineage_nodes(ds, chosen),
        "selection": selection_rows(ds),
    }


def selection_rows(ds: Dataset, limit: int = SELECTION_ROWS) -> dict[str, Any] | None:
    """The score and rank ``select`` gave each kept record (``metadata.selection``), best
    rank first, the first ``limit`` of them; None when no record carries one.

    ``{"by": ["ifd"], "count": N, "rows": [{id, by, score, rank, given, alone, text}]}``
    """
    rows = []
    for rec in ds.records:
        sel = (rec.get("metadata") or {}).get("selection")
        if not isinstance(sel, dict) or not isinstance(sel.get("score"), int | float):
            continue
        rows.append({"id": rec["id"], "by": str(sel.get("by") or ""), "score": sel["score"],
                     "rank": sel.get("rank"), "given": sel.get("loss_given_instruction"),
                     "alone": sel.get("loss_alone"),
                     "text": _clip(instruction(rec), SNIPPET_CHARS)})
    if not rows:
        return None
    rows.sort(key=lambda r: r["rank"] if isinstance(r["rank"], int) else float("inf"))
    return {"by": sorted({r["by"] for r in rows}), "count": len(rows), "rows": rows[:limit]}


def lineage_nodes(ds: Dataset, chosen: set[str]) -> dict[str, Any]:
    """Nodes for the lineage browser: the chosen records, every record on their paths back
    to the seed, and the failed attempts of the same seeds (kept and rejected records alike).

    ``{"records": [ids offered], "nodes": {id: {p, s, r, o, st, rule, reason, text, resp}}}``
    """
    every = {r["id"]: r for r in ds.all_records}
    by_seed: dict[str, list[str]] = {}
    for rid, rec in every.items():
        seed = (rec.get("lineage") or {}).get("seed_id")
        if seed is not None:
            by_seed.setdefault(str(seed), []).append(rid)
    wanted: set[str] = set()
    for rid in chosen:
        cur: str | None = rid
        while cur is not None and cur in every and cur not in wanted:
            wanted.add(cur)
            cur = (every[cur].get("lineage") or {}).get("parent_id")
        seed = (every[rid].get("lineage") or {}).get("seed_id") if rid in every else None
        wanted.update(by_seed.get(str(seed), []))
    nodes: dict[str, Any] = {}
    for rid in wanted:
        rec = every[rid]
        lin = rec.get("lineage") or {}
        rej = rec.get("rejection") or {}
        node: dict[str, Any] = {
            "p": lin.get("parent_id"), "s": lin.get("seed_id"), "r": lin.get("round"),
            "o": lin.get("operation"), "st": rec.get("status", "kept"),
            "text": _clip(instruction(rec), TEXT_CHARS),
            "resp": _clip(response(rec), 600),
        }
        if lin.get("history"):
            node["h"] = [_clip(h, TEXT_CHARS) for h in lin["history"]]
        if rej:
            node["rule"] = rej.get("rule")
            node["reason"] = _clip(str(rej.get("reason") or ""), 300)
        nodes[rid] = node
    offered = [r["id"] for r in ds.records if r["id"] in chosen]
    # Deepest records first: their paths are the interesting ones.
    offered.sort(key=lambda i: -(nodes[i]["r"] or 0))
    return {"records": offered, "nodes": nodes}


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element (no '</script>' or '<!--' can close it early)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_report(data: dict[str, Any]) -> str:
    """The report's HTML text for ``data`` from :func:`build_report_data`."""
    return _template().render(
        m=data["metrics"],
        selection=data.get("selection"),
        # The selection table is rendered here; the page's script does not need it.
        data_json=Markup(_script_json({k: v for k, v in data.items() if k != "selection"})),
        chart_js=Markup(_asset("report-chart.umd.min.js")),
        report_js=Markup(_asset("report.js")),
        report_css=Markup(_asset("report.css")),
    )


def write_report(path: str | Path, data: dict[str, Any]) -> Path:
    """Render and write the report; returns its path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".html.tmp")
    tmp.write_text(render_report(data), encoding="utf-8")
    tmp.replace(p)
    return p
