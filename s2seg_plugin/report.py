"""The HTML run summary that Processing's Results Viewer opens (``REPORT`` output).

Built only from the engine's ``SegmentResult``: per class its area, share of
the valid area, mean max-probability and share of pixels near a decision
boundary (gap < 0.1), then device, model, timings and the preview image
(embedded). The file sits next to the products and links them relatively, so
the output folder can be moved or shared as a whole.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any, Iterable

from qgis.PyQt.QtCore import QCoreApplication

from ..core.nomenclature import format_share
from ..core.uncertainty import LOW_GAP  # the threshold behind ClassStat.low_gap_share

#: Largest preview embedded into the HTML (bigger ones are linked).
MAX_EMBEDDED_BYTES = 4 * 2**20

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 70em; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { padding: .25em .7em; border-bottom: 1px solid #ddd; text-align: right; vertical-align: middle; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
.swatch { display: inline-block; width: 1.1em; height: 1.1em; border: 1px solid #555; vertical-align: middle; }
.bar { display: inline-block; height: .7em; background: #4a7fb0; vertical-align: middle; margin-right: .4em; }
.warn { color: #b03a2e; font-weight: bold; }
tfoot td { font-weight: bold; border-top: 2px solid #999; }
.note { color: #555; font-size: .9em; }
img.preview { max-width: 100%; border: 1px solid #ccc; }
"""


def tr(text: str) -> str:
    return QCoreApplication.translate("s2seg report", text)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _rel(path: Path, start: Path) -> str:
    """Relative link (``/`` separators) so the folder stays self-contained."""
    try:
        return Path(os.path.relpath(path, start)).as_posix()
    except ValueError:  # another drive on Windows
        return Path(path).as_uri()


def _image_source(image: Path, base: Path) -> str:
    """The preview (``<tile>_preview.png``) embedded as a data URI: the report stays right even when a later
    run replaces that file, and it can be mailed on its own. Huge images are linked."""
    try:
        data = image.read_bytes()
    except OSError:
        return _rel(image, base)
    if len(data) > MAX_EMBEDDED_BYTES:
        return _rel(image, base)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _weighted(stats: Iterable[Any], attribute: str) -> float:
    stats = list(stats)
    pixels = sum(s.pixels for s in stats)
    return sum(getattr(s, attribute) * s.pixels for s in stats) / pixels if pixels else float("nan")


