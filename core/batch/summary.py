"""The batch's results for people: a plain-text table, one summary line, ``s2seg_batch.json`` and ``.html``."""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Sequence

from ..atomic import write_atomic
from .results import CANCELLED, FAILED, OK, SKIPPED, BatchResult, TileOutcome

SUMMARY_JSON = "s2seg_batch.json"
SUMMARY_HTML = "s2seg_batch.html"


def format_table(outcomes: Sequence[TileOutcome]) -> str:
    """A plain-text table: tile, status, seconds, device, output folder; then the errors."""
    header = ("tile", "status", "seconds", "device", "output folder")
    rows = [(o.name, o.status, f"{o.seconds:.1f}", o.device or "-", o.output_dir) for o in outcomes]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i != 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    text = [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    problems = [o for o in outcomes if o.status in (FAILED, CANCELLED) and o.message]
    if problems:
        text.append("")
        text.extend(f"{o.name}: {o.status}: {o.message}" for o in problems)
    return "\n".join(text)


def summary_line(result: BatchResult) -> str:
    done = result.count(OK)
    rate = done / result.seconds * 3600 if result.seconds > 0 and done else 0.0
    return (f"{len(result.outcomes)} tile(s): {done} ok, {result.count(SKIPPED)} skipped, {len(result.failed)} failed"
            + (f", {result.count(CANCELLED)} cancelled" if result.cancelled else "")
            + f" in {result.seconds:.1f} s ({rate:.0f} tiles/hour) on {result.cluster}")


def write_summary(result: BatchResult, output_root: Path) -> tuple[Path, Path]:
    """``s2seg_batch.json`` and ``s2seg_batch.html`` in ``output_root`` (written atomically)."""
    data = {"summary": summary_line(result), "seconds": round(result.seconds, 3), "cluster": result.cluster,
            "counts": {s: result.count(s) for s in (OK, SKIPPED, FAILED, CANCELLED)},
            "tiles": [o.to_dict() for o in result.outcomes]}
    json_path = output_root / SUMMARY_JSON
    html_path = output_root / SUMMARY_HTML
    write_atomic(json_path, json.dumps(data, indent=2) + "\n")
    write_atomic(html_path, summary_html(result, output_root))
    return json_path, html_path


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 80em; }
h1 { font-size: 1.4em; } table { border-collapse: collapse; margin: .5em 0; }
th, td { padding: .25em .7em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; }
.ok { color: #1e7b34; } .skipped { color: #555; } .failed, .cancelled { color: #b03a2e; font-weight: bold; }
.msg { color: #b03a2e; font-family: monospace; font-size: .9em; white-space: pre-wrap; }
"""


def summary_html(result: BatchResult, output_root: Path) -> str:
    """A self-contained page: one row per tile with links to its report and preview (relative links)."""
    from ..preview import PREVIEW_SUFFIX  # here: preview imports torch, and `s2seg --help` must not

    e = lambda value: html.escape(str(value), quote=True)  # noqa: E731

    def link(path: Path, label: str) -> str:
        try:
            rel = Path(os.path.relpath(path, output_root)).as_posix()
        except ValueError:
            rel = path.as_uri()
        return f'<a href="{e(rel)}">{e(label)}</a>'

    rows = []
    for o in result.outcomes:
        folder = Path(o.output_dir)
        links = []
        if o.status in (OK, SKIPPED) and folder.is_dir():
            reports = sorted(folder.glob("*_report.html")) or sorted(folder.glob("*_report.json"))
            if reports:
                links.append(link(reports[0], "report"))
            previews = sorted(folder.glob("*" + PREVIEW_SUFFIX))
            if previews:
                links.append(link(previews[0], "preview"))
        message = f'<div class="msg">{e(o.message)}</div>' if o.status in (FAILED, CANCELLED) and o.message else ""
        if o.traceback:  # a programming error: where it happened, for the bug report
            message += f'<details><summary>traceback</summary><pre class="msg">{e(o.traceback)}</pre></details>'
        rows.append(
            f'<tr><td>{e(o.name)}{message}</td><td class="{e(o.status)}">{e(o.status)}</td>'
            f'<td class="num">{o.seconds:.1f}</td><td>{e(o.device or "–")}</td>'
            f'<td>{link(folder, o.name + "/")}</td><td>{" · ".join(links)}</td></tr>'
        )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>s2seg batch</title>"
        f"<style>{_CSS}</style></head><body>\n<h1>s2seg batch</h1>\n<p>{e(summary_line(result))}</p>\n"
        "<table><thead><tr><th>Tile</th><th>Status</th><th>Seconds</th><th>Device</th><th>Output folder</th>"
        "<th>Files</th></tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>\n</body></html>\n"
    )


