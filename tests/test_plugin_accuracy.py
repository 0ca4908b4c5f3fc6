"""``s2seg:stratifiedsample`` and ``s2seg:validate`` through Processing, and in a graphical model
(segment → sample design → assess) on the 240² session tile."""
from __future__ import annotations

import json
from pathlib import Path

import processing
import pytest
from osgeo import ogr
from qgis.core import (
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingOutputHtml,
    QgsProcessingParameterFile,
    QgsProject,
    QgsRuleBasedRenderer,
    QgsVectorLayer,
)

from s2seg.core.accuracy.config import REFERENCE_FIELD, SAMPLE_LAYER

from plugin_modeler import saved_and_reloaded


@pytest.fixture(scope="module")
def segmented(s2seg_registered, small_tile, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("acc_segment") / "out"
    processing.run("s2seg:segmenttile", {"INPUT": str(small_tile), "OUTPUT_FOLDER": str(out)})
    return out


def test_algorithms_in_the_toolbox(s2seg_provider):
    registry = QgsApplication.processingRegistry()
    for alg_id in ("s2seg:stratifiedsample", "s2seg:validate"):
        alg = registry.algorithmById(alg_id)
        assert alg is not None and alg.group() == "Accuracy assessment" and "<p>" in alg.shortHelpString()
    html = registry.algorithmById("s2seg:validate").outputDefinition("OUTPUT_HTML")
    assert isinstance(html, QgsProcessingOutputHtml)  # so the report opens in the Results Viewer


def test_design_label_assess(segmented, tmp_path):
    sample = tmp_path / "sample.gpkg"
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    design = processing.run("s2seg:stratifiedsample", {"PRODUCTS": str(segmented), "SIZE": 150, "MINIMUM": 5,
                                                   "CONFIDENCE": "gap", "THRESHOLD": 0.2, "SEED": 1,
                                                   "OUTPUT": str(sample)}, context=context)
    assert Path(design["OUTPUT"]) == sample
    layer = QgsVectorLayer(design["SAMPLE"], "sample", "ogr")
    assert layer.isValid() and layer.featureCount() == 150
    # The points are queued for loading; the file's default style shows what is left to label.
    assert design["SAMPLE"] in context.layersToLoadOnCompletion()
    rules = layer.renderer().rootRule().children()
    assert isinstance(layer.renderer(), QgsRuleBasedRenderer) and [r.label() for r in rules] == ["to label",
                                                                                                 "labelled"]
    assert layer.renderer().rootRule().children()[0].symbol().color().name() == "#ff0000"
    # Label every point with its map class (a perfect map), through the layer as a user would.
    index = layer.fields().indexOf(REFERENCE_FIELD)
    assert layer.startEditing()
    for feature in layer.getFeatures():
        layer.changeAttributeValue(feature.id(), index, feature["map_class_name"])
    assert layer.commitChanges()
    results = processing.run("s2seg:validate", {"PRODUCTS": str(segmented), "SAMPLE": str(sample),
                                              "REFERENCE_FIELD": REFERENCE_FIELD, "ESTIMATES": "memory:",
                                              "OUTPUT_HTML": str(tmp_path / "r.html"),
                                              "OUTPUT_JSON": str(tmp_path / "r.json")}, context=context)
    assert results["OVERALL_ACCURACY"] == pytest.approx(1.0)
    table = results["ESTIMATES"]  # processing.run returns the memory layer itself
    rows = list(table.getFeatures())
    assert rows and all(f["users_acc"] == pytest.approx(1.0) for f in rows)
    assert sum(f["area_ha"] for f in rows) == pytest.approx(sum(f["mapped_ha"] for f in rows))
    assert "<svg" in (tmp_path / "r.html").read_text()
    assert json.loads((tmp_path / "r.json").read_text())["n_units"] == 150


def test_assess_error_is_a_processing_exception(segmented, tmp_path):
    from qgis.core import QgsProcessingException

    sample = tmp_path / "s.gpkg"
    processing.run("s2seg:stratifiedsample", {"PRODUCTS": str(segmented), "SIZE": 30, "MINIMUM": 2,
                                          "OUTPUT": str(sample)})
    with pytest.raises(QgsProcessingException, match="no unit .* has a reference label"):
        processing.run("s2seg:validate", {"PRODUCTS": str(segmented), "SAMPLE": str(sample), "ESTIMATES": "memory:",
                                        "OUTPUT_HTML": str(tmp_path / "r.html"),
                                        "OUTPUT_JSON": str(tmp_path / "r.json")})


def test_graphical_model_segment_design_assess(s2seg_provider, small_tile, tmp_path):
    """Segment → sample design → assess (reference field = the map class: overall accuracy 1)."""
    static = QgsProcessingModelChildParameterSource.fromStaticValue
    child = QgsProcessingModelChildParameterSource.fromChildOutput
    model = QgsProcessingModelAlgorithm("Segment and assess", "s2seg tests")
    model.addModelParameter(QgsProcessingParameterFile("tile", "Tile", behavior=QgsProcessingParameterFile.Folder),
                            QgsProcessingModelParameter("tile"))
    steps = {
        "segment": ("s2seg:segmenttile", {
            "INPUT": QgsProcessingModelChildParameterSource.fromModelParameter("tile"), "MODEL": static("builtin"),
            "MODEL_FILE": static(""), "CHUNK_SIZE": static(0), "BATCH_SIZE": static(0), "DEVICE": static("auto"),
            "WRITE_PROBS": static(False), "OUTPUT_FOLDER": static(str(tmp_path / "segmented"))}),
        "design": ("s2seg:stratifiedsample", {
            "PRODUCTS": child("segment", "OUTPUT_FOLDER"), "TILE": static(""), "CONFIDENCE": static("entropy"),
            "THRESHOLD": static(1.0), "SIZE": static(80), "TARGET_SE": static(0.01), "TARGET_SE_USERS": static(0.0),
            "MINIMUM": static(3),
            "SEED": static(0), "OUTPUT": static(str(tmp_path / "sample.gpkg"))}),
        "assess": ("s2seg:validate", {
            "PRODUCTS": child("segment", "OUTPUT_FOLDER"), "SAMPLE": child("design", "OUTPUT"),
            "REFERENCE_FIELD": static("map_class"), "ESTIMATES": static("memory:"),
            "OUTPUT_JSON": static(str(tmp_path / "a.json"))}),
    }
    for child_id, (alg_id, sources) in steps.items():
        step = QgsProcessingModelChildAlgorithm(alg_id)
        step.setChildId(child_id)
        for name, source in sources.items():
            step.addParameterSources(name, [source])
        if child_id == "assess":
            output = QgsProcessingModelOutput("report", "Assessment report")
            output.setChildId("assess")
            output.setChildOutputName("OUTPUT_HTML")
            step.setModelOutputs({"report": output})
        model.addChildAlgorithm(step)
    loaded = saved_and_reloaded(model, tmp_path / "assess.model3")
    results = processing.run(loaded, {"tile": str(small_tile), "assess:report": str(tmp_path / "report.html")})
    assert results["CHILD_RESULTS"]["assess"]["OVERALL_ACCURACY"] == pytest.approx(1.0)
    assert Path(results["assess:report"]).is_file()
    ds = ogr.Open(str(tmp_path / "sample.gpkg"))
    assert ds.GetLayerByName(SAMPLE_LAYER).GetFeatureCount() == 80
