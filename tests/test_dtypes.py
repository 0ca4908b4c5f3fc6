"""Band data types, scales and metadata offsets are checked at discovery: what the engine cannot read
as Sentinel-2 digital numbers is refused naming the band, its type and what was expected (before,
float32 reflectance and uint8 bands ran as DN into a map of one class, int16 negatives and uint32
wrapped around, and offsets of 1e30 or -70000 were applied)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from s2seg.core.errors import InputError
from s2seg.core.sample import write_sample_tile
from s2seg.core.sentinel2 import discover

N = 60


def band_folder(folder: Path, dtype: str = "uint16", values=None, band: str = "B03", scale: float | None = None) -> Path:
    """Four 10 m band files, ``band`` with ``dtype`` and ``values``, the others uint16 DN."""
    folder.mkdir()
    for name in ("B02", "B03", "B04", "B08"):
        kind = dtype if name == band else "uint16"
        data = np.full((1, N, N), 1500, dtype=kind) if name != band or values is None else np.asarray(values, dtype=kind).reshape(1, N, N)
        with rasterio.open(folder / f"T32UNU_20240612T103031_{name}.tif", "w", driver="GTiff", width=N, height=N,
                           count=1, dtype=kind, crs="EPSG:32632", transform=from_origin(600000, 5300040, 10, 10)) as ds:
            ds.write(data)
            if scale is not None and name == band:
                ds.scales = (scale,)
    return folder


@pytest.mark.parametrize(("dtype", "values", "expected"), [
    ("float32", np.full(N * N, 0.15), "has data type float32; expected uint16 digital numbers (float reflectance is "
                                      "read from a stacked raster"),
    ("uint8", np.full(N * N, 150), "has data type uint8; expected uint16 digital numbers"),
    ("uint32", np.full(N * N, 70000), "has data type uint32; expected uint16 digital numbers"),
    ("int16", np.r_[np.full(N * N - 1, 1500), -3], "has data type int16 with negative values (minimum -3); "
                                                     "expected uint16 digital numbers"),
])
def test_a_band_of_an_unsupported_type_is_refused_naming_band_type_and_expectation(tmp_path, dtype, values, expected):
    folder = band_folder(tmp_path / "tile", dtype, values)
    with pytest.raises(InputError, match=r"^band B03 \(.*_B03\.tif\) " + re.escape(expected)):
        discover(folder)


def test_int16_without_negatives_is_read_as_digital_numbers(tmp_path):
    folder = band_folder(tmp_path / "tile", "int16", np.full(N * N, 1500))
    assert discover(folder).files["B03"].itemsize == 2


def test_a_scaled_band_file_is_refused(tmp_path):
    folder = band_folder(tmp_path / "tile", scale=0.0001)
    with pytest.raises(InputError, match=r"band B03 .* declares a scale of 0.0001 and an offset of 0"):
        discover(folder)


@pytest.mark.parametrize("value", ["1e30", "-70000", "nan", "500"])
def test_implausible_metadata_offsets_are_refused(tmp_path, value):
    tile = write_sample_tile(tmp_path / "tile", size=60, level="L2A", layout="safe")
    metadata = tile / "MTD_MSIL2A.xml"
    text = metadata.read_text()
    assert '<BOA_ADD_OFFSET band_id="1">-1000</BOA_ADD_OFFSET>' in text
    metadata.write_text(text.replace('<BOA_ADD_OFFSET band_id="1">-1000</BOA_ADD_OFFSET>',
                                     f'<BOA_ADD_OFFSET band_id="1">{value}</BOA_ADD_OFFSET>'))
    with pytest.raises(InputError, match=rf"MTD_MSIL2A.xml: BOA_ADD_OFFSET of band B02 is {value}; expected a value "
                                         r"from -2000 to 0"):
        discover(tile)
