"""``s2seg:segmenttile`` run through Processing on a small synthetic tile: outputs, styling, the HTML
report, loading into the project (background task + post-processors), cancel and error handling,
and a graphical model that chains the algorithm into a core QGIS algorithm."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import processing
import pytest
from osgeo import gdal
from pytest_qgis.utils import wait_until
from qgis.core import (
    QgsApplication,
    QgsLayerTreeGroup,
    QgsLayerTreeLayer,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterFile,
    QgsProject,
    QgsRasterLayer,
)

from s2seg.core.nomenclature import BIGEARTHNET19

from plugin_feedback import CancelAtFirstProgress, RecordingFeedback
from plugin_modeler import saved_and_reloaded

ALG_ID = "s2seg:segmenttile"
PRODUCT_OUTPUTS = {"CLASS": "class", "MAXPROB": "maxprob", "ENTROPY": "entropy", "GAP": "gap"}


@pytest.fixture(scope="module")
def run(s2seg_registered, small_tile: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One processing.run of the algorithm, shared by the checks below."""
    out = tmp_path_factory.mktemp("segment") / "out"
    feedback = RecordingFeedback()
    results = processing.run(ALG_ID, {"INPUT": str(small_tile), "OUTPUT_FOLDER": str(out)}, feedback=feedback)
    return {"results": results, "out": out, "feedback": feedback, "tile": small_tile}


def band_file(tile: Path, band: str) -> Path:
    return next(p for p in tile.rglob(f"*_{band}*") if p.suffix in (".tif", ".jp2"))


def test_run_returns_every_declared_output(run):
    results, out = run["results"], run["out"]
    assert results["OUTPUT_FOLDER"] == str(out)
    for output, product in PRODUCT_OUTPUTS.items():
        path = Path(results[output])
        assert path.is_file() and path.parent == out and path.name.endswith(f"_{product}.tif")
    assert "PROBS" not in results  # not asked for
    assert Path(results["PREVIEW"]).is_file() and Path(results["PREVIEW"]).suffix == ".png"
    tile_name = Path(results["CLASS"]).name.removesuffix("_class.tif")
    assert Path(results["PREVIEW"]) == out / f"{tile_name}_preview.png"  # named after the tile, like the products
    assert Path(results["REPORT"]).is_file() and Path(results["REPORT"]).suffix == ".html"


def test_rasters_have_the_tile_grid_and_the_right_types(run):
    reference = gdal.Open(str(band_file(run["tile"], "B02")))
    expected_types = {"CLASS": gdal.GDT_Byte, "MAXPROB": gdal.GDT_Float32, "ENTROPY": gdal.GDT_Float32,
                      "GAP": gdal.GDT_Float32}
    for output, dtype in expected_types.items():
        ds = gdal.Open(run["results"][output])
        assert ds.GetRasterBand(1).DataType == dtype, output
        assert (ds.RasterXSize, ds.RasterYSize) == (reference.RasterXSize, reference.RasterYSize)
        assert ds.GetGeoTransform() == pytest.approx(reference.GetGeoTransform())
        assert ds.GetSpatialRef().GetAuthorityCode(None) == "32632"
    # Keep every dataset referenced while its band is used: GDAL 3.6's bindings crash otherwise.
    entropy_ds = gdal.Open(run["results"]["ENTROPY"])
    entropy = entropy_ds.GetRasterBand(1).ComputeRasterMinMax(False)
    assert 0.0 <= entropy[0] <= entropy[1] <= math.log2(len(BIGEARTHNET19)) + 1e-5
    class_ds = gdal.Open(run["results"]["CLASS"])
    classes = class_ds.GetRasterBand(1)
    assert classes.GetNoDataValue() == 255
    assert classes.GetColorTable() is not None
    assert classes.GetCategoryNames()[: len(BIGEARTHNET19)] == [c.name for c in BIGEARTHNET19]


def test_feedback_reports_progress_device_and_chunks(run):
    feedback = run["feedback"]
    log = "\n".join(feedback.infos)
    assert "on cpu" in log or "on cuda" in log  # the device
    assert "builtin" in log  # the model
    assert re.search(r"chunk 1/\d+", log)
    assert feedback.progress_values[-1] == pytest.approx(100.0)
    assert feedback.progress_values == sorted(feedback.progress_values)


def test_qml_sidecars_style_rasters_opened_by_hand(run):
    for output in PRODUCT_OUTPUTS:
        path = Path(run["results"][output])
        assert path.with_suffix(".qml").is_file(), output
    layer = QgsRasterLayer(run["results"]["CLASS"], "class")  # loads <name>.qml as its default style
    assert layer.renderer().type() == "paletted"
    classes = layer.renderer().classes()
    assert [c.label for c in classes] == [c.name for c in BIGEARTHNET19]
    assert [c.color.name().upper() for c in classes] == [c.colour.upper() for c in BIGEARTHNET19]
    entropy = QgsRasterLayer(run["results"]["ENTROPY"], "entropy")
    assert entropy.renderer().type() == "singlebandpseudocolor"
    assert entropy.renderer().classificationMax() == pytest.approx(math.log2(len(BIGEARTHNET19)))


