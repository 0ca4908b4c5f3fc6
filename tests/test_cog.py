"""Cloud-optimised GeoTIFFs (core/cog.py), checked with GDAL's own COG validator."""
import math

import numpy as np
import pytest
from osgeo import gdal
from rasterio.crs import CRS
from rasterio.transform import from_origin

from s2seg.core.cog import is_cog, to_cog
from s2seg.core.uncertainty import CLASS_NODATA
from s2seg.core.writer import ProductWriter

SIZE = 600  # one overview level (300 px)


def _products(tmp_path):
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, (SIZE, SIZE), dtype=np.uint8)
    classes[:50] = CLASS_NODATA
    maxprob = rng.random((SIZE, SIZE), dtype=np.float32)
    maxprob[:50] = np.nan
    writer = ProductWriter(tmp_path, "T", width=SIZE, height=SIZE, crs=CRS.from_epsg(32633),
                           transform=from_origin(500000, 6000000, 10, 10), class_names=["a", "b", "c"],
                           class_colours=["#ff0000", "#00ff00", "#0000ff"], write_probs=False, block=256,
                           products=["class", "maxprob"])
    writer.write("class", classes, 0, 0)
    writer.write("maxprob", maxprob, 0, 0)
    return writer.commit(), classes, maxprob


def test_plain_products_are_not_cogs_and_converted_ones_are(tmp_path):
    paths, classes, maxprob = _products(tmp_path)
    assert set(paths) == {"class", "maxprob"}  # the selection: nothing else written
    assert not is_cog(paths["class"])[0]  # the validator can fail: the normal path's layout is not COG
    for key, path in paths.items():
        to_cog(path, "ZSTD", categorical=key == "class")
        ok, errors = is_cog(path)
        assert ok, errors
    ds = gdal.Open(str(paths["class"]))
    band = ds.GetRasterBand(1)
    assert np.array_equal(band.ReadAsArray(), classes)
    assert band.GetNoDataValue() == CLASS_NODATA
    assert band.GetColorTable().GetColorEntry(1)[:3] == (0, 255, 0)
    assert band.GetCategoryNames()[:3] == ["a", "b", "c"]
    assert band.GetOverviewCount() >= 1
    assert ds.GetMetadataItem("LAYOUT", "IMAGE_STRUCTURE") == "COG"
    assert ds.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == "ZSTD"
    mds = gdal.Open(str(paths["maxprob"]))
    m = mds.GetRasterBand(1)
    assert np.array_equal(m.ReadAsArray(), maxprob, equal_nan=True)
    assert math.isnan(m.GetNoDataValue())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_stopped_conversion_leaves_the_plain_product(tmp_path):
    paths, classes, _ = _products(tmp_path)
    before = paths["class"].read_bytes()

    def stop():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        to_cog(paths["class"], "ZSTD", categorical=True, check=stop)
    assert paths["class"].read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
