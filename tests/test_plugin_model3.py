"""The committed graphical model ``tests/data/segment_then_stats.model3`` — Segment Sentinel-2 tile →
core "Raster layer statistics" on its ENTROPY output — loads from file and runs through Processing,
as in QGIS's Graphical Modeler, and from ``qgis_process`` as a model file.

Regenerate the model with ``tests/data/make_segment_then_stats.py``.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import processing
import pytest
from osgeo import gdal
from qgis.core import (
    QgsProcessingContext,
    QgsProcessingModelAlgorithm,
    QgsProject,
)

from s2seg.core.nomenclature import BIGEARTHNET19

from plugin_feedback import RecordingFeedback

MODEL_FILE = Path(__file__).resolve().parent / "data" / "segment_then_stats.model3"
MAX_ENTROPY = math.log2(len(BIGEARTHNET19))  # bits, all 19 classes equally likely
FOLDER_OUTPUT = "segment:segmentation"  # model destination parameters are named <child id>:<output name>
STATS_OUTPUT = "entropy_stats:entropy_statistics"


def load_model() -> QgsProcessingModelAlgorithm:
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(MODEL_FILE)), f"cannot read {MODEL_FILE}"
    return model


def entropy_values(path: str) -> np.ndarray:
    ds = gdal.Open(path)
    data = ds.GetRasterBand(1).ReadAsArray().astype(np.float64)
    return data[np.isfinite(data)]


@pytest.fixture(scope="module")
def model_run(s2seg_registered, small_tile: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of the model file on the small sample tile, 120 px chunks."""
    tmp = tmp_path_factory.mktemp("model3")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = RecordingFeedback()
    params = {"tile": str(small_tile), "chunk_size": 120, FOLDER_OUTPUT: str(tmp / "segmented"),
              STATS_OUTPUT: str(tmp / "entropy_stats.html")}
    results = processing.run(load_model(), params, context=context, feedback=feedback)
    return {"results": results, "params": params, "context": context, "feedback": feedback}


def test_model_file_loads_and_validates(s2seg_registered):
    model = load_model()
    ok, errors = model.validate()
    assert ok, errors
    assert set(model.childAlgorithms()) == {"segment", "entropy_stats"}
    segment, stats = model.childAlgorithm("segment"), model.childAlgorithm("entropy_stats")
    assert segment.algorithm() is not None and segment.algorithm().id() == "s2seg:segmenttile"
    assert stats.algorithm() is not None and stats.algorithm().id() == "native:rasterlayerstatistics"
    (source,) = stats.parameterSources()["INPUT"]
    assert (source.outputChildId(), source.outputName()) == ("segment", "ENTROPY")
    assert {p.name() for p in model.parameterDefinitions()} == {"tile", "chunk_size", FOLDER_OUTPUT, STATS_OUTPUT}


def test_model_chains_entropy_into_raster_statistics(model_run):
    results, params = model_run["results"], model_run["results"]["CHILD_RESULTS"]
    segment, stats = params["segment"], params["entropy_stats"]
    # The segmentation went where the model output asked, and the statistics step read its ENTROPY raster.
    out = Path(model_run["params"][FOLDER_OUTPUT])
    assert results[FOLDER_OUTPUT] == str(out)
    entropy_path = Path(segment["ENTROPY"])
    assert entropy_path.parent == out and entropy_path.name.endswith("_entropy.tif")
    # Entropy in bits: 0 (certain) … log2(19) (no idea).
    assert 0.0 <= stats["MIN"] <= stats["MEAN"] <= stats["MAX"] <= MAX_ENTROPY + 1e-5
    assert stats["MAX"] > 0.0 and stats["STD_DEV"] >= 0.0
    # The chained numbers are those of the raster itself (NaN nodata excluded).
    values = entropy_values(str(entropy_path))
    assert values.size > 0
    assert stats["MEAN"] == pytest.approx(values.mean(), rel=1e-4, abs=1e-5)
    assert stats["MAX"] == pytest.approx(values.max(), rel=1e-5)
    assert stats["MIN"] == pytest.approx(values.min(), abs=1e-5)


def test_model_outputs_and_parameters_reach_the_steps(model_run):
    results = model_run["results"]
    html = Path(results[STATS_OUTPUT])
    assert html == Path(model_run["params"][STATS_OUTPUT]) and html.is_file()
    assert "Mean" in html.read_text(encoding="utf-8", errors="replace")
    log = "\n".join(model_run["feedback"].infos)
    assert re.search(r"chunk 1/[2-9]", log), log  # the model's chunk_size (120 px on a 240 px tile) was used
    report = json.loads(next(Path(results[FOLDER_OUTPUT]).glob("*_report.json")).read_text())
    assert report["classes"]
    # A model step loads only the model's outputs; the intermediate rasters stay on disk.
    assert not model_run["context"].layersToLoadOnCompletion()


def test_qgis_process_runs_the_model_file(qgis_process, small_tile, tmp_path):
    """``qgis_process run <file>.model3`` with the plugin from this checkout, as a command-line user would."""
    # qgis_process loads plugins by folder name, and the checkout may have any name: link it as s2seg.
    plugin_path = tmp_path / "plugins"
    plugin_path.mkdir()
    (plugin_path / "s2seg").symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
    qgis_process("plugins", "enable", "s2seg", plugin_path=plugin_path, check=True)
    out, html = tmp_path / "segmented", tmp_path / "stats.html"
    proc = qgis_process("--json", "run", str(MODEL_FILE), "--", f"tile={small_tile}", "chunk_size=120",
                        f"{FOLDER_OUTPUT}={out}", f"{STATS_OUTPUT}={html}", plugin_path=plugin_path, check=True)
    results = json.loads(proc.stdout)["results"]
    assert Path(results[FOLDER_OUTPUT]) == out and any(out.glob("*_entropy.tif"))
    assert Path(results[STATS_OUTPUT]) == html and html.is_file()
