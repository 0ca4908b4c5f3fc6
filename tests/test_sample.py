"""Tests of the synthetic Sentinel-2 tile writer (s2seg.core.sample), on small tiles."""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from s2seg.core import sample
from s2seg.core.bands import BANDS
from s2seg.core.errors import ConfigError, OutputError
from s2seg.core.sample import (BARE, CLOUD, CROPS, FOREST, URBAN, WATER, truth_window,
                               write_sample_tile)

SIZE = 250  # not a multiple of 6: exercises the ceil() of the 20 m / 60 m grids
STEM = "T32UNU_20240612T103031"
L2A_SAFE = "S2B_MSIL2A_20240612T103031_N0510_R108_T32UNU_20240612T142331.SAFE"
L1C_SAFE = "S2B_MSIL1C_20240612T103031_N0510_R108_T32UNU_20240612T124017.SAFE"
L2A_GRANULE = "GRANULE/L2A_T32UNU_A046789_20240612T103524/IMG_DATA"
L1C_GRANULE = "GRANULE/L1C_T32UNU_A046789_20240612T103524/IMG_DATA"
L2A_BANDS = [b for b in BANDS if b.id != "B10"]


def l2a_band_path(tile: Path, band_id: str, ext: str = "tif") -> Path:
    b = next(b for b in BANDS if b.id == band_id)
    return tile / L2A_GRANULE / f"R{b.resolution}m" / f"{STEM}_{b.id}_{b.resolution}m.{ext}"


def read(path: Path | str) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def reflectance(tile: Path, band_id: str) -> np.ndarray:
    """L2A band as BOA reflectance (baseline 05.10: offset -1000, quantification 10000)."""
    return (read(l2a_band_path(tile, band_id)).astype(np.float64) - 1000) / 10000


def xml_values(path: Path, tag: str) -> list[tuple[dict, str]]:
    """(attributes, text) of every element with this local name, namespaces ignored."""
    return [(el.attrib, (el.text or "").strip()) for el in ET.parse(path).iter()
            if el.tag.rsplit("}", 1)[-1] == tag]


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> dict[str, Path]:
    """One tile per variant, written once for the module."""
    root = tmp_path_factory.mktemp("sample")
    return {
        "l2a": write_sample_tile(root / "l2a", size=SIZE, seed=0),
        "l2a_again": write_sample_tile(root / "l2a_again", size=SIZE, seed=0),
        "l2a_seed1": write_sample_tile(root / "l2a_seed1", size=SIZE, seed=1),
        "l1c": write_sample_tile(root / "l1c", size=SIZE, seed=0, level="L1C"),
        "flat": write_sample_tile(root / "flat", size=SIZE, seed=0, layout="flat"),
        "zip": write_sample_tile(root / "zip", size=SIZE, seed=0, layout="zip", nodata_corner=True),
        "jp2": write_sample_tile(root / "jp2", size=SIZE, seed=0, fmt="jp2"),
        "corner": write_sample_tile(root / "corner", size=SIZE, seed=0, nodata_corner=True),
    }


# ---------------------------------------------------------------- layouts

def test_l2a_safe_layout(tiles):
    tile = tiles["l2a"]
    assert tile.name == L2A_SAFE and tile.is_dir()
    assert (tile / "MTD_MSIL2A.xml").is_file()
    for b in L2A_BANDS:
        assert l2a_band_path(tile, b.id).is_file(), b.id
    assert not list(tile.rglob("*B10*")), "L2A products have no B10"
    assert sorted(p.name for p in (tile / L2A_GRANULE / "R10m").iterdir()) == [
        f"{STEM}_{b}_10m.tif" for b in ("B02", "B03", "B04", "B08")]
    assert sorted(p.name for p in (tile / L2A_GRANULE / "R60m").iterdir()) == [
        f"{STEM}_{b}_60m.tif" for b in ("B01", "B09")]


