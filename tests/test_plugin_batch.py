"""``s2seg:segmenttiles`` through Processing: the declared interface, a run on a local cluster of worker
processes (tiles from a list file), a run on an existing cluster with a broken tile, cancel, errors,
and a graphical model that feeds the tiles from a String model input."""
from __future__ import annotations

import json
from pathlib import Path

import processing
import pytest
from qgis.core import (
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingOutputHtml,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterString,
    QgsProject,
)

from plugin_feedback import CancelAtFirstProgress, RecordingFeedback
from plugin_modeler import saved_and_reloaded

ALG_ID = "s2seg:segmenttiles"


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from s2seg.core.sample import write_sample_tile

    root = tmp_path_factory.mktemp("plugin_batch_tiles")
    good = write_sample_tile(root / "good", size=240, seed=3, layout="safe")
    broken = write_sample_tile(root / "broken", size=240, seed=4, layout="safe")
    band = next(broken.rglob("*_B04_10m.tif"))
    band.write_bytes(band.read_bytes()[:2000])
    return {"good": good, "broken": broken, "bad_band": band}


@pytest.fixture(scope="module")
def scheduler() -> str:
    """An existing cluster reached by address (workers as threads of this process: instant start)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=50) as cluster:
        yield cluster.scheduler_address


def test_declared_interface(s2seg_provider):
    alg = QgsApplication.processingRegistry().createAlgorithmById(ALG_ID)
    assert alg is not None
    assert alg.displayName() == "Segment Sentinel-2 tiles (batch)"
    assert (alg.group(), alg.groupId()) == ("Segmentation", "segmentation")
    assert not alg.flags() & alg.FlagNoThreading and alg.flags() & alg.FlagCanCancel
    params = {p.name(): p for p in alg.parameterDefinitions()}
    assert list(params) == ["INPUTS", "TILE_LIST", "EXTENT", "MASK", "MODEL", "MODEL_FILE", "CLOUD_MASK", "KEEP_MASKED",
                            "CHUNK_SIZE", "BATCH_SIZE",
                            "DEVICE", "WRITE_PROBS", "BANDS", "SCALE", "OFFSET", "OVERWRITE", "RESUME", "SCHEDULER",
                            "WORKERS", "THREADS_PER_WORKER", "OUTPUT_FOLDER"]
    # The engine options are those of s2seg:segmenttile, declared once (algorithms/common.py).
    single = {p.name(): p for p in QgsApplication.processingRegistry().algorithmById("s2seg:segmenttile")
              .parameterDefinitions()}
    for name in ("EXTENT", "MASK", "MODEL", "MODEL_FILE", "CLOUD_MASK", "KEEP_MASKED", "CHUNK_SIZE", "BATCH_SIZE", "DEVICE",
                 "WRITE_PROBS",
                 "BANDS", "SCALE", "OFFSET", "RESUME"):
        assert params[name].toVariantMap() == single[name].toVariantMap(), name
    assert "mps" in params["DEVICE"].options() and params["RESUME"].options() == ["auto", "require", "never"]
    assert isinstance(params["INPUTS"], QgsProcessingParameterString) and params["INPUTS"].multiLine()
    assert isinstance(params["TILE_LIST"], QgsProcessingParameterFile)
    assert isinstance(params["SCHEDULER"], QgsProcessingParameterString)
    assert params["SCHEDULER"].flags() & params["SCHEDULER"].FlagOptional
    assert isinstance(params["OUTPUT_FOLDER"], QgsProcessingParameterFolderDestination)
    outputs = {o.name(): o for o in alg.outputDefinitions()}
    assert isinstance(outputs["SUMMARY"], QgsProcessingOutputHtml)
    for name in ("OK", "SKIPPED", "FAILED"):
        assert isinstance(outputs[name], QgsProcessingOutputNumber)
    assert "OUTPUT_FOLDER" in outputs
    assert "scheduler" in alg.shortHelpString().lower()


def test_local_cluster_run_from_a_list_file_then_skip(s2seg_provider, tiles, tmp_path):
    listing = tmp_path / "tiles.txt"
    listing.write_text(f"# one tile\n{tiles['good']}\n", encoding="utf-8")
    out = tmp_path / "out"
    feedback = RecordingFeedback()
    results = processing.run(ALG_ID, {"TILE_LIST": str(listing), "DEVICE": "cpu", "WORKERS": 1,
                                      "THREADS_PER_WORKER": 1, "OUTPUT_FOLDER": str(out)}, feedback=feedback)
    assert (results["OK"], results["SKIPPED"], results["FAILED"]) == (1, 0, 0)
    log = "\n".join(feedback.infos)
    assert "local cluster: 1 worker(s) × 1 torch thread(s)" in log
    assert "[1/1]" in log and ": ok (" in log
    assert feedback.progress_values[-1] == pytest.approx(100.0)
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    assert folder.name == tiles["good"].name.removesuffix(".SAFE")
    # Per-tile HTML report and .qml styles, as the single-tile algorithm writes them.
    assert list(folder.glob("*_report.html")) and list(folder.glob("*_class.qml"))
    # The cloud mask follows the front ends' default (auto), as in s2seg:segmenttile and `s2seg batch`.
    assert list(folder.glob("*_mask.tif"))
    summary = Path(results["SUMMARY"]).read_text(encoding="utf-8")
    assert "_report.html" in summary

    again = processing.run(ALG_ID, {"INPUTS": str(tiles["good"]), "DEVICE": "cpu", "WORKERS": 1,
                                    "OUTPUT_FOLDER": str(out)})
    assert (again["OK"], again["SKIPPED"], again["FAILED"]) == (0, 1, 0)


def test_existing_cluster_isolates_a_broken_tile(s2seg_provider, tiles, scheduler, tmp_path):
    feedback = RecordingFeedback()
    out = tmp_path / "out"
    results = processing.run(ALG_ID, {"INPUTS": f"{tiles['good']}\n{tiles['broken']}", "SCHEDULER": scheduler,
                                      "DEVICE": "cpu", "OUTPUT_FOLDER": str(out)}, feedback=feedback)
    assert (results["OK"], results["FAILED"]) == (1, 1)
    assert results["OUTPUT_FOLDER"] == str(out)
    assert any(tiles["bad_band"].name in e for e in feedback.errors), feedback.errors
    summary = json.loads((out / "s2seg_batch.json").read_text())
    assert [t["status"] for t in summary["tiles"]] == ["ok", "failed"]
    assert f"scheduler {scheduler}" in summary["cluster"]


def test_every_tile_failing_raises(s2seg_provider, tiles, scheduler, tmp_path):
    with pytest.raises(QgsProcessingException, match="Every tile failed.*B04"):
        processing.run(ALG_ID, {"INPUTS": [str(tiles["broken"])], "SCHEDULER": scheduler,
                                "OUTPUT_FOLDER": str(tmp_path / "out")})


def test_no_tiles_and_bad_globs_raise(s2seg_provider, tmp_path):
    with pytest.raises(QgsProcessingException, match="No tiles"):
        processing.run(ALG_ID, {"OUTPUT_FOLDER": str(tmp_path / "out")})
    with pytest.raises(QgsProcessingException, match="no tile matches"):
        processing.run(ALG_ID, {"INPUTS": str(tmp_path / "*.SAFE"), "OUTPUT_FOLDER": str(tmp_path / "out")})


def test_resume_mode_reaches_every_tile(s2seg_provider, tiles, scheduler, tmp_path):
    """RESUME goes to each tile's engine run: with "require", a tile with nothing to resume fails."""
    feedback = RecordingFeedback()
    with pytest.raises(QgsProcessingException, match="Every tile failed.*cannot resume"):
        processing.run(ALG_ID, {"INPUTS": str(tiles["good"]), "SCHEDULER": scheduler, "DEVICE": "cpu",
                                "RESUME": "require", "OUTPUT_FOLDER": str(tmp_path / "out")}, feedback=feedback)
    assert any("cannot resume" in e for e in feedback.errors), feedback.errors


