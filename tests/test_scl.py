"""The L2A scene classification (SCL) and cloud/snow probabilities as categorical layers of a tile:
found by name in .SAFE, .zip, IMG_DATA and flat folders, read by nearest onto the 10 m grid."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from s2seg.core.errors import InputError
from s2seg.core.mask import SCL_TO_MASK, ChunkMasker
from s2seg.core.sample import write_sample_tile
from s2seg.core.sentinel2 import LAYER_IDS, discover

SIZE = 120


def native_scl(tile: Path) -> np.ndarray:
    path = next(p for p in Path(tile).rglob("*_SCL_20m.tif"))
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scl")
    safe = write_sample_tile(root / "safe", size=SIZE, seed=3)
    return {"safe": safe,
            "zip": write_sample_tile(root / "zip", size=SIZE, seed=3, layout="zip"),
            "flat": write_sample_tile(root / "flat", size=SIZE, seed=3, layout="flat"),
            "img_data": next(safe.glob("GRANULE/*/IMG_DATA")),
            "l1c": write_sample_tile(root / "l1c", size=SIZE, seed=3, level="L1C")}


@pytest.mark.parametrize("layout", ["safe", "zip", "flat", "img_data"])
def test_layers_found_in_every_layout_and_read_by_nearest(tiles, layout):
    bandset = discover(tiles[layout])
    expected = set(LAYER_IDS) if layout != "img_data" else {"SCL"}  # the masks are in QI_DATA, beside IMG_DATA
    assert set(bandset.layers) == expected
    scl = bandset.layers["SCL"]
    assert (scl.width, scl.resolution) == (SIZE // 2, 20)
    assert "B05" in bandset.files and "SCL" not in bandset.files  # a layer is no spectral band
    if layout == "zip":
        assert scl.path.startswith("/vsizip/")
    with ChunkMasker(bandset, "scl") as masker:
        codes = masker.read((0, SIZE), (0, SIZE))
    # nearest: each 20 m code covers its 2 × 2 10 m pixels exactly, never an interpolated code
    assert np.array_equal(codes, SCL_TO_MASK[native_scl(tiles["safe"]).repeat(2, 0).repeat(2, 1)])


def test_window_outside_the_tile_is_reflected_like_the_bands(tiles):
    bandset = discover(tiles["safe"])
    with ChunkMasker(bandset, "scl") as masker:
        inside = masker.read((0, 40), (0, 40))
        halo = masker.read((-10, 40), (-10, 40))
    assert np.array_equal(halo[10:, 10:], inside)
    assert np.array_equal(halo[:10, 10:], inside[9::-1])  # symmetric reflection, as grid.reflect_indices


def test_l1c_has_no_layers(tiles):
    assert discover(tiles["l1c"]).layers == {}


def test_layer_of_another_grid_is_refused_naming_it(tiles, tmp_path):
    tile = shutil.copytree(tiles["safe"], tmp_path / tiles["safe"].name)
    path = next(tile.rglob("*_SCL_20m.tif"))
    with rasterio.open(path) as ds:
        profile, data = ds.profile, ds.read()
    profile["transform"] = Affine(20, 0, ds.transform.c + 2000, 0, -20, ds.transform.f)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    with pytest.raises(InputError, match=r"layer SCL \(.*_SCL_20m\.tif\) covers"):
        discover(tile)


def test_layer_that_is_not_class_codes_is_refused(tiles, tmp_path):
    tile = shutil.copytree(tiles["safe"], tmp_path / tiles["safe"].name)
    path = next(tile.rglob("*_SCL_20m.tif"))
    with rasterio.open(path) as ds:
        profile, data = ds.profile, ds.read()
    profile["dtype"] = "float32"
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data.astype("float32"))
    with pytest.raises(InputError, match=r"layer SCL .*_SCL_20m\.tif\) has data type float32; expected uint8"):
        discover(tile)


def test_finest_resolution_kept(tiles, tmp_path):
    """Real L2A products also carry SCL_60m in R60m: the 20 m one is read."""
    tile = shutil.copytree(tiles["safe"], tmp_path / tiles["safe"].name)
    scl20 = next(tile.rglob("*_SCL_20m.tif"))
    with rasterio.open(scl20) as ds:
        profile = ds.profile
        t = ds.transform
    profile.update(width=SIZE // 6, height=SIZE // 6, transform=Affine(60, 0, t.c, 0, -60, t.f))
    with rasterio.open(scl20.parent.parent / "R60m" / scl20.name.replace("20m", "60m"), "w", **profile) as ds:
        ds.write(np.full((1, SIZE // 6, SIZE // 6), 9, np.uint8))
    assert discover(tile).layers["SCL"].path == str(scl20)
