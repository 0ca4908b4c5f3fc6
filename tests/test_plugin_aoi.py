"""The QGIS area-of-interest parameters of ``s2seg:segmenttile``: an extent (with its CRS, as the
canvas or a layer gives it) and a polygon layer, from a file or from memory."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import processing
import pytest
import rasterio
from qgis.core import QgsFeature, QgsGeometry, QgsProcessingException, QgsVectorLayer

from s2seg.core.sample import ORIGIN

ALG_ID = "s2seg:segmenttile"
LEFT, TOP = ORIGIN


def classes(results) -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(results["CLASS"]) as ds:
        return ds.read(1), ds.transform


@pytest.fixture(scope="module")
def whole(s2seg_registered, small_tile: Path, tmp_path_factory) -> tuple[np.ndarray, rasterio.Affine]:
    out = tmp_path_factory.mktemp("whole")
    return classes(processing.run(ALG_ID, {"INPUT": str(small_tile), "DEVICE": "cpu", "CLOUD_MASK": "none", "OUTPUT_FOLDER": str(out)}))


def test_an_extent_with_its_crs_gives_the_crop_of_the_whole_tile_run(s2seg_registered, small_tile, whole, tmp_path):
    # QGIS's extent string: xmin,xmax,ymin,ymax [CRS]
    extent = f"{LEFT + 405},{LEFT + 1195},{TOP - 1500},{TOP - 610} [EPSG:32632]"
    part, transform = classes(processing.run(ALG_ID, {"INPUT": str(small_tile), "EXTENT": extent, "DEVICE": "cpu", "CLOUD_MASK": "none",
                                                      "OUTPUT_FOLDER": str(tmp_path)}))
    assert part.shape == (89, 80)  # rows 61–149 (y 610 and 1500 m are pixel edges), cols 40–119 (snapped outward)
    assert transform == whole[1] * rasterio.Affine.translation(40, 61)
    assert np.array_equal(part, whole[0][61:150, 40:120])


def _triangle_layer() -> QgsVectorLayer:
    layer = QgsVectorLayer("Polygon?crs=EPSG:32632", "fields", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromWkt(
        f"POLYGON (({LEFT + 300} {TOP - 300}, {LEFT + 2000} {TOP - 300}, {LEFT + 300} {TOP - 2000}, {LEFT + 300} {TOP - 300}))"))
    layer.dataProvider().addFeatures([feature])
    return layer


def test_a_polygon_layer_in_memory_masks_the_pixels_outside_it(s2seg_registered, small_tile, whole, tmp_path):
    part, transform = classes(processing.run(ALG_ID, {"INPUT": str(small_tile), "MASK": _triangle_layer(),
                                                      "DEVICE": "cpu", "CLOUD_MASK": "none", "OUTPUT_FOLDER": str(tmp_path)}))
    assert part.shape == (170, 170) and transform == whole[1] * rasterio.Affine.translation(30, 30)
    rows, cols = np.mgrid[0:170, 0:170]
    inside = rows + cols < 169  # pixel centres below the hypotenuse (those on it, r + c = 169, go either way)
    assert (part[inside] != 255).all() and (part[rows + cols > 169] == 255).all()
    assert np.array_equal(part[inside], whole[0][30:200, 30:200][inside])


def test_a_polygon_file_layer_is_read_from_its_source(s2seg_registered, small_tile, tmp_path):
    from qgis.core import QgsCoordinateTransformContext, QgsVectorFileWriter

    path = tmp_path / "aoi.gpkg"
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName, options.layerName = "GPKG", "parcels"
    QgsVectorFileWriter.writeAsVectorFormatV3(_triangle_layer(), str(path), QgsCoordinateTransformContext(), options)
    layer = QgsVectorLayer(f"{path}|layername=parcels", "parcels", "ogr")
    assert layer.isValid()
    part, _ = classes(processing.run(ALG_ID, {"INPUT": str(small_tile), "MASK": layer, "DEVICE": "cpu", "CLOUD_MASK": "none",
                                              "OUTPUT_FOLDER": str(tmp_path / "out")}))
    assert part.shape == (170, 170) and (part[169, 169] == 255) and part[0, 0] != 255


def test_an_extent_and_polygons_together_or_an_extent_outside_the_tile_are_refused(s2seg_registered, small_tile,
                                                                                     tmp_path):
    extent = f"{LEFT + 405},{LEFT + 1195},{TOP - 1500},{TOP - 610} [EPSG:32632]"
    with pytest.raises(QgsProcessingException, match="either an area of interest extent or polygons"):
        processing.run(ALG_ID, {"INPUT": str(small_tile), "EXTENT": extent, "MASK": _triangle_layer(),
                                "OUTPUT_FOLDER": str(tmp_path)})
    with pytest.raises(QgsProcessingException, match="outside the tile"):
        processing.run(ALG_ID, {"INPUT": str(small_tile), "EXTENT": "0,10,0,10 [EPSG:32632]",
                                "OUTPUT_FOLDER": str(tmp_path)})


def test_a_stacked_raster_picked_as_the_tile_is_read_as_a_stack(s2seg_registered, small_tile, tmp_path):
    """The file picker maps a band file to its folder; a multi-band file is the tile itself."""
    from s2seg.algorithms.segment_tile import tile_path

    band = next(p for p in small_tile.rglob("*_B02_10m.tif"))
    with rasterio.open(band) as ds:
        profile, data = ds.profile, ds.read(1)
    stack = tmp_path / "gee.tif"
    with rasterio.open(stack, "w", **{**profile, "count": 2}) as ds:
        ds.write(np.stack([data, data]))
    assert tile_path(str(band)) == str(band.parent)
    assert tile_path(str(stack)) == str(stack)


# --- the batch algorithm: the same parameters, passed to every tile --------------------------------
@pytest.fixture(scope="module")
def scheduler() -> str:
    """An existing Dask cluster (workers as threads of this process: instant start)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=50) as cluster:
        yield cluster.scheduler_address


