"""HTML and JSON reports of an assessment (issue 22, part 3): the error matrix in area
proportions, the accuracies, mapped against error-adjusted area with 95 % intervals as a
table and a chart (inline SVG, no script), and the sample design used."""
from __future__ import annotations

import html
import json
from pathlib import Path

from ..atomic import write_atomic
from .assess import AssessResult
from .estimate import Z95, Estimate

HTML_SUFFIX = "_assessment.html"
JSON_SUFFIX = "_assessment.json"
HECTARE = 10_000.0  # m²


def report_paths(sample_path: Path) -> tuple[Path, Path]:
    """Default HTML and JSON report paths: beside the sample file, named after it."""
    sample_path = Path(sample_path)
    return (sample_path.with_name(sample_path.stem + HTML_SUFFIX),
            sample_path.with_name(sample_path.stem + JSON_SUFFIX))


def write_reports(result: AssessResult, html_path: Path | None = None, json_path: Path | None = None) -> tuple[Path, Path]:
    """Write both reports (each atomically) and return their paths."""
    default_html, default_json = report_paths(result.sample_path)
    html_path, json_path = Path(html_path or default_html), Path(json_path or default_json)
    write_atomic(json_path, json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    write_atomic(html_path, build_html(result))
    return html_path, json_path


def _e(value: object) -> str:
    return html.escape(str(value))


def _pm(estimate: Estimate, scale: float = 1.0, digits: int = 3) -> str:
    """``value ± 1.96 SE``, ``value [low, high]`` where the 95 % interval is not symmetric, or a dash."""
    if estimate.value is None:
        return "—"
    if estimate.interval is not None:
        low, high = estimate.interval
        return f"{estimate.value * scale:,.{digits}f} [{low * scale:,.{digits}f}, {high * scale:,.{digits}f}]"
    half = Z95 * (estimate.se or 0.0) * scale
    return f"{estimate.value * scale:,.{digits}f} ± {half:,.{digits}f}"


def _chart(result: AssessResult) -> str:
    """Horizontal bars of mapped and estimated area per class, the estimate with its 95 % interval."""
    a = result.assessment
    rows = []
    for name, mapped, area in zip(a.class_names, a.mapped_areas, a.areas):
        ci = area.ci95 or (area.value or 0.0, area.value or 0.0)
        rows.append((name, mapped / HECTARE, (area.value or 0.0) / HECTARE, max(ci[0], 0) / HECTARE, ci[1] / HECTARE))
    top = max([max(r[1], r[4]) for r in rows] + [1e-9])
    label_w, bar_w, row_h = 260, 420, 34
    height = row_h * len(rows) + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 120}" height="{height}" '
             'font-family="sans-serif" font-size="12">']
    for i, (name, mapped, est, lo, hi) in enumerate(rows):
        y = 10 + i * row_h
        scale = bar_w / top
        parts.append(f'<text x="{label_w - 6}" y="{y + 16}" text-anchor="end">{_e(name[:40])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{mapped * scale:.1f}" height="10" fill="#9e9e9e">'
                     f'<title>mapped {mapped:,.1f} ha</title></rect>')
        parts.append(f'<rect x="{label_w}" y="{y + 12}" width="{est * scale:.1f}" height="10" fill="#1f77b4">'
                     f'<title>estimated {est:,.1f} ha (95 % CI {lo:,.1f}–{hi:,.1f})</title></rect>')
        parts.append(f'<line x1="{label_w + lo * scale:.1f}" x2="{label_w + hi * scale:.1f}" y1="{y + 17}" '
                     f'y2="{y + 17}" stroke="#000" stroke-width="1.5"/>')
        for x in (lo, hi):
            parts.append(f'<line x1="{label_w + x * scale:.1f}" x2="{label_w + x * scale:.1f}" y1="{y + 13}" '
                         f'y2="{y + 21}" stroke="#000" stroke-width="1.5"/>')
    y = height - 14
    parts.append(f'<rect x="{label_w}" y="{y - 9}" width="10" height="10" fill="#9e9e9e"/>'
                 f'<text x="{label_w + 14}" y="{y}">mapped area</text>'
                 f'<rect x="{label_w + 110}" y="{y - 9}" width="10" height="10" fill="#1f77b4"/>'
                 f'<text x="{label_w + 124}" y="{y}">error-adjusted area, 95 % CI (ha)</text>')
    parts.append("</svg>")
    return "".join(parts)