def test_l2a_scene_classification_layout(tiles):
    """SCL in IMG_DATA/R20m and the probability masks in QI_DATA, uint8 on the 20 m grid; none in L1C."""
    granule = tiles["l2a"] / L2A_GRANULE
    paths = [granule / "R20m" / f"{STEM}_SCL_20m.tif", granule.parent / "QI_DATA" / "MSK_CLDPRB_20m.tif",
             granule.parent / "QI_DATA" / "MSK_SNWPRB_20m.tif"]
    for path in paths:
        with rasterio.open(path) as ds:
            assert (ds.dtypes[0], ds.shape, ds.transform.a) == ("uint8", (125, 125), 20), path.name
    assert not list(tiles["l1c"].rglob("*SCL*")) and not list(tiles["l1c"].rglob("MSK_*"))


def test_scl_agrees_with_rendered_clouds_and_shadows(tmp_path):
    """On the issue's sample (seed 3, 800²) the SCL, upsampled by nearest, flags ≥ 95 % of rendered
    clouds and ≥ 80 % of rendered shadows, and ≤ 5 % of clear pixels (also counting the faint edges
    of clouds and shadows as clear); the cloud probability is high under clouds; a nodata corner is SCL 0."""
    tile = write_sample_tile(tmp_path, size=800, seed=3, nodata_corner=True)
    granule = tile / L2A_GRANULE
    scl = read(granule / "R20m" / f"{STEM}_SCL_20m.tif").repeat(2, 0).repeat(2, 1)
    prob = read(granule.parent / "QI_DATA" / "MSK_CLDPRB_20m.tif").repeat(2, 0).repeat(2, 1)
    clouds, shadows, clear = sample.cloud_truth_window(800, 3)
    corner = truth_window(800, 3, nodata_corner=True) == sample.NODATA_CLASS
    # 20 m pixels straddle the corner's diagonal edge: all but those agree
    assert (scl[corner] == 0).mean() > 0.99 and (scl[~corner] != 0).mean() > 0.99
    clouds, shadows = clouds & ~corner, shadows & ~corner
    assert clouds.mean() > 0.03 and shadows.mean() > 0.03  # the scene does render both
    flagged = np.isin(scl, (3, 8, 9))
    assert flagged[clouds].mean() >= 0.95
    assert (scl[shadows] == 3).mean() >= 0.80
    assert flagged[~clouds & ~shadows & ~corner].mean() <= 0.05
    assert flagged[clear & ~corner].mean() <= 0.01
    assert np.median(prob[clouds]) > 50 > np.median(prob[~clouds & ~corner])


def test_l1c_safe_layout(tiles):
    tile = tiles["l1c"]
    assert tile.name == L1C_SAFE
    assert (tile / "MTD_MSIL1C.xml").is_file()
    names = sorted(p.name for p in (tile / L1C_GRANULE).iterdir())
    assert names == sorted(f"{STEM}_{b.id}.tif" for b in BANDS)  # all 13, no resolution suffix


def test_flat_layout(tiles):
    tile = tiles["flat"]
    assert tile.name == STEM and tile.is_dir()
    assert sorted(p.name for p in tile.iterdir()) == sorted(
        [f"{STEM}_{b.id}.tif" for b in L2A_BANDS]
        + ["MTD_MSIL2A.xml", f"{STEM}_SCL_20m.tif", "MSK_CLDPRB_20m.tif", "MSK_SNWPRB_20m.tif"])


def test_zip_layout_readable_through_vsizip(tiles):
    tile = tiles["zip"]
    assert tile.name == L2A_SAFE + ".zip" and tile.is_file()
    assert sorted(p.name for p in tile.parent.iterdir()) == [tile.name], "no unzipped copy or staging left"
    with zipfile.ZipFile(tile) as zf:
        infos = zf.infolist()
    assert all(i.filename.startswith(L2A_SAFE + "/") for i in infos)
    images = [i for i in infos if i.filename.endswith(".tif")]
    assert len(images) == len(L2A_BANDS) + 3  # + SCL, MSK_CLDPRB, MSK_SNWPRB
    assert all(i.compress_type == zipfile.ZIP_STORED for i in images)
    member = f"{L2A_SAFE}/{L2A_GRANULE}/R10m/{STEM}_B08_10m.tif"
    with rasterio.open(f"/vsizip/{tile}/{member}") as ds:
        assert ds.shape == (SIZE, SIZE)
        nir = ds.read(1)
    assert np.array_equal(nir, read(l2a_band_path(tiles["corner"], "B08")))


