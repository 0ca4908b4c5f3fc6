"""The input parameters of ``s2seg:segmenttile``: a raster layer loaded in QGIS as the stacked raster,
and the band list, scale and offset parameters (the CLI's ``--bands``, ``--scale``, ``--offset``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import processing
import pytest
import rasterio
from qgis.core import QgsProcessingException, QgsProject, QgsRasterLayer
from rasterio.enums import Resampling

from plugin_feedback import RecordingFeedback
from s2seg.core.models.builtin_card import BUILTIN_CARD

ALG_ID = "s2seg:segmenttile"
BUILTIN_BANDS = BUILTIN_CARD.bands


def classes(results) -> np.ndarray:
    with rasterio.open(results["CLASS"]) as ds:
        return ds.read(1)


def write_stack(path: Path, small_tile: Path, offset: int, descriptions: tuple[str, ...] = ()) -> Path:
    """The built-in model's bands of ``small_tile`` at 10 m (20 m bands repeated), DN + ``offset``
    (0 stays 0: nodata), as a uint16 GeoTIFF with ``descriptions``."""
    layers, profile = [], None
    for band_id in BUILTIN_BANDS:
        with rasterio.open(next(small_tile.rglob(f"*_{band_id}_*.tif"))) as ds:
            data = ds.read(1, out_shape=(240, 240), resampling=Resampling.nearest).astype(np.int32)
            layers.append(np.where(data > 0, data + offset, 0))
            profile = ds.profile if ds.width == 240 else profile
    with rasterio.open(path, "w", **{**profile, "driver": "GTiff", "count": len(layers), "dtype": "uint16"}) as ds:
        ds.write(np.stack(layers).astype(np.uint16))
        for i, text in enumerate(descriptions):
            ds.set_band_description(i + 1, text)
    return path


@pytest.fixture(scope="module")
def raw_stack(small_tile, tmp_path_factory) -> Path:
    """The product's digital numbers as they are (its baseline 05.10 offset of +1000 DN included),
    without band descriptions or scale metadata: only a band list, a scale and an offset say how to read it."""
    return write_stack(tmp_path_factory.mktemp("stack") / "raw_dn.tif", small_tile, 0)


@pytest.fixture
def stack_layer(raw_stack):
    """The raw stack as a raster layer owned by the project, as QGIS holds it. A layer left to Python is
    destroyed at interpreter exit, after QGIS has exited, and that crashed the test process (exit 139)."""
    layer = QgsRasterLayer(str(raw_stack), "stack")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer, False)
    yield layer
    QgsProject.instance().removeMapLayer(layer.id())


@pytest.fixture(scope="module")
def described_classes(s2seg_registered, small_tile, tmp_path_factory) -> np.ndarray:
    """The same pixels as a GEE export (offset removed, bands described B3, B4 …) picked as a file."""
    folder = tmp_path_factory.mktemp("described")
    stack = write_stack(folder / "gee.tif", small_tile, -1000, tuple(b.replace("B0", "B") for b in BUILTIN_BANDS))
    return classes(processing.run(ALG_ID, {"INPUT": str(stack), "DEVICE": "cpu", "CLOUD_MASK": "none",
                                           "OUTPUT_FOLDER": str(folder / "out")}))


def test_a_raster_layer_with_band_list_scale_and_offset_reads_as_the_described_export(
        s2seg_registered, stack_layer, described_classes, tmp_path):
    layer = stack_layer
    feedback = RecordingFeedback()
    results = processing.run(ALG_ID, {"STACK_LAYER": layer, "BANDS": ",".join(BUILTIN_BANDS), "SCALE": 0.0001,
                                      "OFFSET": -0.1, "DEVICE": "cpu", "CLOUD_MASK": "none",
                                      "OUTPUT_FOLDER": str(tmp_path)}, feedback=feedback)
    assert np.array_equal(classes(results), described_classes)
    log = "\n".join(feedback.infos)
    assert f"bands {', '.join(BUILTIN_BANDS)} from the band list" in log, log
    assert "as given (reflectance = value × 0.0001 + -0.1)" in log, log


def test_without_the_band_list_the_undescribed_layer_is_refused(s2seg_registered, stack_layer, tmp_path):
    with pytest.raises(QgsProcessingException, match=r"cannot tell which band of stacked raster .*raw_dn.tif"):
        processing.run(ALG_ID, {"STACK_LAYER": stack_layer, "DEVICE": "cpu",
                                "OUTPUT_FOLDER": str(tmp_path)})


def test_a_tile_and_a_layer_together_or_neither_are_refused(s2seg_registered, small_tile, stack_layer, tmp_path):
    layer = stack_layer
    with pytest.raises(QgsProcessingException, match="either a tile .* or a stacked raster layer"):
        processing.run(ALG_ID, {"INPUT": str(small_tile), "STACK_LAYER": layer, "OUTPUT_FOLDER": str(tmp_path)})
    with pytest.raises(QgsProcessingException, match="No Sentinel-2 tile given"):
        processing.run(ALG_ID, {"OUTPUT_FOLDER": str(tmp_path)})


def test_a_layer_that_is_not_a_file_is_refused_naming_it(s2seg_registered, raw_stack, stack_layer):
    from s2seg.algorithms.segment_tile import stack_layer_path

    assert stack_layer_path(stack_layer) == str(raw_stack)

    class Unsaved:  # a layer of another provider (WMS, a database …)
        def source(self) -> str:
            return "url=https://example.org/wms&layers=s2"

        def providerType(self) -> str:  # noqa: N802 - QGIS API
            return "wms"

        def name(self) -> str:
            return "basemap"

    with pytest.raises(QgsProcessingException, match=r"the raster layer 'basemap' .* is not a raster file s2seg can "
                                                     r"read \(provider wms\): save it as a GeoTIFF"):
        stack_layer_path(Unsaved())
