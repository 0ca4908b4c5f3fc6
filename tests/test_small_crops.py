"""Tiles and crops smaller than one model patch run with any model (they were refused before).

The grid puts such a crop under patches that reach past it on both sides, read by reflection:
the products have the crop's size and still do not depend on the chunk size.
"""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from doubles import ConvDenseModel, SpectralPatchModel

from s2seg.core.config import EngineConfig
from s2seg.core.models import csmask
from s2seg.core.pipeline import segment
from s2seg.core.products import DEFAULT_PRODUCTS
from s2seg.core.sample import CLASSES, truth_window, write_sample_tile

from rasters import read_products

PRODUCTS = DEFAULT_PRODUCTS


def assert_same_products(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert np.array_equal(a["class"], b["class"])
    for key in PRODUCTS[1:]:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5, equal_nan=True)


@pytest.mark.parametrize(("size", "make_model", "chunk_sizes"), [
    (100, lambda: SpectralPatchModel(patch_size=120), (60, 120)),  # 120 px patches at 10 m on a 100² crop
    (720, lambda: ConvDenseModel(resolution=30, patch_size=256), (384, 768)),  # 256 px at 30 m = 768 px on 720²
], ids=["100px-crop-120px-patch", "720px-tile-256px-30m-patch"])
def test_a_crop_smaller_than_one_patch_runs_and_does_not_depend_on_the_chunk_size(tmp_path, size, make_model, chunk_sizes):
    tile = write_sample_tile(tmp_path / "tile", size=size, seed=3, level="L2A")
    runs = []
    for chunk_size in chunk_sizes:
        result = segment(tile, tmp_path / str(chunk_size), model=make_model(), config=EngineConfig(chunk_size=chunk_size))
        assert result.n_chunks == (-(-size // chunk_size)) ** 2
        products = read_products(result)
        assert all(values.shape == (size, size) for values in products.values())
        assert (products["class"] != 255).all() and np.isfinite(products["maxprob"]).all()  # no nodata: the crop is full
        runs.append(products)
    assert_same_products(runs[0], runs[1])


@pytest.mark.slow
@pytest.mark.skipif(csmask.package_dir() is None, reason="ukis-csmask is not installed")
def test_the_cloud_unet_runs_on_a_720px_tile(tmp_path):
    """The pretrained 256 px, 30 m U-Net (768 px at 10 m) on a 720² L2A tile: refused before, now one
    chunk whose 5 × 5 patches reach past the tile; products on the tile's 10 m grid."""
    tile = write_sample_tile(tmp_path / "tile", size=720, seed=3, level="L2A")
    result = segment(tile, tmp_path / "out", model="s2-cloud-l2a", config=EngineConfig(device="cpu"))
    products = read_products(result)
    assert result.n_chunks == 1
    assert all(values.shape == (720, 720) for values in products.values())
    assert np.isfinite(products["entropy"]).all() and (products["maxprob"] >= 1 / 3 - 1e-6).all()
    classes, cloud = products["class"], truth_window(720, seed=3) == CLASSES.index("cloud")
    assert 0.03 < cloud.mean() < 0.3  # the scene has clouds to find
    assert (classes[cloud] == 1).mean() > 0.9 and (classes[~cloud] == 0).mean() > 0.7  # and the U-Net finds them