def batch_classes(out: Path, **parameters) -> tuple[np.ndarray, rasterio.Affine]:
    results = processing.run("s2seg:segmenttiles", {**parameters, "DEVICE": "cpu", "OUTPUT_FOLDER": str(out)})
    assert (results["OK"], results["FAILED"]) == (1, 0)
    (path,) = out.rglob("*_class.tif")
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform


@pytest.mark.parametrize("aoi", ["extent", "polygons"])
def test_the_batch_algorithm_takes_the_same_extent_and_polygons(s2seg_registered, small_tile, scheduler, tmp_path,
                                                                aoi):
    given = ({"EXTENT": f"{LEFT + 405},{LEFT + 1195},{TOP - 1500},{TOP - 610} [EPSG:32632]"} if aoi == "extent"
             else {"MASK": _triangle_layer()})
    single, single_transform = classes(processing.run(ALG_ID, {"INPUT": str(small_tile), **given, "DEVICE": "cpu",
                                                               "CLOUD_MASK": "none",  # the batch's engine default
                                                               "OUTPUT_FOLDER": str(tmp_path / "single")}))
    part, transform = batch_classes(tmp_path / "batch", INPUTS=str(small_tile), SCHEDULER=scheduler, **given)
    assert part.shape == single.shape == ((89, 80) if aoi == "extent" else (170, 170))
    assert transform == single_transform and np.array_equal(part, single)


def test_a_batch_tile_outside_the_area_of_interest_fails_naming_it(s2seg_registered, small_tile, scheduler, tmp_path):
    with pytest.raises(QgsProcessingException, match="Every tile failed.*outside the tile"):
        processing.run("s2seg:segmenttiles", {"INPUTS": str(small_tile), "EXTENT": "0,10,0,10 [EPSG:32632]",
                                              "SCHEDULER": scheduler, "OUTPUT_FOLDER": str(tmp_path)})
