"""Stacked rasters (one multi-band GeoTIFF or VRT, as Google Earth Engine and the Semi-Automatic
Classification Plugin export them): bands identified from their descriptions or a band list, the
pixel scale detected and stated, and the same products as the Sentinel-2 product they came from."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from doubles import SpectralPatchModel
from s2seg.core.config import EngineConfig
from s2seg.core.errors import ConfigError, InputError
from s2seg.core.inputs import discover_input
from s2seg.core.pipeline import segment
from s2seg.core.products import DEFAULT_PRODUCTS
from s2seg.core.sample import write_sample_tile
from s2seg.core.stack import band_id_of_name, discover_stack

from rasters import read_products

SIZE = 120
MODEL_BANDS = ("B02", "B04", "B08", "B11")  # SpectralPatchModel's
PRODUCTS = DEFAULT_PRODUCTS


@pytest.fixture(scope="module")
def safe(tmp_path_factory):
    return write_sample_tile(tmp_path_factory.mktemp("safe"), size=SIZE, seed=5, level="L2A", layout="safe")


@pytest.fixture(scope="module")
def product_run(safe, tmp_path_factory):
    return read_products(segment(safe, tmp_path_factory.mktemp("product"), model=SpectralPatchModel()))


def harmonised_dn(safe: Path, band_ids=MODEL_BANDS) -> tuple[np.ndarray, dict]:
    """The bands at 10 m (20 m bands repeated: nearest, as the engine samples them) with the baseline
    offset removed (GEE's harmonised collection): reflectance × 10000, and the 10 m profile."""
    layers, profile = [], None
    for band_id in band_ids:
        path = next(p for p in safe.rglob(f"*_{band_id}_*.tif"))
        with rasterio.open(path) as ds:
            data = ds.read(1, out_shape=(SIZE, SIZE), resampling=Resampling.nearest).astype(np.int32)
            if ds.width == SIZE:
                profile = ds.profile
        layers.append(np.where(data > 0, data - 1000, 0))  # L2A baseline 05.10: DN = reflectance × 10000 + 1000
    return np.stack(layers), profile


def write_stack(path: Path, values: np.ndarray, profile: dict, dtype: str, descriptions=None, nodata=None) -> Path:
    profile = {**profile, "driver": "GTiff", "count": len(values), "dtype": dtype, "nodata": nodata, "tiled": True,
               "blockxsize": 64, "blockysize": 64}
    profile.pop("compress", None)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(values.astype(dtype))
        for i, text in enumerate(descriptions or []):
            ds.set_band_description(i + 1, text)
    return path


def run(stack: Path, out: Path, **config):
    log: list[str] = []
    result = segment(stack, out, model=SpectralPatchModel(), config=EngineConfig(**config), log=log.append)
    return read_products(result), log


def assert_same(a: dict, b: dict) -> None:
    for key in PRODUCTS:
        assert a[key].tobytes() == b[key].tobytes(), key


@pytest.mark.parametrize(("variant", "dtype", "scale", "stated"), [
    ("GEE x10000 integers", "uint16", 1, "integer values: reflectance × 10000"),
    ("GEE float reflectance", "float32", 1e-4, "reflectance 0–1"),
    ("GEE float x10000", "float32", 1, "reflectance × 10000"),
])
def test_a_gee_export_described_b1_to_b12_gives_the_products_of_the_safe(safe, product_run, tmp_path, variant, dtype,
                                                                           scale, stated):
    gee_names = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")  # S2_SR_HARMONIZED
    dn, profile = harmonised_dn(safe, [f"B{int(n[1:]):02d}" if n[1:].isdigit() else n for n in gee_names])
    stack = write_stack(tmp_path / "gee_export.tif", dn * scale, profile, dtype, descriptions=gee_names)
    products, log = run(stack, tmp_path / "out")
    assert_same(products, product_run)
    assert any("bands B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B11, B12 from the band descriptions" in line
               for line in log)
    assert any(stated in line for line in log), log
    assert any("(20/60 m bands) are read at the stack's 10 m pixel" in line for line in log)


def test_an_scp_style_float_stack_with_nodata_and_nan_writes_nodata_there(safe, product_run, tmp_path):
    dn, profile = harmonised_dn(safe)
    reflectance = dn / 10000
    reflectance[:, dn[0] == 0] = -9999.0  # the stack's nodata value where the product has none
    reflectance[2, 50:54, 60:64] = np.nan  # a NaN in one band (B08)
    stack = write_stack(tmp_path / "RT_bandset.tif", reflectance, profile, "float32", nodata=-9999.0,
                        descriptions=[f"RT_T32UNU_{b}" for b in MODEL_BANDS])
    products, log = run(stack, tmp_path / "out")
    assert (products["class"][50:54, 60:64] == 255).all() and np.isnan(products["maxprob"][50:54, 60:64]).all()
    # Patch-level products blend 60 px patches at a 30 px stride: the patches over the NaN pixels cover
    # rows 0–89 × cols 30–119; every other pixel is the product's, byte for byte
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    far = (rows >= 90) | (cols < 30)
    for key in PRODUCTS:
        assert products[key][far].tobytes() == product_run[key][far].tobytes(), key
    assert any("float values up to" in line and "reflectance 0–1" in line for line in log)


def test_an_undescribed_stack_needs_a_band_list_and_skips_bands_marked_with_a_dash(safe, product_run, tmp_path):
    dn, profile = harmonised_dn(safe, ("B02", "B03", "B04", "B08", "B11"))
    stack = write_stack(tmp_path / "plain.tif", dn, profile, "uint16")
    with pytest.raises(InputError, match=r"cannot tell which band of stacked raster .*plain.tif is which: its 5 band "
                                         r"description\(s\) are none; give the band ids in file order"):
        segment(stack, tmp_path / "out", model=SpectralPatchModel())
    products, log = run(stack, tmp_path / "out", bands="B02,-,B04,B08,B11")
    assert_same(products, product_run)
    assert any("bands B02, B04, B08, B11 from the band list" in line for line in log)


@pytest.mark.parametrize(("bands", "message"), [
    ("B02,B04,B08", r"the band list names 3 band\(s\) \(B02, B04, B08\) but stacked raster .* has 4"),
    ("B02,B04,B04,B11", "bands 2 and 3 are both B04"),
])
def test_a_wrong_band_list_is_refused(safe, tmp_path, bands, message):
    dn, profile = harmonised_dn(safe)
    stack = write_stack(tmp_path / "plain.tif", dn, profile, "uint16")
    with pytest.raises(InputError, match=message):
        discover_stack(stack, bands)


def test_unknown_band_ids_and_a_band_list_for_a_product_are_config_errors(safe, tmp_path):
    dn, profile = harmonised_dn(safe)
    stack = write_stack(tmp_path / "plain.tif", dn, profile, "uint16")
    with pytest.raises(ConfigError, match=r"unknown band id\(s\) 'B13'"):
        discover_stack(stack, "B02,B04,B08,B13")
    with pytest.raises(ConfigError, match="a band list applies to a stacked raster"):
        discover_input(safe, "B02,B04")


@pytest.mark.parametrize("dtype", ["uint8", "uint32", "int32"])
def test_a_stack_of_an_unsupported_type_is_refused_naming_the_band(safe, tmp_path, dtype):
    dn, profile = harmonised_dn(safe)
    stack = write_stack(tmp_path / "odd.tif", np.minimum(dn, 255) if dtype == "uint8" else dn, profile, dtype,
                        descriptions=MODEL_BANDS)
    with pytest.raises(InputError, match=rf"band B02 \(band 1 of .*odd.tif\) has data type {dtype}; expected uint16, "
                                         r"int16, float32, float64"):
        discover_stack(stack)


def test_the_models_bands_are_checked_against_the_stack(safe, tmp_path):
    dn, profile = harmonised_dn(safe, ("B02", "B03", "B04", "B08"))
    stack = write_stack(tmp_path / "rgbn.tif", dn, profile, "uint16", descriptions=["blue", "green", "red", "nir"])
    with pytest.raises(InputError, match=r"lacks band\(s\) B11 that model 'patch-test' needs \(found: B02, B03, B04, B08\)"):
        segment(stack, tmp_path / "out", model=SpectralPatchModel())


def test_a_stack_not_at_10m_is_refused(safe, tmp_path):
    dn, profile = harmonised_dn(safe)
    profile = {**profile, "transform": rasterio.Affine(20, 0, profile["transform"].c, 0, -20, profile["transform"].f)}
    stack = write_stack(tmp_path / "coarse.tif", dn, profile, "uint16", descriptions=MODEL_BANDS)
    with pytest.raises(InputError, match=r"has 20 × 20 pixels; s2seg computes on the 10 m grid"):
        discover_stack(stack)


def test_scale_and_offset_given_override_the_detection(safe, product_run, tmp_path):
    dn, profile = harmonised_dn(safe)
    stack = write_stack(tmp_path / "dn.tif", np.where(dn > 0, dn + 1000, 0), profile, "uint16", descriptions=MODEL_BANDS)
    products, log = run(stack, tmp_path / "out", scale=0.0001, offset=-0.1)  # baseline 04.00+ DN, no metadata
    assert_same(products, product_run)
    assert any("as given (reflectance = value × 0.0001 + -0.1)" in line for line in log)
    with pytest.raises(ConfigError, match="offset must be a reflectance from -0.2 to 0"):
        discover_input(stack, offset=-7)
    with pytest.raises(ConfigError, match="scale must be a positive number"):
        discover_input(stack, scale=0)


@pytest.mark.parametrize(("name", "band_id"), [("B2", "B02"), ("B02", "B02"), ("SR_B8A", "B8A"), ("b8a", "B8A"),
                                                ("blue", "B02"), ("nir08", "B8A"), ("rededge1", "B05"),
                                                ("swir16", "B11"), ("B12_median", "B12"), ("cloud", None),
                                                ("B1", "B01"), ("QA60", None)])
def test_band_names_of_gee_scp_and_stac(name, band_id):
    assert band_id_of_name(name) == band_id


def test_a_zipped_product_is_not_taken_for_a_stack(tmp_path):
    """GDAL opens some zips as rasters: a zipped .SAFE must still be read as a product."""
    zipped = write_sample_tile(tmp_path / "zip", size=60, level="L2A", layout="zip")
    bandset = discover_input(zipped)
    assert bandset.offsets["B02"] == -1000 and bandset.files["B02"].index == 1 and not bandset.notes


def test_the_band_order_and_scale_of_a_stack_are_part_of_the_resume_key(safe, tmp_path):
    from s2seg.core.journal import run_fields

    dn, profile = harmonised_dn(safe, ("B02", "B04", "B08", "B11"))
    stack = write_stack(tmp_path / "plain.tif", dn, profile, "uint16")
    card = SpectralPatchModel().card
    settings = dict(chunk_size=120, write_probs=False, compress="ZSTD", block=128)
    one = run_fields(discover_stack(stack, "B02,B04,B08,B11"), card, **settings)
    swapped = run_fields(discover_stack(stack, "B02,B08,B04,B11"), card, **settings)
    rescaled = run_fields(discover_stack(stack, "B02,B04,B08,B11", scale=0.0002), card, **settings)
    assert one != swapped and one != rescaled and one["tile"]["stored"]["B08"][0] == 3
    assert "stored" not in run_fields(discover_input(safe), card, **settings)["tile"]  # products: key as before
