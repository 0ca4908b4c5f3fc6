"""``s2seg:segmenttile``'s RESUME parameter: a run cancelled after some chunks are saved continues
from them (``auto``, the default), starts over (``never``), and ``require`` refuses to start afresh.

The tile is 960 px with 240 px chunks: 16 chunks, each journaled as soon as it is written, so
a run cancelled after the first journaled chunk leaves something to resume (see core/grid.py). Cancel reaches
the engine through the feedback bridge's poll and the journal lags the writer by an fsync: with 4 chunks a
fast run (the built-in model's fused pass) sometimes wrote and journaled all of them before it did.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import processing
import pytest
from osgeo import gdal
from qgis.core import QgsProcessingException

from plugin_feedback import RecordingFeedback
from s2seg.core.journal import SUFFIX, JournalMismatch, read_journal

ALG_ID = "s2seg:segmenttile"
CHUNK = 240  # on a 960 px tile: 16 chunks, each a journal point
N_CHUNKS = 16
pytestmark = pytest.mark.timeout(300)


class Feedback(RecordingFeedback):
    """Keeps the log; with ``cancel_in``, presses Cancel as soon as the engine's journal in that folder
    lists a finished chunk."""

    def __init__(self, cancel_in: Path | None = None) -> None:
        super().__init__()
        self.cancel_in = cancel_in

    def setProgress(self, progress: float) -> None:  # noqa: N802 - QGIS API
        super().setProgress(progress)
        if self.cancel_in is not None and not self.isCanceled() and journaled(self.cancel_in):
            self.cancel()


def journaled(out: Path) -> int:
    """Chunks listed in the journal of an interrupted run in ``out`` (0 without one)."""
    for path in out.glob("*" + SUFFIX) if out.is_dir() else ():
        try:
            return len(read_journal(path).done)
        except JournalMismatch:  # being written
            return 0
    return 0


def params(tile: Path, out: Path, **extra: object) -> dict[str, object]:
    # Batch size 1: the engine sees Cancel within one patch.
    return {"INPUT": str(tile), "CHUNK_SIZE": CHUNK, "BATCH_SIZE": 1, "DEVICE": "cpu", "OUTPUT_FOLDER": str(out),
            **extra}


def interrupt(tile: Path, out: Path) -> int:
    """A run cancelled once a chunk is saved; returns how many chunks it left to resume."""
    with pytest.raises(QgsProcessingException, match="[Cc]ancel"):
        processing.run(ALG_ID, params(tile, out), feedback=Feedback(cancel_in=out))
    kept = journaled(out)
    assert 1 <= kept < N_CHUNKS, kept
    names = [p.name for p in out.iterdir()]
    assert any(n.endswith(".part") for n in names), names
    assert not [n for n in names if n.endswith((".tif", ".png", ".html", "_report.json"))], names  # nothing looks finished
    return kept


def engine_report(out: Path) -> dict:
    return json.loads(next(out.glob("*_report.json")).read_text(encoding="utf-8"))


def class_pixels(results: dict) -> np.ndarray:
    ds = gdal.Open(results["CLASS"])
    return ds.GetRasterBand(1).ReadAsArray()


@pytest.fixture(scope="module")
def tile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from s2seg.core.sample import write_sample_tile

    return write_sample_tile(tmp_path_factory.mktemp("resume_tile"), size=960, seed=7, level="L2A", layout="safe")


def test_cancelled_run_resumes_and_never_starts_over(s2seg_provider, tile, tmp_path):
    # auto (the default): the second run takes over the chunks the cancelled one saved.
    out = tmp_path / "auto"
    kept = interrupt(tile, out)
    feedback = Feedback()
    resumed = processing.run(ALG_ID, params(tile, out), feedback=feedback)
    report = engine_report(out)
    assert report["resumed_chunks"] == kept and report["n_chunks"] == N_CHUNKS
    assert report["config"]["resume"] == "auto"
    assert any("Resumed an interrupted run" in info for info in feedback.infos), feedback.infos
    assert not list(out.glob("*" + SUFFIX)) and not list(out.glob("*.part"))  # done: no partial state left

    # never: the partial results are discarded and every chunk is computed again.
    out = tmp_path / "never"
    interrupt(tile, out)
    feedback = Feedback()
    fresh = processing.run(ALG_ID, params(tile, out, RESUME="never"), feedback=feedback)
    report = engine_report(out)
    assert report["resumed_chunks"] == 0 and report["config"]["resume"] == "never"
    assert not any("Resumed an interrupted run" in info for info in feedback.infos)
    assert any("discarding the partial results" in info for info in feedback.infos), feedback.infos

    # The resumed products are those of a run from scratch.
    assert np.array_equal(class_pixels(resumed), class_pixels(fresh))


def test_require_without_anything_to_resume_fails(s2seg_provider, tile, tmp_path):
    out = tmp_path / "require"
    with pytest.raises(QgsProcessingException, match="cannot resume"):
        processing.run(ALG_ID, params(tile, out, RESUME="require"))
    assert not list(out.glob("*.tif"))


def test_bad_resume_value_is_refused(s2seg_provider, tile, tmp_path):
    with pytest.raises(QgsProcessingException):
        processing.run(ALG_ID, params(tile, tmp_path / "bad", RESUME="sometimes"))
