"""``s2seg:segmenttile``'s "Mask clouds, shadows and snow" parameter through Processing: the mask
raster as an output, styled in QGIS (clear transparent), the masked share in the HTML report."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import processing
import pytest
import rasterio
from qgis.core import (
    QgsApplication,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsRasterLayer,
)

from s2seg.core.config import MASK_MODES
from s2seg.core.scl import MASK_CLASSES, MASK_COLOURS

ALG_ID = "s2seg:segmenttile"


@pytest.fixture(scope="module")
def run(s2seg_registered, small_tile: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("mask") / "out"
    # the default mask (auto): the L2A sample tile has a scene classification
    return processing.run(ALG_ID, {"INPUT": str(small_tile), "OUTPUT_FOLDER": str(out), "PRODUCTS": ["class"],
                                   "DEVICE": "cpu"})


def test_parameters(s2seg_provider):
    alg = QgsApplication.processingRegistry().createAlgorithmById(ALG_ID)
    mask = alg.parameterDefinition("CLOUD_MASK")
    assert isinstance(mask, QgsProcessingParameterEnum) and mask.usesStaticStrings()
    assert mask.description() == "Mask clouds, shadows and snow"
    assert mask.options() == list(MASK_MODES) and mask.defaultValue() == "auto"
    assert mask.flags() & QgsProcessingParameterDefinition.FlagOptional  # models saved without it stay valid
    keep = alg.parameterDefinition("KEEP_MASKED")
    assert isinstance(keep, QgsProcessingParameterBoolean) and keep.defaultValue() is False
    assert keep.flags() & QgsProcessingParameterDefinition.FlagAdvanced
    assert "mask" not in alg.parameterDefinition("PRODUCTS").options()  # it follows CLOUD_MASK
    assert "CLOUD_MASK_LAYER" in [o.name() for o in alg.outputDefinitions()]
    assert "…_mask.tif" in alg.shortHelpString()


def test_default_run_writes_the_mask_and_hides_the_land_cover(run):
    with rasterio.open(run["CLOUD_MASK_LAYER"]) as ds:
        codes = ds.read(1)
    with rasterio.open(run["CLASS"]) as ds:
        classes = ds.read(1)
    hidden = np.isin(codes, (1, 3, 4, 255))
    assert hidden.any() and (codes == 0).any()
    assert np.array_equal(classes == 255, hidden)
    html = Path(run["REPORT"]).read_text(encoding="utf-8")
    assert "Masked (cloud, shadow, snow)" in html and "from scl" in html


def test_mask_layer_is_styled_with_clear_transparent(run):
    from s2seg.s2seg_plugin.styling import Legend, style_layer

    layer = QgsRasterLayer(run["CLOUD_MASK_LAYER"], "mask")
    assert style_layer(layer, "mask", Legend((), ()))
    renderer = layer.renderer()
    assert renderer.type() == "paletted"
    assert [(c.value, c.label, c.color.name()) for c in renderer.classes()] == [
        (code, name, colour) for code, (name, colour) in enumerate(zip(MASK_CLASSES, MASK_COLOURS)) if code]
    qml = Path(run["CLOUD_MASK_LAYER"]).with_suffix(".qml")
    assert qml.is_file() and "cloud shadow" in qml.read_text(encoding="utf-8")


def test_none_writes_no_mask(s2seg_registered, small_tile, tmp_path):
    results = processing.run(ALG_ID, {"INPUT": str(small_tile), "OUTPUT_FOLDER": str(tmp_path),
                                      "PRODUCTS": ["class"], "DEVICE": "cpu", "CLOUD_MASK": "none"})
    assert "CLOUD_MASK_LAYER" not in results and not list(tmp_path.glob("*_mask.tif"))