def build_html_report(result: Any, report_dir: Path) -> str:
    """HTML text of the run summary for ``result`` (a ``SegmentResult``), links relative to ``report_dir``."""
    present = sorted((s for s in result.class_stats if s.pixels > 0), key=lambda s: s.pixels, reverse=True)
    absent = [s for s in sorted(result.class_stats, key=lambda s: s.index) if s.pixels == 0]
    valid_km2 = result.valid_pixels * result.pixel_area_m2 / 1e6
    top_share = max((s.share for s in present), default=0.0) or 1.0

    rows = []
    for s in present:
        warn = ' class="warn"' if s.low_gap_share >= 0.5 else ""
        rows.append(
            "<tr>"
            f'<td><span class="swatch" style="background:{_e(s.colour)}"></span></td>'
            f'<td class="name">{_e(s.name)}</td>'
            f"<td>{s.area_km2:,.2f}</td>"
            f'<td><span class="bar" style="width:{6.0 * s.share / top_share:.2f}em"></span>{format_share(s.share)}</td>'
            f"<td>{s.mean_maxprob:.2f}</td>"
            f"<td{warn}>{format_share(s.low_gap_share)}</td>"
            "</tr>"
        )
    footer = (
        f'<tr><td></td><td class="name">{_e(tr("All valid pixels"))}</td><td>{valid_km2:,.2f}</td><td>100.0 %</td>'
        f"<td>{_weighted(present, 'mean_maxprob'):.2f}</td><td>{format_share(_weighted(present, 'low_gap_share'))}</td></tr>"
        if present
        else ""
    )

    timings = "".join(
        f'<tr><td class="name">{_e(step)}</td><td>{seconds:.2f} s</td></tr>' for step, seconds in result.timings.items()
    )
    base = Path(report_dir)
    products = "".join(
        f'<li><a href="{_e(_rel(Path(path), base))}">{_e(Path(path).name)}</a> ({_e(kind)})</li>'
        for kind, path in result.products.items()
    )
    run_rows = [
        (tr("Tile"), result.tile_name),
        (tr("Model"), result.model_name),
        (tr("Classes"), result.card.num_classes),
        (tr("Device"), result.device),
        (tr("Chunk size"), tr("{} px ({} chunk(s))").format(result.chunk_size, result.n_chunks)),
        (tr("Valid pixels"), f"{result.valid_pixels:,} ({valid_km2:,.2f} km²)"),
        (tr("Total time"), f"{result.seconds:.1f} s"),
    ]
    mask = getattr(result, "mask", None)
    if mask:  # the shares of the classes above are of the visible pixels only
        shown = ", ".join(f"{name} {format_share(share)}" for name, share in mask["shares"].items() if share)
        run_rows.insert(-1, (tr("Masked (cloud, shadow, snow)"),
                             tr("{} of the pixels with data, from {} ({}){}").format(
                                 format_share(mask["masked_share"]), mask["source"], shown,
                                 tr("; land cover kept under the mask") if mask["kept_under_mask"] else "")))
    run_table = "".join(f'<tr><td class="name">{_e(k)}</td><td>{_e(v)}</td></tr>' for k, v in run_rows)

    absent_note = (
        f'<p class="note">{_e(tr("Not found in this tile"))}: {_e(", ".join(s.name for s in absent))}.</p>'
        if absent
        else ""
    )
    preview = (
        f'<h2>{_e(tr("Preview"))}</h2><p><img class="preview" src="{_e(_image_source(Path(result.preview), base))}" '
        f'alt="{_e(tr("Preview of the land cover map"))}"></p>'
        if result.preview and Path(result.preview).is_file()
        else ""
    )
    title = tr("Land cover of {}").format(result.tile_name)
    explanation = tr(
        "Area and share are counted over the valid (not nodata) pixels of the tile. "
        "Mean max probability is the average confidence of the winning class: close to 1 the model is sure, "
        "close to 1/C it hesitates between all classes. "
        "Gap is the probability of the winning class minus that of the runner-up; "
        "pixels with a gap below {} lie on a decision boundary between two classes and are the first to check. "
        "Shares of 50 % or more are highlighted."
    ).format(LOW_GAP)

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class="meta">{_e(tr("Model"))} <b>{_e(result.model_name)}</b> · {_e(tr("device"))} <b>{_e(result.device)}</b> ·
{_e(f"{valid_km2:,.2f}")} km² · {_e(f"{result.seconds:.1f}")} s</p>
<h2>{_e(tr("Classes"))}</h2>
<table>
<thead><tr><th></th><th class="name">{_e(tr("Class"))}</th><th>{_e(tr("Area (km²)"))}</th>
<th>{_e(tr("Share of valid area"))}</th><th>{_e(tr("Mean max probability"))}</th>
<th>{_e(tr("Pixels with gap < {}").format(LOW_GAP))}</th></tr></thead>
<tbody>
{"".join(rows)}
</tbody>
<tfoot>{footer}</tfoot>
</table>
{absent_note}
<p class="note">{_e(explanation)}</p>
{preview}
<h2>{_e(tr("Run"))}</h2>
<table>{run_table}</table>
<h2>{_e(tr("Timings"))}</h2>
<table>{timings}</table>
<h2>{_e(tr("Files"))}</h2>
<ul>{products}<li><a href="{_e(_rel(Path(result.report), base))}">{_e(Path(result.report).name)}</a> ({_e(tr("run report, JSON"))})</li></ul>
</body></html>
"""


def write_html_report(result: Any, path: Path | None = None) -> Path:
    """Write the HTML summary (default ``<output_dir>/<tile>_report.html``) and return its path."""
    target = Path(path) if path is not None else Path(result.output_dir) / f"{result.tile_name}_report.html"
    target.write_text(build_html_report(result, target.parent), encoding="utf-8")
    return target