def test_cloud_mask_setting_reaches_every_tile(s2seg_provider, tiles, scheduler, tmp_path):
    out = tmp_path / "out"
    results = processing.run(ALG_ID, {"INPUTS": str(tiles["good"]), "SCHEDULER": scheduler, "DEVICE": "cpu",
                                      "CLOUD_MASK": "none", "OUTPUT_FOLDER": str(out)})
    assert results["OK"] == 1
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    assert list(folder.glob("*_class.tif")) and not list(folder.glob("*_mask.tif"))


def test_cancel(s2seg_provider, scheduler, tmp_path):
    """Cancel at the first progress: queued tiles are dropped, running ones stop; the run raises."""
    from s2seg.core.sample import write_sample_tile

    many = [write_sample_tile(tmp_path / f"t{k}", size=240, seed=k) for k in range(6)]
    out = tmp_path / "out"
    with pytest.raises(QgsProcessingException, match="[Cc]ancel"):
        processing.run(ALG_ID, {"INPUTS": ";".join(map(str, many)), "SCHEDULER": scheduler,
                                "CHUNK_SIZE": 120, "OUTPUT_FOLDER": str(out)}, feedback=CancelAtFirstProgress())
    summary = json.loads((out / "s2seg_batch.json").read_text())
    assert summary["counts"]["cancelled"] >= 1


def test_graphical_model_feeds_tiles_from_a_string_input(s2seg_provider, tiles, scheduler, tmp_path):
    model = QgsProcessingModelAlgorithm("Batch segment", "s2seg tests")
    model.addModelParameter(QgsProcessingParameterString("tiles", "Tiles", multiLine=True),
                            QgsProcessingModelParameter("tiles"))
    child = QgsProcessingModelChildAlgorithm(ALG_ID)
    child.setChildId("batch")
    static = QgsProcessingModelChildParameterSource.fromStaticValue
    child.addParameterSources("INPUTS", [QgsProcessingModelChildParameterSource.fromModelParameter("tiles")])
    statics = {"TILE_LIST": "", "MODEL": "builtin", "MODEL_FILE": "", "CHUNK_SIZE": 0, "BATCH_SIZE": 0,
               "DEVICE": "cpu", "WRITE_PROBS": False, "OVERWRITE": False, "SCHEDULER": scheduler, "WORKERS": 0,
               "THREADS_PER_WORKER": 0, "OUTPUT_FOLDER": str(tmp_path / "out")}
    for name, value in statics.items():
        child.addParameterSources(name, [static(value)])
    output = QgsProcessingModelOutput("summary", "Summary")
    output.setChildId("batch")
    output.setChildOutputName("SUMMARY")
    child.setModelOutputs({"summary": output})
    model.addChildAlgorithm(child)
    loaded = saved_and_reloaded(model, tmp_path / "batch.model3")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    results = processing.run(loaded, {"tiles": str(tiles["good"])}, context=context)
    assert Path(results["batch:summary"]).is_file()
    assert results["CHILD_RESULTS"]["batch"]["OK"] == 1
