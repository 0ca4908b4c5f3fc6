"""``s2seg:segmenttile``'s output parameters (products, polygons, MMU, COG) through Processing, and the
polygons loading into QGIS in the class colours."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import processing
import pytest
from pytest_qgis.utils import wait_until
from qgis.core import (
    QgsApplication,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProject,
    QgsVectorLayer,
)

from s2seg.core.cog import is_cog
from s2seg.core.nomenclature import BIGEARTHNET19

ALG_ID = "s2seg:segmenttile"
# no cloud mask: its holes would leave polygons below the MMU with nothing to join (see test_plugin_mask)
PARAMETERS = {"PRODUCTS": ["class", "gap"], "VECTOR": True, "COG": True, "MMU": 0.2, "CLOUD_MASK": "none"}


@pytest.fixture(scope="module")
def run(s2seg_registered, small_tile: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("outputs") / "out"
    results = processing.run(ALG_ID, {"INPUT": str(small_tile), "OUTPUT_FOLDER": str(out), **PARAMETERS})
    return {"results": results, "out": out}


def test_only_the_chosen_rasters_as_cogs_and_the_polygons(run):
    results, out = run["results"], run["out"]
    assert Path(results["CLASS"]).is_file() and Path(results["GAP"]).is_file()
    assert "MAXPROB" not in results and "ENTROPY" not in results
    assert sorted(p.name.rsplit("_", 1)[1] for p in out.glob("*.tif")) == ["class.tif", "gap.tif"]
    for key in ("CLASS", "GAP"):
        ok, errors = is_cog(Path(results[key]))
        assert ok, errors
    assert Path(results["POLYGONS"]).suffix == ".gpkg" and Path(results["POLYGONS"]).is_file()
    assert list(out.glob("*_class.qml")) and list(out.glob("*_class.sld"))


def test_the_polygons_open_in_the_class_colours(run):
    layer = QgsVectorLayer(f"{run['results']['POLYGONS']}|layername=landcover", "polygons", "ogr")
    assert layer.isValid() and layer.featureCount() > 0
    renderer = layer.renderer()
    assert renderer.type() == "categorizedSymbol" and renderer.classAttribute() == "class_id"
    assert [c.label() for c in renderer.categories()] == [c.name for c in BIGEARTHNET19]
    assert {f["class_name"] for f in layer.getFeatures()} <= {c.name for c in BIGEARTHNET19}
    assert min(f["area_ha"] for f in layer.getFeatures()) >= 0.2 - 1e-9 or layer.featureCount() == 1


def test_the_dialog_loads_the_polygons_styled(s2seg_provider, small_tile, tmp_path, qgis_new_project):
    from processing.gui.Postprocessing import handleAlgorithmResults

    alg = QgsApplication.processingRegistry().createAlgorithmById(ALG_ID)
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = QgsProcessingFeedback()
    context.setFeedback(feedback)
    task = QgsProcessingAlgRunnerTask(alg, {"INPUT": str(small_tile), "OUTPUT_FOLDER": str(tmp_path),
                                            "PRODUCTS": ["class"], "VECTOR": True}, context, feedback)
    done: dict[str, Any] = {}
    task.executed.connect(lambda ok, results: done.update(ok=ok, results=results))
    QgsApplication.taskManager().addTask(task)
    assert wait_until(lambda: "ok" in done, timeout_milliseconds=120_000)
    assert done["ok"], done
    del alg, task
    assert handleAlgorithmResults(QgsApplication.processingRegistry().algorithmById(ALG_ID), context, feedback,
                                  False, {})
    layers = [layer for layer in QgsProject.instance().mapLayers().values() if isinstance(layer, QgsVectorLayer)]
    (polygons,) = layers
    assert polygons.renderer().type() == "categorizedSymbol"
    assert polygons.source().startswith(done["results"]["POLYGONS"])
