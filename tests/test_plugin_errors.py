"""Engine errors a user fixes with one option reach QGIS with the dialog's wording (not the CLI's
--flags), keyed on the error type in one place (algorithms/common.py); a cancel's "chunks are saved"
note is not repeated by the algorithm. The engine is replaced by a stub that raises the error, and a
real re-run into a folder of finished products shows that they are kept unless OVERWRITE is ticked."""
from __future__ import annotations

from pathlib import Path

import processing
import pytest
from qgis.core import QgsProcessingException

from plugin_feedback import RecordingFeedback
from s2seg.core import pipeline
from s2seg.core.errors import Cancelled, DeviceUnavailable, OutputsExist, ResumeImpossible

NEUTRAL = {
    OutputsExist: "outputs already exist (T32UNU_class.tif) in /data/out",
    ResumeImpossible: "cannot resume in /data/out: no interrupted run of this tile",
    DeviceUnavailable: "device 'cuda' was requested but no CUDA GPU is available to torch",
}
QGIS_WORDING = {
    OutputsExist: "tick 'Overwrite existing outputs' to replace them",
    ResumeImpossible: "set 'Resume an interrupted run (auto, require, never)' (Advanced parameters) to auto or never to start over",
    DeviceUnavailable: "choose 'Device' (Advanced parameters): auto or cpu",
}


def stub_engine(monkeypatch: pytest.MonkeyPatch, exc: Exception, logged: str = "") -> None:
    def segment(tile, output_dir, model=None, config=None, progress=None, cancel=None, log=None):
        if logged:
            log(logged)
        raise exc

    monkeypatch.setattr(pipeline, "segment", segment)


@pytest.mark.parametrize("error", list(NEUTRAL), ids=lambda e: e.__name__)
def test_option_errors_get_the_dialogs_wording(s2seg_provider, monkeypatch, small_tile, tmp_path, error):
    stub_engine(monkeypatch, error(NEUTRAL[error]))
    with pytest.raises(QgsProcessingException) as info:
        processing.run("s2seg:segmenttile", {"INPUT": str(small_tile), "OUTPUT_FOLDER": str(tmp_path / "out")})
    message = str(info.value)
    assert message == f"{NEUTRAL[error]}; {QGIS_WORDING[error]}"
    assert "--" not in message


def test_batch_names_its_own_overwrite_option(s2seg_provider):
    from qgis.core import QgsApplication

    alg = QgsApplication.processingRegistry().createAlgorithmById("s2seg:segmenttiles")
    assert alg.remedy(OutputsExist("x")) == "tick 'Re-run tiles that are already complete' to replace them"
    assert alg.remedy(Cancelled("x")) == ""


def test_cancel_note_is_not_repeated_by_the_algorithm(s2seg_provider, monkeypatch, small_tile, tmp_path):
    note = "1 of 4 chunk(s) are saved in /data/out (*.part, T.s2seg-journal): run again with the same settings to resume"
    stub_engine(monkeypatch, Cancelled(f"cancelled after 1 of 4 chunk(s); {note}"), logged=note)
    feedback = RecordingFeedback()
    with pytest.raises(QgsProcessingException) as info:
        processing.run("s2seg:segmenttile", {"INPUT": str(small_tile), "OUTPUT_FOLDER": str(tmp_path / "out")},
                       feedback=feedback)
    shown = "\n".join([*feedback.infos, *feedback.errors, str(info.value)])
    assert shown.count("are saved") == 2  # the engine's two copies (log + exception); none added here
    assert str(info.value) == f"cancelled after 1 of 4 chunk(s); {note}"


def test_finished_products_are_kept_unless_overwrite_is_ticked(s2seg_provider, small_tile, tmp_path):
    out = tmp_path / "out"
    params = {"INPUT": str(small_tile), "DEVICE": "cpu", "OUTPUT_FOLDER": str(out)}
    first = processing.run("s2seg:segmenttile", params)
    stamp = Path(first["CLASS"]).stat().st_mtime_ns
    with pytest.raises(QgsProcessingException, match="already exist"):
        processing.run("s2seg:segmenttile", params)
    assert Path(first["CLASS"]).stat().st_mtime_ns == stamp
    again = processing.run("s2seg:segmenttile", {**params, "OVERWRITE": True})
    assert Path(again["CLASS"]).stat().st_mtime_ns != stamp


def test_failed_run_leaves_no_empty_output_folder(s2seg_provider, tmp_path):
    missing = tmp_path / "no_such_tile.SAFE"
    out = tmp_path / "new" / "out"
    with pytest.raises(QgsProcessingException, match="no_such_tile"):
        processing.run("s2seg:segmenttile", {"INPUT": str(missing), "OUTPUT_FOLDER": str(out)})
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(QgsProcessingException):
        processing.run("s2seg:segmenttile", {"INPUT": str(missing), "OUTPUT_FOLDER": str(existing)})
    assert existing.is_dir()  # a folder the user had is never removed
