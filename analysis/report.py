"""One self-contained ``report.html``: summary tables and every figure embedded as a data URI.

The page has no external reference (styles inline, PNGs as base64), so it opens offline and
can be mailed or logged as a single file.
"""

from __future__ import annotations

import base64
import html
import os

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .energy import LEVELS, tolerances

SECTIONS = (("phase", "Phase of the extra feature"), ("energy", "Energy levels"), ("geometry", "Geometry"),
            ("pictures", "WᵀW, feature directions and neurons"), ("timeline", "Timelines"))

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1em}
td,th{border:1px solid #ddd;padding:.2em .5em;text-align:right}th{background:#f3f3f3}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}.warn{color:#a33}.num{font-size:1.3em;font-weight:600}
code{background:#f5f5f5;padding:0 .2em}
"""


def _table(frame: pd.DataFrame, max_rows: int = 40) -> str:
    more = len(frame) - max_rows
    text = frame.head(max_rows).to_html(index=False, border=0, na_rep="—", float_format=lambda v: f"{v:.4g}")
    return text + (f"<p>… {more} more rows in the Parquet table.</p>" if more > 0 else "")


def _img(path: str, alt: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _section_tables(section: str, run, summary: dict) -> str:
    esc = html.escape
    if section == "phase":
        cells = run.cells
        parts = [f"<p>The extra feature (the last) in {len(cells)} cells, aggregated over seeds by "
                 f"<code>{esc(run.cfg.phase.aggregate)}</code>.</p>"]
        score, count = summary["phase_agreement"], summary["phase_agreement_cells"]
        if score is not None:
            parts.append(f'<p>Agreement with the analytic phases, cells more than '
                         f'{run.cfg.phase.boundary_margin:g} decades from a boundary: '
                         f'<span class="num">{score:.1%}</span> of {count} cells.</p>')
            has = cells[cells["analytic_label"].notna()]
            cross = pd.crosstab(has["label"], has["analytic_label"]).reset_index()
            cross.columns = ["empirical \\ analytic", *cross.columns[1:]]
            parts.append(_table(cross))
        else:
            parts.append("<p>No cell has an analytic phase (theory covers relu_out with n=2, m=1 "
                         "and n=3, m=2, equal main importances and one density).</p>")
        counts = cells["label"].value_counts().rename_axis("label").reset_index(name="cells")
        parts.append(_table(counts))
        return "".join(parts)
    if section == "energy" and run.energy is not None:
        e = run.energy
        keys = [*run.energy_facets, "data.density"]
        wide = e.pivot_table(index=keys, columns="level", values="fraction", fill_value=0.0, sort=False)
        order = [c for c in ("1", "3/4", "2/3", "1/2", "2/5", "3/8", "0", "other") if c in wide.columns]
        wide = wide[order]
        wide.columns.name = None
        tol = tolerances(run.cfg.level_tol, run.cfg.level_gap_fraction)
        bands = ", ".join(f"{lv.text} ± {t:.3g}" for lv, t in zip(LEVELS[:-1], tol[:-1]))
        parts = [f"<p>Fraction of features whose D_i sits at each energy level ({esc(bands)}; 0: not "
                 "learned), per density (all seeds).</p>", _table(wide.reset_index())]
        if run.energy_chance is not None:
            e = summary.get("energy_levels")
            if e:
                parts.append(f'<p>Over the sweep, <span class="num">{e["on_level"]:.1%}</span> of '
                             f'{e["learned_features"]} learned features sit on a level; random W with '
                             f'the same m and number of learned features puts {e["chance"]:.1%} there '
                             f'(excess {e["excess"]:+.1%}).</p>')
            parts.append("<p>Per density: learned features on a nonzero level against chance.</p>"
                         + _table(run.energy_chance))
        return "".join(parts)
    if section == "geometry":
        best = run.cells[[*run.swept, "geometry"]].copy()
        return ("<p>Tegum factors of the best seed of each cell (all points in "
                "<code>geometry.parquet</code>).</p>" + _table(best))
    if section == "pictures" and run.neurons is not None:
        n = run.neurons
        keys = [k for k in run.swept if k in n]
        agg = n.groupby(keys)[["monosemantic", "polysemantic", "dead"]].mean().reset_index() if keys else \
            n[["monosemantic", "polysemantic", "dead"]].mean().to_frame().T
        return "<p>Neurons per model (mean over seeds).</p>" + _table(agg)
    if section == "timeline":
        ev = run.events
        if ev.num_rows == 0:
            return "<p>No events detected.</p>"
        kinds = (ev.group_by("kind").aggregate([("point_id", "count"), ("matched", "sum")])
                 .to_pandas().rename(columns={"point_id_count": "events", "matched_sum": "matched"})
                 .sort_values("kind")[["kind", "events", "matched"]])
        drops = kinds[kinds["kind"] == "drop"]
        n_points = len(pc.unique(ev.column("point_id")))
        lone = summary["unmatched_drops"]
        line = (f"<p>{int(drops['events'].sum())} loss drops in {n_points} points; "
                f"{int(drops['matched'].sum())} change the geometry (a level jump or geometry event "
                f"meets them, or a settled feature's D_i moves by ≥ {run.cfg.timeline.min_jump:g}); "
                f"without such a change: {lone['without_geometry_change']}"
                + (f" (e.g. {esc(', '.join(lone['examples'][:8]))}: point@step)" if lone["examples"] else "")
                + ".</p>" if len(drops) else "<p>No loss drops detected.</p>")
        shown = ev.filter(pc.is_in(ev.column("point_id"), pa.array(run.timeline_ids, pa.string()))).to_pandas()
        shown = shown[shown["kind"] != "plateau"]
        return line + _table(kinds) + "<p>Events of the points drawn below:</p>" + _table(shown, 60)
    return ""


def write(path: str, run, summary: dict, figures: list) -> None:
    """Write the report for an analysis ``run`` (see analysis.analyze) to ``path``."""
    esc = html.escape
    out_dir = os.path.dirname(path)
    counts = ", ".join(f"{v} {k}" for k, v in summary["points"].items())
    body = [f"<h1>Sweep <code>{esc(summary['sweep'])}</code></h1>",
            f"<p>Store <code>{esc(str(summary['store']))}</code>: {esc(counts)}; "
            f"{summary['analysed_points']} points analysed in {summary['cells']} cells. Swept: "
            f"{esc(', '.join(summary['swept']) or 'nothing')}.</p>"]
    for w in summary["warnings"]:
        body.append(f'<p class="warn">{esc(w)}</p>')
    for key, title in SECTIONS:
        figs = [f for f in figures if f.section == key]
        tables = _section_tables(key, run, summary)
        if not figs and not tables:
            continue
        body.append(f"<h2>{esc(title)}</h2>{tables}")
        for f in figs:
            png = next(n for n in f.files if n.endswith(".png"))
            body.append(f"<figure>{_img(os.path.join(out_dir, png), f.title)}<figcaption>"
                        f"{esc(f.title)} — {esc(', '.join(f.files))}</figcaption></figure>")
    body.append("<h2>Files</h2><ul>" + "".join(f"<li><code>{esc(n)}</code></li>" for n in summary["files"])
                + "</ul>")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
            f"{esc(summary['sweep'])} — analysis</title><style>{STYLE}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
