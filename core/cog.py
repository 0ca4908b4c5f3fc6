"""Finished GeoTIFF products rewritten as cloud-optimised GeoTIFFs by GDAL's COG driver (issue 21).

The COG layout (tiled, overviews inside, every IFD before the pixel data) needs the whole file
known in advance, so it is a copy of the finished product, not a way of writing chunks: the
product's own overviews are reused (``OVERVIEWS=AUTO``), its colour table, nodata and (through
the ``.aux.xml`` beside it) category names are kept. The copy is written under a temporary name
and replaces the product in one rename, so at any time the product is either the plain GeoTIFF
or the complete COG; a run stopped in between is finished by a re-run (see pipeline._finish).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .errors import OutputError
from .gdalprogress import cancellable
from .writer import BLOCK, _checked, creation_options

AUX = ".aux.xml"


def cog_options(dtype: str, compress: str, categorical: bool, block: int = BLOCK) -> list[str]:
    """COG driver options matching the product's GeoTIFF options (compression, predictor, block)."""
    plain = creation_options(dtype, compress, categorical, block)
    options = [f"COMPRESS={compress}", f"BLOCKSIZE={block}", "BIGTIFF=IF_SAFER", "NUM_THREADS=ALL_CPUS",
               "OVERVIEWS=AUTO", f"RESAMPLING={'NEAREST' if categorical else 'AVERAGE'}"]
    if "zstd_level" in plain:
        options.append(f"LEVEL={plain['zstd_level']}")
    if "predictor" in plain:
        options.append("PREDICTOR=FLOATING_POINT" if plain["predictor"] == 3 else "PREDICTOR=STANDARD")
    return options


def to_cog(path: Path, compress: str, categorical: bool, check: Callable[[], None] = lambda: None) -> Path:
    """Replace the GeoTIFF ``path`` by a COG of the same pixels; returns ``path``."""
    from osgeo import gdal

    path = Path(path)
    tmp = path.with_name(f".{path.name}.cog.tmp")
    for stale in (tmp, Path(str(tmp) + AUX)):  # of an earlier, stopped conversion
        stale.unlink(missing_ok=True)
    check()
    source = _checked(path, lambda: gdal.OpenEx(str(path), gdal.OF_RASTER | gdal.OF_READONLY))
    if source is None:
        raise OutputError(f"cannot open {path} to make a cloud-optimised GeoTIFF")
    band = source.GetRasterBand(1)
    dtype = "uint8" if band.DataType == gdal.GDT_Byte else "float32"
    block = band.GetBlockSize()[0]

    progress = cancellable(check)

    options = cog_options(dtype, compress, categorical, block)
    try:
        copy = _checked(tmp, lambda: gdal.GetDriverByName("COG").CreateCopy(str(tmp), source, 0, options,
                                                                             callback=progress))
        check()
        if copy is None:
            raise OutputError(f"cannot write a cloud-optimised copy of {path}")
        copy = None  # closed: the file is complete
        del band
        source = None
        aux = Path(str(tmp) + AUX)
        if aux.exists():  # category names: beside the COG, under the product's name
            os.replace(aux, Path(str(path) + AUX))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        Path(str(tmp) + AUX).unlink(missing_ok=True)
        raise
    return path


def is_cog(path: Path) -> tuple[bool, list[str]]:
    """GDAL's own COG check (``osgeo_utils.samples.validate_cloud_optimized_geotiff``): ok and the errors."""
    from osgeo_utils.samples import validate_cloud_optimized_geotiff as validator

    try:
        _, errors, _ = validator.validate(str(path), full_check=True)
    except validator.ValidateCloudOptimizedGeoTIFFException as exc:
        return False, [str(exc)]
    return not errors, list(errors)
