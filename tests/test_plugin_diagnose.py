"""``s2seg:diagnose``: the HTML report (versions, device, paths) with the self-test on a tiny sample tile,
and a report that still comes out, saying what is missing, when torch is not installed."""
from __future__ import annotations

import sys
from pathlib import Path

import processing

from plugin_feedback import RecordingFeedback


def test_report_with_self_test(s2seg_provider, tmp_path):
    feedback = RecordingFeedback()
    target = tmp_path / "diag" / "report.html"
    results = processing.run("s2seg:diagnose", {"DEVICE": "cpu", "OUTPUT": str(target)}, feedback=feedback)
    assert Path(results["OUTPUT"]) == target
    page = target.read_text(encoding="utf-8")
    import numpy
    import torch
    from osgeo import gdal
    from qgis.core import Qgis

    for expected in (Qgis.QGIS_VERSION, torch.__version__, numpy.__version__, gdal.__version__,
                     f"{sys.version_info.major}.{sys.version_info.minor}", "ONNX Runtime", "Numba",
                     "Device used by", "QGIS&#x27;s Python program", "Self-test", "passed", "on cpu", "class"):
        assert expected in page, expected
    assert "(problem)" not in page and not feedback.errors
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # written atomically: no temporary left
    assert any("Self-test · Result: passed" in line for line in feedback.infos)


def test_report_without_dependencies_says_what_is_missing(s2seg_provider, monkeypatch, tmp_path):
    from s2seg.s2seg_plugin import dependencies

    monkeypatch.setattr(dependencies, "missing_dependencies_message",
                        lambda *a: "s2seg cannot run: QGIS's Python (/usr/bin/python3.11) lacks torch.")
    feedback = RecordingFeedback()
    results = processing.run("s2seg:diagnose", {"OUTPUT": str(tmp_path / "r.html")}, feedback=feedback)
    page = Path(results["OUTPUT"]).read_text(encoding="utf-8")
    assert "lacks torch" in page and "skipped: dependencies missing" in page and "(problem)" in page
    assert feedback.errors and "Missing dependencies" in feedback.errors[0]


def test_failed_self_test_is_reported_with_its_traceback(monkeypatch):
    from s2seg.core import pipeline
    from s2seg.s2seg_plugin import diagnostics

    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(pipeline, "segment", broken)
    section = diagnostics.self_test("cpu")
    assert not section.ok
    rows = dict(section.rows)
    assert rows["Result"] == "FAILED: RuntimeError: kernel exploded" and "Traceback" in rows["Traceback"]
    html = diagnostics.render_html([section])
    assert "<pre>" in html and "kernel exploded" in html
