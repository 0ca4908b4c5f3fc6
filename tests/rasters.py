"""Small raster helpers shared by the tests: read a run's products, write a tiny georeferenced raster."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from osgeo import gdal, osr

from s2seg.core.products import DEFAULT_PRODUCTS


def read_products(result, keys=DEFAULT_PRODUCTS) -> dict[str, np.ndarray]:
    """Band 1 of each of ``keys`` among a :class:`SegmentResult`'s products."""
    out = {}
    for key in keys:
        with rasterio.open(result.products[key]) as ds:
            out[key] = ds.read(1)
    return out


def write_raster(path: Path, dtype: int = gdal.GDT_Float32, bands: int = 1) -> Path:
    """An 8 × 8 px GeoTIFF in UTM 32N (values 0…1 in every band), as styling tests need one."""
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 8, 8, bands, dtype)
    ds.SetGeoTransform((500000, 10, 0, 5300000, 0, -10))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    ds.SetProjection(srs.ExportToWkt())
    for b in range(1, bands + 1):
        ds.GetRasterBand(b).WriteArray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))
    ds.FlushCache()
    ds = None
    return path