def test_html_report_summarises_classes_and_run(run):
    html = Path(run["results"]["REPORT"]).read_text(encoding="utf-8")
    engine_report = json.loads(next(run["out"].glob("*_report.json")).read_text())
    present = engine_report["classes"]
    assert present
    for stat in present:
        row = re.search(r"<tr>.*?" + re.escape(stat["name"].replace("&", "&amp;")) + r".*?</tr>", html)
        assert row, stat["name"]
        assert f"{stat['area_km2']:,.2f}" in row.group(0)
        assert f"{stat['mean_maxprob']:.2f}" in row.group(0)
    for text in ("Area (km²)", "Share of valid area", "Mean max probability", "gap &lt; 0.1", "builtin",
                 engine_report["device"], 'src="data:image/png;base64,'):
        assert text in html, text
    for step in ("read", "inference", "write", "total"):
        assert f'<td class="name">{step}</td>' in html


def test_zip_input_probabilities_chunking_and_device(s2seg_provider, tmp_path):
    """A .SAFE.zip is accepted as INPUT; WRITE_PROBS adds the PROBS output (one band per class);
    explicit chunk size, batch size and device are honoured."""
    from s2seg.core.sample import write_sample_tile

    tile = write_sample_tile(tmp_path / "tile", size=240, seed=1, level="L2A", layout="zip")
    assert tile.is_file() and tile.suffix == ".zip"
    feedback = RecordingFeedback()
    results = processing.run(ALG_ID, {"INPUT": str(tile), "MODEL": "builtin", "CHUNK_SIZE": 120,
                                      "BATCH_SIZE": 3, "DEVICE": "cpu", "WRITE_PROBS": True,
                                      "OUTPUT_FOLDER": str(tmp_path / "out")}, feedback=feedback)
    probs = gdal.Open(results["PROBS"])
    assert probs.RasterCount == len(BIGEARTHNET19)
    assert probs.GetRasterBand(1).GetDescription() == BIGEARTHNET19[0].name
    assert Path(results["PROBS"]).with_suffix(".qml").is_file()
    log = "\n".join(feedback.infos)
    assert "on cpu" in log and "batch 3" in log
    assert re.search(r"chunk 1/[2-9]", log)  # 120 px chunks: several of them


def test_results_load_styled_and_grouped_from_a_background_task(s2seg_provider, small_tile, tmp_path,
                                                                 qgis_new_project):
    """The Toolbox dialog's path: QgsProcessingAlgRunnerTask on a worker thread, then Processing loads
    the layers on the main thread and our post-processors style and group them."""
    from processing.gui.Postprocessing import handleAlgorithmResults

    alg = QgsApplication.processingRegistry().createAlgorithmById(ALG_ID)
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = QgsProcessingFeedback()
    context.setFeedback(feedback)
    task = QgsProcessingAlgRunnerTask(alg, {"INPUT": str(small_tile), "OUTPUT_FOLDER": str(tmp_path)},
                                      context, feedback)
    done: dict[str, Any] = {}
    task.executed.connect(lambda ok, results: done.update(ok=ok, results=results))
    QgsApplication.taskManager().addTask(task)
    assert wait_until(lambda: "ok" in done, timeout_milliseconds=120_000)
    assert done["ok"], done
    del alg, task  # as in the dialog, the algorithm clone may be gone before the layers load
    from processing.core.ProcessingResults import resultsList

    report = done["results"]["REPORT"]
    resultsList.addResult(icon=None, name="Segmentation report", timestamp=None, result=report)  # as the dialog does
    assert handleAlgorithmResults(QgsApplication.processingRegistry().algorithmById(ALG_ID), context, feedback,
                                  False, {})

    root = QgsProject.instance().layerTreeRoot()
    groups = [c for c in root.children() if isinstance(c, QgsLayerTreeGroup)]
    assert [g.name() for g in groups] == [Path(done["results"]["CLASS"]).name.rsplit("_class", 1)[0]]
    (entry,) = [e for e in resultsList.getResults() if e.filename == report]
    assert entry.name == f"Segmentation report: {groups[0].name()}"  # the Results Viewer names the tile
    nodes = [c for c in groups[0].children() if isinstance(c, QgsLayerTreeLayer)]
    # Confidence layers above the opaque class map and unchecked: ticking one shows it over the land cover.
    # The cloud mask (default auto: the L2A sample has an SCL) lies just above it, shown (clear is transparent).
    assert [n.name() for n in nodes] == ["Max probability", "Gap top-1 − top-2", "Entropy (bits)",
                                         "Clouds, shadows and snow", "Land cover (builtin)"]
    assert [n.itemVisibilityChecked() for n in nodes] == [False, False, False, True, True]
    maxprob, gap, entropy, mask, land_cover = (n.layer() for n in nodes)
    drawn = [layer.id() for layer in root.layerOrder()]  # top first
    assert drawn.index(land_cover.id()) > max(drawn.index(x.id()) for x in (maxprob, gap, entropy))
    assert land_cover.renderer().type() == "paletted"
    assert [c.label for c in land_cover.renderer().classes()] == [c.name for c in BIGEARTHNET19]
    for layer, maximum in ((maxprob, 1.0), (gap, 1.0), (entropy, math.log2(len(BIGEARTHNET19)))):
        assert layer.renderer().type() == "singlebandpseudocolor"
        assert (layer.renderer().classificationMin(), layer.renderer().classificationMax()) == \
            pytest.approx((0.0, maximum))
    assert mask.renderer().type() == "paletted" and drawn.index(mask.id()) < drawn.index(land_cover.id())
    assert len(QgsProject.instance().mapLayers()) == 5