def test_jp2_is_lossless_jpeg2000(tiles):
    tile = tiles["jp2"]
    for b in L2A_BANDS:
        path = l2a_band_path(tile, b.id, "jp2")
        with rasterio.open(path) as ds:
            assert ds.driver == "JP2OpenJPEG"
            assert ds.crs.to_epsg() == 32632
            assert ds.transform.a == b.resolution
        assert np.array_equal(read(path), read(l2a_band_path(tiles["l2a"], b.id))), b.id
    assert not list(tile.rglob("*.tif")), "temporary GeoTIFFs removed"
    scl = tile / L2A_GRANULE / "R20m" / f"{STEM}_SCL_20m.jp2"
    assert np.array_equal(read(scl), read(tiles["l2a"] / L2A_GRANULE / "R20m" / f"{STEM}_SCL_20m.tif"))


# ---------------------------------------------------------------- geometry and values

@pytest.mark.parametrize("band", L2A_BANDS, ids=lambda b: b.id)
def test_band_grid(tiles, band):
    expected = -(-SIZE // band.scale)  # ceil: 250, 125, 42
    with rasterio.open(l2a_band_path(tiles["l2a"], band.id)) as ds:
        assert ds.shape == (expected, expected)
        assert ds.count == 1 and ds.dtypes[0] == "uint16"
        assert ds.crs.to_epsg() == 32632
        t = ds.transform
        assert (t.a, t.e, t.c, t.f, t.b, t.d) == (band.resolution, -band.resolution, 600000, 5300040, 0, 0)
        assert ds.profile["tiled"] and ds.compression is not None


def test_l2a_metadata(tiles):
    mtd = tiles["l2a"] / "MTD_MSIL2A.xml"
    root = ET.parse(mtd).getroot()
    assert root.tag.endswith("Level-2A_User_Product") and root.tag.startswith("{")
    assert xml_values(mtd, "PROCESSING_LEVEL")[0][1] == "Level-2A"
    assert xml_values(mtd, "PROCESSING_BASELINE")[0][1] == "05.10"
    assert xml_values(mtd, "PRODUCT_TYPE")[0][1] == "S2MSI2A"
    assert xml_values(mtd, "BOA_QUANTIFICATION_VALUE")[0][1] == "10000"
    offsets = {int(a["band_id"]): int(t) for a, t in xml_values(mtd, "BOA_ADD_OFFSET")}
    assert offsets == {i: -1000 for i in range(13)}
    assert not xml_values(mtd, "RADIO_ADD_OFFSET")


def test_l1c_metadata(tiles):
    mtd = tiles["l1c"] / "MTD_MSIL1C.xml"
    assert xml_values(mtd, "PROCESSING_LEVEL")[0][1] == "Level-1C"
    assert xml_values(mtd, "PRODUCT_TYPE")[0][1] == "S2MSI1C"
    assert xml_values(mtd, "PROCESSING_BASELINE")[0][1] == "05.10"
    assert xml_values(mtd, "QUANTIFICATION_VALUE")[0][1] == "10000"
    offsets = {int(a["band_id"]): int(t) for a, t in xml_values(mtd, "RADIO_ADD_OFFSET")}
    assert offsets == {i: -1000 for i in range(13)}
    assert not xml_values(mtd, "BOA_ADD_OFFSET")


def test_nodata_corner(tiles):
    for b in L2A_BANDS:
        dn = read(l2a_band_path(tiles["corner"], b.id))
        assert dn[-1, 0] == 0, f"{b.id}: lower-left corner is nodata"
        assert dn[0, -1] > 0 and dn[0, 0] > 0 and dn[-1, -1] > 0
        assert 0.05 < np.mean(dn == 0) < 0.2, b.id
        assert np.array_equal(dn == 0, np.tril(dn == 0)), f"{b.id}: nodata is a lower-left triangle"
        assert read(l2a_band_path(tiles["l2a"], b.id)).min() >= 1, f"{b.id}: DN 0 only in the corner"
    for path in (tiles["l1c"] / L1C_GRANULE).iterdir():
        assert read(path).min() >= 1, path.name


def test_nodata_corner_matches_truth(tiles):
    truth = truth_window(SIZE, 0, nodata_corner=True)
    assert np.array_equal(truth == sample.NODATA_CLASS, read(l2a_band_path(tiles["corner"], "B02")) == 0)


def test_same_seed_identical_other_seed_different(tiles):
    for b in L2A_BANDS:
        a = read(l2a_band_path(tiles["l2a"], b.id))
        assert np.array_equal(a, read(l2a_band_path(tiles["l2a_again"], b.id))), b.id
        assert np.mean(a != read(l2a_band_path(tiles["l2a_seed1"], b.id))) > 0.5, b.id


def test_pixels_do_not_depend_on_block():
    scene = sample._Scene.make(1200, 4)
    for band_ids, scale in ((["B02", "B08"], 1), (["B05", "B11"], 2), (["B01", "B09"], 6)):
        group = [b for b in BANDS if b.id in band_ids]
        small = sample._block_dn(scene, group, Window(37, 101, 60, 45), scale, "L1C", True)
        large = sample._block_dn(scene, group, Window(0, 90, 120, 100), scale, "L1C", True)
        for s, big in zip(small, large):
            assert np.array_equal(s, big[11:56, 37:97])


def test_classes_have_distinct_spectra(tiles):
    truth = truth_window(SIZE, 0)
    counts = np.bincount(truth.ravel(), minlength=6)
    assert (counts[:6] > 500).all(), counts
    tile = tiles["l2a"]
    nir, red = reflectance(tile, "B08"), reflectance(tile, "B04")
    blue, swir = reflectance(tile, "B02"), reflectance(tile, "B11")[np.ix_(np.arange(SIZE) // 2, np.arange(SIZE) // 2)]
    mean = lambda band, cls: float(np.mean(band[truth == cls]))  # noqa: E731
    assert mean(nir, WATER) < 0.05
    assert mean(nir, FOREST) > 0.2 and mean(nir, CROPS) > 0.25
    assert mean(nir, FOREST) > 5 * mean(nir, WATER)
    ndvi = (nir - red) / (nir + red)
    assert mean(ndvi, FOREST) > 0.6 and mean(ndvi, CROPS) > 0.6
    assert mean(ndvi, URBAN) < 0.3 and mean(ndvi, BARE) < 0.3 and mean(ndvi, WATER) < 0
    assert mean(swir, BARE) > mean(swir, FOREST) and mean(swir, URBAN) > mean(swir, FOREST)
    assert mean(blue, CLOUD) > 0.3 > mean(blue, URBAN)


def test_l1c_has_haze_in_blue(tiles):
    boa = read(l2a_band_path(tiles["l2a"], "B01")).astype(float)
    toa = read(next((tiles["l1c"] / L1C_GRANULE).glob("*_B01.tif"))).astype(float)
    assert toa.mean() > boa.mean() + 300  # path radiance brightens the coastal/blue bands


# ---------------------------------------------------------------- errors and safety

@pytest.mark.parametrize("kwargs, name", [
    (dict(size=59), "size"), (dict(size=120.0), "size"), (dict(level="L3"), "level"),
    (dict(layout="tar"), "layout"), (dict(fmt="png"), "fmt"),
])
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ConfigError, match=name):
        write_sample_tile(tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


def test_refuses_to_overwrite(tmp_path):
    tile = write_sample_tile(tmp_path, size=60, layout="flat")
    with pytest.raises(OutputError, match="exists"):
        write_sample_tile(tmp_path, size=60, layout="flat")
    assert [p.name for p in tmp_path.iterdir()] == [tile.name]


def test_interrupted_run_leaves_nothing(tmp_path):
    def cancel(fraction: float, message: str) -> None:
        if fraction > 0.3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_sample_tile(tmp_path, size=600, progress=cancel)
    assert not list(tmp_path.iterdir())


def test_progress_reaches_one(tmp_path):
    seen: list[float] = []
    write_sample_tile(tmp_path, size=120, level="L1C", progress=lambda f, m: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)


def test_engine_module_does_not_import_qgis():
    code = "import sys, s2seg.core.sample; sys.exit('qgis' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
