"""Styling helpers on tiny hand-made rasters (no engine run): renderers, .qml sidecars, layer-tree grouping."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from qgis.core import QgsLayerTreeGroup, QgsProject, QgsRasterLayer

from s2seg.core.nomenclature import BIGEARTHNET19
from s2seg.s2seg_plugin.styling import (
    PRODUCT_ORDER,
    RANK_PROPERTY,
    Legend,
    make_styler,
    move_into_group,
    style_layer,
    write_qml_sidecars,
)

from rasters import write_raster

LEGEND = Legend(tuple(c.name for c in BIGEARTHNET19), tuple(c.colour for c in BIGEARTHNET19))


def test_legend_from_card_and_entropy_bound():
    from s2seg.core.models import available_cards

    legend = Legend.from_card(available_cards()["builtin"])
    assert legend == LEGEND
    assert legend.max_entropy == pytest.approx(math.log2(19))


@pytest.mark.parametrize("product, maximum, first_colour", [
    ("maxprob", 1.0, "#d7191c"), ("gap", 1.0, "#d7191c"), ("entropy", math.log2(19), "#1a9641"),
])
def test_confidence_ramps_have_fixed_bounds_and_red_means_doubt(tmp_path, product, maximum, first_colour):
    layer = QgsRasterLayer(str(write_raster(tmp_path / f"x_{product}.tif")), product)
    assert style_layer(layer, product, LEGEND)
    renderer = layer.renderer()
    assert renderer.type() == "singlebandpseudocolor"
    assert (renderer.classificationMin(), renderer.classificationMax()) == pytest.approx((0.0, maximum))
    items = renderer.shader().rasterShaderFunction().colorRampItemList()
    assert items[0].color.name() == first_colour  # low maxprob/gap red; low entropy green
    assert items[0].value == pytest.approx(0.0) and items[-1].value == pytest.approx(maximum)


def test_class_renderer_and_qml_sidecars(tmp_path):
    class_tif = tmp_path / "T_class.tif"
    write_raster(class_tif, gdal.GDT_Byte)
    probs_tif = write_raster(tmp_path / "T_probs.tif", bands=3)
    written = write_qml_sidecars({"class": class_tif, "probs": probs_tif, "unknown": class_tif}, LEGEND)
    assert set(written) == {"class", "probs"}
    assert written["class"] == tmp_path / "T_class.qml"
    reopened = QgsRasterLayer(str(class_tif), "c")
    assert reopened.renderer().type() == "paletted"
    assert [(c.value, c.label) for c in reopened.renderer().classes()] == [(c.index, c.name) for c in BIGEARTHNET19]
    probs = QgsRasterLayer(str(probs_tif), "p")
    assert probs.renderer().type() == "singlebandgray"
    assert probs.renderer().contrastEnhancement().maximumValue() == pytest.approx(1.0)


def test_grouping_orders_products_and_separates_runs(tmp_path, qgis_new_project):
    project = QgsProject.instance()
    results = project.layerTreeRoot().addGroup("Processing results")  # a user-set results group

    def load(product: str, run_id: str) -> QgsRasterLayer:
        layer = QgsRasterLayer(str(write_raster(tmp_path / f"{run_id}_{product}.tif")), product)
        project.addMapLayer(layer, False)
        results.addLayer(layer)
        make_styler(product, LEGEND, "T32UNU", run_id).postProcessLayer(layer, None, None)
        return layer

    for product in ("entropy", "class", "gap", "maxprob"):  # Processing loads outputs in path order
        load(product, "run1")
    load("class", "run2")

    groups = [c for c in results.children() if isinstance(c, QgsLayerTreeGroup)]
    assert [g.name() for g in groups] == ["T32UNU", "T32UNU"]
    first = [n.customProperty(RANK_PROPERTY) for n in groups[0].children()]
    assert first == [p for p in PRODUCT_ORDER if p in first] == ["maxprob", "gap", "entropy", "class"]
    assert [n.customProperty(RANK_PROPERTY) for n in groups[1].children()] == ["class"]
    assert len(project.mapLayers()) == 5  # moving nodes never drops a layer from the project
    assert not [c for c in results.children() if not isinstance(c, QgsLayerTreeGroup)]


def test_move_into_group_ignores_layers_not_in_the_tree(tmp_path, qgis_new_project):
    layer = QgsRasterLayer(str(write_raster(tmp_path / "x.tif")), "x")
    assert move_into_group(QgsProject.instance(), layer, "T", "class") is None