def build_html(result: AssessResult) -> str:
    """The report as one self-contained HTML page."""
    a = result.assessment
    names = a.class_names
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    matrix_rows = "".join(
        f"<tr><th>{_e(names[i])}</th>" + "".join(f"<td>{a.matrix[i, j]:.4f}<br><small>{int(a.counts[i, j])}</small>"
                                                 "</td>" for j in range(len(names)))
        + f"<td>{a.matrix[i].sum():.4f}</td></tr>" for i in range(len(names)))
    matrix_rows += ("<tr><th>total</th>" + "".join(f"<td>{a.matrix[:, j].sum():.4f}</td>" for j in range(len(names)))
                    + "<td>1</td></tr>")
    class_rows = "".join(
        f"<tr><td>{_e(n)}</td><td>{_pm(u)}</td><td>{_pm(p)}</td><td>{m / HECTARE:,.1f}</td>"
        f"<td>{_pm(e, 1 / HECTARE, 1)}</td><td>{_pm(q, 1, 4)}</td></tr>"
        for n, u, p, m, e, q in zip(names, a.users, a.producers, a.mapped_areas, a.areas, a.proportions))
    strata_rows = "".join(
        f"<tr><td>{_e(s['name'])}</td><td>{s['pixels']:,}</td><td>{s['area'] / HECTARE:,.1f}</td>"
        f"<td>{s['sample']}</td></tr>" for s in result.strata)
    config = result.design.get("config", {})
    messages = "".join(f"<li>{_e(m)}</li>" for m in a.messages)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Accuracy and area: {_e(result.products.tile)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}} th{{background:#f3f3f3}}
td:first-child{{text-align:left}} small{{color:#777}}</style></head><body>
<h1>Accuracy and error-adjusted area — {_e(result.products.tile)}</h1>
<p>Stratified estimators of Olofsson et al. (2014, <i>Remote Sensing of Environment</i> 148:42–57) and
Stehman (2014, <i>Int. J. Remote Sensing</i> 35:4923–4939). 95 % intervals: user's and producer's accuracy
± 1.96 standard errors; overall accuracy and areas [low, high] by Price &amp; Bonett (2004), which stay honest
where a stratum with few points shows no unit of a rare class.
Sample: {_e(result.sample_path)}, reference field <code>{_e(result.reference_field)}</code>,
{a.n_units} labelled unit(s).</p>
{f"<h2>Notes</h2><ul>{messages}</ul>" if messages else ""}
<h2>Overall accuracy</h2><p><b>{_pm(a.overall)}</b></p>
<h2>Per class</h2>
<table><tr><th>class</th><th>user's accuracy</th><th>producer's accuracy</th><th>mapped area (ha)</th>
<th>estimated area (ha)</th><th>estimated area proportion</th></tr>{class_rows}</table>
<h2>Mapped and error-adjusted area</h2>{_chart(result)}
<h2>Error matrix (estimated area proportions; sample counts below)</h2>
<p>Rows: map class; columns: reference class.</p>
<table><tr><th></th>{head}<th>total</th></tr>{matrix_rows}</table>
<h2>Sample design</h2>
<p>Confidence split: {_e(config.get("confidence", "?"))}{"" if config.get("confidence") in (None, "none")
                                                       else f" (threshold {_e(config.get('threshold'))})"};
seed {_e(config.get("seed", "?"))}; minimum per stratum {_e(config.get("minimum", "?"))}.</p>
<table><tr><th>stratum</th><th>pixels</th><th>area (ha)</th><th>sample units</th></tr>{strata_rows}</table>
</body></html>
"""