def test_cancel_stops_and_leaves_no_finished_file(s2seg_provider, small_tile, tmp_path):
    out = tmp_path / "cancelled"
    with pytest.raises(QgsProcessingException, match="[Cc]ancel"):
        processing.run(ALG_ID, {"INPUT": str(small_tile), "CHUNK_SIZE": 120, "OUTPUT_FOLDER": str(out)},
                       feedback=CancelAtFirstProgress())
    leftovers = [p.name for p in out.iterdir()] if out.exists() else []
    assert not [n for n in leftovers if n.endswith((".tif", ".png", ".html", ".json", ".qml"))], leftovers


def test_bad_input_raises_processing_exception_naming_it(s2seg_provider, tmp_path):
    missing = tmp_path / "S2A_MSIL2A_nothing_here.SAFE"
    with pytest.raises(QgsProcessingException, match=re.escape(str(missing))):
        processing.run(ALG_ID, {"INPUT": str(missing), "OUTPUT_FOLDER": str(tmp_path / "out")})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QgsProcessingException, match="empty"):
        processing.run(ALG_ID, {"INPUT": str(empty), "OUTPUT_FOLDER": str(tmp_path / "out")})


def test_unavailable_device_raises_processing_exception(s2seg_provider, small_tile, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(QgsProcessingException, match="cuda"):
        processing.run(ALG_ID, {"INPUT": str(small_tile), "DEVICE": "cuda", "OUTPUT_FOLDER": str(tmp_path / "out")})


def test_bad_model_file_raises_processing_exception(s2seg_provider, small_tile, tmp_path):
    bogus = tmp_path / "weights.bin"
    bogus.write_bytes(b"\0")
    with pytest.raises(QgsProcessingException, match="weights.bin"):
        processing.run(ALG_ID, {"INPUT": str(small_tile), "MODEL_FILE": str(bogus),
                                "OUTPUT_FOLDER": str(tmp_path / "out")})


def test_graphical_model_chains_entropy_into_raster_statistics(s2seg_provider, small_tile, tmp_path):
    """Segment tile → native:rasterlayerstatistics on its ENTROPY output, saved as .model3 and run back."""
    model = QgsProcessingModelAlgorithm("Segment and check entropy", "s2seg tests")
    model.addModelParameter(QgsProcessingParameterFile("tile", "Tile", behavior=QgsProcessingParameterFile.Folder),
                            QgsProcessingModelParameter("tile"))
    segment = QgsProcessingModelChildAlgorithm(ALG_ID)
    segment.setChildId("segment")
    static = QgsProcessingModelChildParameterSource.fromStaticValue
    sources = {
        "INPUT": QgsProcessingModelChildParameterSource.fromModelParameter("tile"),
        "MODEL": static("builtin"), "MODEL_FILE": static(""), "CHUNK_SIZE": static(0), "BATCH_SIZE": static(0),
        "DEVICE": static("auto"), "WRITE_PROBS": static(False), "OUTPUT_FOLDER": static(str(tmp_path / "segmented")),
    }
    for name, source in sources.items():
        segment.addParameterSources(name, [source])
    model.addChildAlgorithm(segment)
    stats = QgsProcessingModelChildAlgorithm("native:rasterlayerstatistics")
    stats.setChildId("stats")
    stats.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromChildOutput("segment", "ENTROPY")])
    stats.addParameterSources("BAND", [static(1)])
    output = QgsProcessingModelOutput("entropy_stats", "Entropy statistics")
    output.setChildId("stats")
    output.setChildOutputName("OUTPUT_HTML_FILE")
    stats.setModelOutputs({"entropy_stats": output})
    model.addChildAlgorithm(stats)
    loaded = saved_and_reloaded(model, tmp_path / "segment_entropy_stats.model3")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    results = processing.run(loaded, {"tile": str(small_tile), "stats:entropy_stats": str(tmp_path / "stats.html")},
                             context=context)
    chained = results["CHILD_RESULTS"]["stats"]
    assert 0.0 <= chained["MIN"] <= chained["MEAN"] <= chained["MAX"] <= math.log2(len(BIGEARTHNET19)) + 1e-5
    assert chained["MAX"] > 0.0
    assert Path(results["stats:entropy_stats"]).is_file()
    # A model step loads only the model's outputs, not the intermediate rasters.
    assert not context.layersToLoadOnCompletion()
