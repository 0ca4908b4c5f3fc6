"""QGIS-free style files (core/styles.py): the .qml files load in QGIS with the right renderer, the
.sld files carry the same colours, and the plugin's renderers use the same ramps."""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from qgis.core import (
    QgsFeature,
    QgsRenderContext,
    QgsPalettedRasterRenderer,
    QgsRasterLayer,
    QgsSingleBandGrayRenderer,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)

from s2seg.core.nomenclature import BIGEARTHNET19_COLOURS, BIGEARTHNET19_NAMES
from s2seg.core.styles import RED_TO_GREEN, product_ramp, raster_sld, vector_qml, write_style_sidecars
from s2seg.s2seg_plugin.styling import Legend, product_renderer

from rasters import write_raster

NAMES, COLOURS = list(BIGEARTHNET19_NAMES), list(BIGEARTHNET19_COLOURS)
SLD = "{http://www.opengis.net/sld}"


@pytest.fixture()
def styled(tmp_path):
    products = {"class": write_raster(tmp_path / "T_class.tif", gdal.GDT_Byte), "maxprob": write_raster(tmp_path / "T_maxprob.tif"),
                "entropy": write_raster(tmp_path / "T_entropy.tif"), "gap": write_raster(tmp_path / "T_gap.tif"),
                "probs": write_raster(tmp_path / "T_probs.tif", bands=3)}
    return products, write_style_sidecars(products, NAMES, COLOURS)


def _load(raster: Path, style: Path) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(raster), raster.stem, "gdal")
    assert layer.isValid()
    message, ok = layer.loadNamedStyle(str(style))
    assert ok, message
    return layer


def test_every_product_gets_a_qml_and_sld_beside_it(styled):
    products, written = styled
    assert set(written) == {f"{p}.qml" for p in products} | {f"{p}.sld" for p in products if p != "probs"}
    for key, path in written.items():
        assert path.parent == products[key.split(".")[0]].parent and path.stem == products[key.split(".")[0]].stem


def test_the_class_qml_loads_in_qgis_as_the_class_palette(styled):
    products, written = styled
    layer = _load(products["class"], written["class.qml"])
    renderer = layer.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    classes = renderer.classes()
    assert [c.value for c in classes] == list(range(len(NAMES)))
    assert [c.label for c in classes] == NAMES
    assert [c.color.name() for c in classes] == [c.lower() for c in COLOURS]


@pytest.mark.parametrize("product", ["maxprob", "gap", "entropy"])
def test_the_confidence_qml_loads_in_qgis_as_the_shared_ramp(styled, product):
    products, written = styled
    layer = _load(products[product], written[f"{product}.qml"])
    renderer = layer.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    ramp = product_ramp(product, len(NAMES))
    assert renderer.classificationMax() == pytest.approx(math.log2(19) if product == "entropy" else 1.0)
    items = renderer.shader().rasterShaderFunction().colorRampItemList()
    assert [(round(i.value, 6), i.color.name(), i.label) for i in items] == \
        [(round(v, 6), c, label) for v, c, label in ramp.stops()]
    assert items[0].color.name() == (RED_TO_GREEN[-1] if product == "entropy" else RED_TO_GREEN[0])  # red = doubt


def test_the_probs_qml_loads_as_grey_on_the_probability_range(styled):
    products, written = styled
    layer = _load(products["probs"], written["probs.qml"])
    renderer = layer.renderer()
    assert isinstance(renderer, QgsSingleBandGrayRenderer)
    assert renderer.contrastEnhancement().maximumValue() == 1.0


def test_the_plugin_renderers_draw_the_same_ramps(styled):
    products, _ = styled
    for product in ("maxprob", "entropy"):
        layer = QgsRasterLayer(str(products[product]), product, "gdal")
        renderer = product_renderer(product, layer.dataProvider(), Legend(tuple(NAMES), tuple(COLOURS)))
        items = renderer.shader().rasterShaderFunction().colorRampItemList()
        expected = product_ramp(product, len(NAMES)).stops()
        assert [(round(i.value, 6), i.color.name()) for i in items] == [(round(v, 6), c) for v, c, _ in expected]


def test_sld_colour_maps():
    root = ET.fromstring(raster_sld("class", "T_class", NAMES, COLOURS))
    entries = root.iter(f"{SLD}ColorMapEntry")
    assert root.find(f".//{SLD}ColorMap").get("type") == "values"
    assert [(e.get("quantity"), e.get("color"), e.get("label")) for e in entries] == \
        [(str(i), c.lower(), n) for i, (n, c) in enumerate(zip(NAMES, COLOURS))]
    ramp = ET.fromstring(raster_sld("entropy", "T_entropy", NAMES, COLOURS))
    assert ramp.find(f".//{SLD}ColorMap").get("type") == "ramp"
    values = [float(e.get("quantity")) for e in ramp.iter(f"{SLD}ColorMapEntry")]
    assert values[0] == 0 and values[-1] == pytest.approx(math.log2(19)) and values == sorted(values)
    assert raster_sld("probs", "T_probs", NAMES, COLOURS) is None


def test_the_vector_qml_loads_in_qgis_as_class_categories(tmp_path):
    layer = QgsVectorLayer("Polygon?crs=EPSG:32632&field=class_id:integer", "polys", "memory")
    style = tmp_path / "v.qml"
    style.write_text(vector_qml(NAMES, COLOURS, "class_id"))
    message, ok = layer.loadNamedStyle(str(style))
    assert ok, message
    renderer = layer.renderer()
    assert renderer.type() == "categorizedSymbol" and renderer.classAttribute() == "class_id"
    categories = renderer.categories()
    assert [int(c.value()) for c in categories] == list(range(len(NAMES)))
    assert [c.label() for c in categories] == NAMES
    assert [c.symbol().color().name() for c in categories] == [c.lower() for c in COLOURS]
    # an integer class_id of a feature finds its category's colour
    feature = QgsFeature(layer.fields())
    feature.setAttribute("class_id", 3)
    context = QgsRenderContext()
    renderer.startRender(context, layer.fields())
    try:
        assert renderer.symbolForFeature(feature, context).color().name() == COLOURS[3].lower()
    finally:
        renderer.stopRender(context)
