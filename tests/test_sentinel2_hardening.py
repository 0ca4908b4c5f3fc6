"""Discovery refuses what is not a Sentinel-2 product before any output exists (hardening issue,
items 2a, 3, 4, 6, 10, 13): oversized band files, metadata zip bombs, damaged zip members, metadata
from outside the product, paths GDAL cannot open, band lists given as a string."""
from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from s2seg.core import sentinel2
from s2seg.core.bands import TILE_SIZE_PX
from s2seg.core.errors import InputError, ModelError
from s2seg.core.sample import write_sample_tile
from s2seg.core.sentinel2 import MAX_METADATA_BYTES, discover

ORIGIN = (600000.0, 5300040.0)


def write_band(path: Path, res: int, pixels: int, origin=ORIGIN) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=pixels, height=pixels, count=1, dtype="uint16",
                       crs="EPSG:32632", transform=from_origin(origin[0], origin[1], res, res)) as ds:
        ds.write(np.full((1, pixels, pixels), 1500, dtype=np.uint16))


def write_declared_band(path: Path, pixels: int, res: int = 10) -> None:
    """A band file that only declares its size (a VRT without sources: ~300 bytes whatever the size)."""
    path.write_text(
        f'<VRTDataset rasterXSize="{pixels}" rasterYSize="{pixels}"><SRS>EPSG:32632</SRS>'
        f"<GeoTransform>{ORIGIN[0]}, {res}, 0, {ORIGIN[1]}, 0, -{res}</GeoTransform>"
        '<VRTRasterBand dataType="UInt16" band="1"/></VRTDataset>')


def member_data_offset(zip_path: Path, info: zipfile.ZipInfo) -> int:
    """Where the bytes of ``info`` start in the archive (after its local header)."""
    with open(zip_path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len


def rezip(source: Path, target: Path, replace: dict[str, bytes] | None = None, add: dict[str, bytes] | None = None) -> Path:
    """Copy a zip, replacing some members' content and adding members (deflated)."""
    replace, add = replace or {}, add or {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for name, content in add.items():
            dst.writestr(name, content, compress_type=zipfile.ZIP_DEFLATED)
        for info in src.infolist():
            dst.writestr(info, replace.get(info.filename, src.read(info)), compress_type=info.compress_type)
    return target


@pytest.fixture(scope="module")
def zipped(tmp_path_factory) -> Path:
    return write_sample_tile(tmp_path_factory.mktemp("zip"), size=240, layout="zip")


def member(zip_path: Path, pattern: str) -> zipfile.ZipInfo:
    with zipfile.ZipFile(zip_path) as archive:
        return next(i for i in archive.infolist() if pattern in i.filename)


# ------------------------------------------------------------------ 2a: declared size
def test_band_file_declaring_a_million_pixels_is_refused_naming_file_and_size(tmp_path):
    write_declared_band(tmp_path / "T32UNU_20240612T103031_B02.tif", 10**6)
    with pytest.raises(InputError, match=r"band file .*_B02\.tif is 1000000 × 1000000 px, larger than a whole "
                                         r"Sentinel-2 tile \(10980 × 10980 px at 10 m\)"):
        discover(tmp_path)


def test_tile_size_limit_is_inclusive(tmp_path):
    write_declared_band(tmp_path / "x_B02.tif", TILE_SIZE_PX)
    assert discover(tmp_path).width == TILE_SIZE_PX
    write_declared_band(tmp_path / "x_B02.tif", TILE_SIZE_PX + 1)
    with pytest.raises(InputError, match="is 10981 × 10981 px"):
        discover(tmp_path)


@pytest.mark.parametrize("pixels", [240, 60], ids=["20m-band-at-10m-size", "20m-band-too-small"])
def test_band_sizes_off_the_10_20_60_m_ratios_are_refused(tmp_path, pixels):
    """Already checked before the issue (footprints must agree): verified here."""
    write_band(tmp_path / "x_B02.tif", 10, 240)
    write_band(tmp_path / "x_B05.tif", 20, pixels)
    with pytest.raises(InputError, match=r"band B05 \(.*x_B05\.tif\) covers .* which does not match B02"):
        discover(tmp_path)


# ------------------------------------------------------------------ 3: metadata zip bomb
def test_metadata_member_declaring_more_than_the_cap_is_refused_before_it_is_inflated(zipped, tmp_path, monkeypatch):
    mtd = member(zipped, "MTD_MSIL2A.xml")
    with zipfile.ZipFile(zipped) as archive:
        padded = archive.read(mtd) + b" " * MAX_METADATA_BYTES  # deflates to a few kB
    bomb = rezip(zipped, tmp_path / zipped.name, replace={mtd.filename: padded})
    assert bomb.stat().st_size < zipped.stat().st_size + 64 * 1024
    read, inflated = zipfile.ZipExtFile.read, []

    def spy(self, n=-1):
        inflated.append(self.name)
        return read(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", spy)
    with pytest.raises(InputError, match=rf"product metadata {bomb}!{mtd.filename} is {len(padded)} bytes or more "
                                         rf"\(real ones weigh about 50 kB; at most {MAX_METADATA_BYTES} bytes are read\)"):
        discover(bomb)
    assert inflated and mtd.filename not in inflated  # refused on its declared size, never inflated


def test_metadata_larger_than_the_cap_in_a_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sentinel2, "MAX_METADATA_BYTES", 1000)
    flat = write_sample_tile(tmp_path, size=120, layout="flat")
    mtd = flat / "MTD_MSIL2A.xml"
    with pytest.raises(InputError, match=rf"product metadata {mtd} is {mtd.stat().st_size} bytes or more"):
        discover(flat)


def test_real_sized_metadata_is_read(zipped):
    assert MAX_METADATA_BYTES >= 20 * 55_000  # real MTD_MSIL2A.xml weigh up to ~55 kB
    assert discover(zipped).offsets["B02"] == -1000


# ------------------------------------------------------------------ 4: CRC of zip members
def damage(zip_path: Path, pattern: str, target: Path, where: float = 0.5, size: int = 20_000) -> zipfile.ZipInfo:
    """Overwrite ``size`` bytes of the member matching ``pattern`` with random bytes, at ``where`` of its length."""
    info = member(zip_path, pattern)
    data = bytearray(zip_path.read_bytes())
    start = member_data_offset(zip_path, info) + int(info.compress_size * where)
    size = min(size, info.compress_size - int(info.compress_size * where))
    data[start:start + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    return info


def test_damaged_band_member_is_refused_naming_the_member(zipped, tmp_path):
    bad = tmp_path / zipped.name
    info = damage(zipped, "_B03_10m", bad)
    with rasterio.open(f"/vsizip/{bad}/{info.filename}") as ds:  # GDAL reads it without a complaint
        ds.read(1)
    with pytest.raises(InputError, match=rf"member {info.filename} of zip archive {bad} is damaged: its CRC-32 does not match its bytes"):
        discover(bad)


def test_member_damaged_in_its_header_is_reported_as_damaged(zipped, tmp_path):
    bad = tmp_path / zipped.name
    info = damage(zipped, "_B04_10m", bad, where=0.0, size=64)
    with pytest.raises(InputError, match=rf"member {info.filename} of zip archive {bad} is damaged"):
        discover(bad)


def test_only_the_kept_band_members_are_checked(tmp_path):
    """L2A ships 20/60 m copies of the 10 m bands: the coarse copies are never read, so not checked."""
    safe = write_sample_tile(tmp_path / "safe", size=240, layout="safe")
    r20 = next(safe.glob("GRANULE/*/IMG_DATA/R20m"))
    b05 = next(r20.glob("*_B05_20m.tif"))
    shutil.copy(b05, r20 / b05.name.replace("B05", "B02"))
    archive = tmp_path / (safe.name + ".zip")
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(safe.rglob("*")):
            if path.is_file():
                zf.write(path, f"{safe.name}/{path.relative_to(safe).as_posix()}")
    bad = tmp_path / "bad" / archive.name
    bad.parent.mkdir()
    damage(archive, "_B02_20m", bad)
    assert discover(bad).files["B02"].resolution == 10


# ------------------------------------------------------------------ 6: which metadata belongs to the product
def test_metadata_above_a_flat_band_folder_is_not_used(tmp_path):
    flat = write_sample_tile(tmp_path / "a" / "b", size=240, layout="flat")
    (flat / "MTD_MSIL2A.xml").rename(flat.parent.parent / "MTD_MSIL2A.xml")  # two folders up
    bands = discover(flat)
    assert bands.offsets == {} and bands.metadata_path is None and bands.baseline is None


def test_metadata_in_a_subfolder_of_a_flat_band_folder_is_not_used(tmp_path):
    flat = write_sample_tile(tmp_path, size=240, layout="flat")
    (flat / "notes").mkdir()
    (flat / "MTD_MSIL2A.xml").rename(flat / "notes" / "MTD_MSIL2A.xml")
    assert discover(flat).offsets == {}


def test_flat_band_folder_uses_its_own_metadata_and_names_it(tmp_path):
    flat = write_sample_tile(tmp_path, size=240, layout="flat", level="L1C")
    bands = discover(flat)
    assert bands.metadata_path == str(flat / "MTD_MSIL1C.xml") and bands.offsets["B10"] == -1000


@pytest.mark.parametrize("given", [".", "GRANULE/*/IMG_DATA", "GRANULE/*/IMG_DATA/R10m"])
def test_safe_and_its_granule_folders_use_the_safe_root_metadata(tmp_path, given):
    safe = write_sample_tile(tmp_path, size=240, layout="safe")
    folder = next(safe.glob(given)) if given != "." else safe
    bands = discover(folder)
    assert bands.metadata_path == str(safe / "MTD_MSIL2A.xml") and bands.offsets["B04"] == -1000


def test_zip_uses_the_safe_root_metadata_not_a_stray_one(zipped, tmp_path):
    safe = member(zipped, "MTD_MSIL2A.xml").filename.split("/")[0]
    stray = f"{safe}/AUX_DATA/MTD_MSIL1C.xml"  # listed first: the old discovery took the first match
    with zipfile.ZipFile(zipped) as archive:
        content = archive.read(f"{safe}/MTD_MSIL2A.xml").replace(b">-1000<", b">-2000<").replace(b"Level-2A", b"Level-1C")
    copy = rezip(zipped, tmp_path / zipped.name, add={stray: content})
    bands = discover(copy)
    assert bands.metadata_path == f"{copy}!{safe}/MTD_MSIL2A.xml"
    assert bands.offsets["B02"] == -1000 and bands.level == "L2A"


def test_bands_of_different_products_are_refused(tmp_path):
    flat = write_sample_tile(tmp_path, size=240, layout="flat")
    (flat / "other").mkdir()
    b11 = next(flat.glob("*_B11.tif"))
    b11.rename(flat / "other" / b11.name)
    with pytest.raises(InputError, match=rf"the band files of tile {flat} belong to different products "
                                         rf"\(B01, B02, .*, B8A, B09, B12 with {flat / 'MTD_MSIL2A.xml'}; B11 with no product metadata\); "
                                         "give the bands of one product"):
        discover(flat)


# ------------------------------------------------------------------ 10: paths GDAL cannot open
def _tile_at_a_non_utf8_path(tmp_path: Path) -> Path:
    """A flat sample tile moved to a folder whose name holds a Latin-1 byte (skips where the file system refuses)."""
    flat = write_sample_tile(tmp_path, size=120, layout="flat")
    latin1 = Path(os.fsdecode(bytes(tmp_path) + b"/tile\xe9"))
    try:
        flat.rename(latin1)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses non-UTF-8 names")
    return latin1


def test_tile_path_that_is_not_utf8_is_a_clear_error(tmp_path):
    latin1 = _tile_at_a_non_utf8_path(tmp_path)
    with pytest.raises(InputError, match=r"tile path '.*/tile\\udce9' is not valid UTF-8") as info:
        discover(latin1)
    assert "GDAL cannot open it: rename it" in str(info.value)


def test_band_file_name_that_is_not_utf8_is_a_clear_error(tmp_path):
    flat = write_sample_tile(tmp_path, size=120, layout="flat")
    b03 = next(flat.glob("*_B03.tif"))
    try:
        b03.rename(Path(os.fsdecode(bytes(flat) + b"/caf\xe9_B03.tif")))
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses non-UTF-8 names")
    with pytest.raises(InputError, match=r"band file path '.*/caf\\udce9_B03\.tif' is not valid UTF-8"):
        discover(flat)


# ------------------------------------------------------------------ 13: band list given as a string
@pytest.fixture(scope="module")
def bandset(tmp_path_factory):
    return discover(write_sample_tile(tmp_path_factory.mktemp("flat"), size=120, layout="flat"))


def test_band_list_given_as_a_string_is_a_model_error(bandset):
    with pytest.raises(ModelError, match=r"model 'm': bands must be a list of band ids such as \['B02', 'B03'\], got the string 'B02'"):
        bandset.require("B02", "m")


def test_band_id_split_into_characters_is_explained(bandset):
    with pytest.raises(ModelError, match=r"model 'm' asks for unknown band id\(s\) 'B', '0', '2' \(a band id split into "
                                         r"characters: give the list \['B02'\], not the string 'B02'\); known: B01, B02"):
        bandset.require(["B", "0", "2"], "m")


def test_require_accepts_band_id_spellings_and_keeps_the_order(bandset):
    assert [f.band.id for f in bandset.require(["b8a", "B2", "B04"], "m")] == ["B8A", "B02", "B04"]


# ------------------------------------------------------------------ through the command line: exit 1, nothing written
def run_cli(capsys, *args) -> tuple[int, str]:
    from s2seg.core.cli import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_cli_refuses_a_forged_tile_size_before_any_output(tmp_path, capsys):
    folder = tmp_path / "forged"
    folder.mkdir()
    write_declared_band(folder / "T32UNU_20240612T103031_B02.tif", 10**6)
    code, err = run_cli(capsys, "segment", folder, tmp_path / "out")
    assert code == 1 and "Traceback" not in err
    assert f"s2seg: error: band file {folder / 'T32UNU_20240612T103031_B02.tif'} is 1000000 × 1000000 px" in err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_damaged_zip_member_before_any_output(zipped, tmp_path, capsys):
    bad = tmp_path / zipped.name
    info = damage(zipped, "_B03_10m", bad)
    code, err = run_cli(capsys, "segment", bad, tmp_path / "out")
    assert code == 1
    assert f"s2seg: error: member {info.filename} of zip archive {bad} is damaged: its CRC-32 does not match its bytes" in err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_metadata_zip_bomb_before_any_output(zipped, tmp_path, capsys):
    mtd = member(zipped, "MTD_MSIL2A.xml")
    bomb = rezip(zipped, tmp_path / zipped.name, replace={mtd.filename: b" " * (MAX_METADATA_BYTES + 1)})
    code, err = run_cli(capsys, "segment", bomb, tmp_path / "out")
    assert code == 1 and "Traceback" not in err
    assert f"s2seg: error: product metadata {bomb}!{mtd.filename} is {MAX_METADATA_BYTES + 1} bytes or more" in err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_non_utf8_tile_path_before_any_output(tmp_path, capsys):
    latin1 = _tile_at_a_non_utf8_path(tmp_path)
    code, err = run_cli(capsys, "segment", latin1, tmp_path / "out")
    assert code == 1 and "Traceback" not in err
    assert f"s2seg: error: tile path {str(latin1)!r} is not valid UTF-8" in err
    assert not (tmp_path / "out").exists()


def test_cli_run_ignores_metadata_above_a_flat_band_folder(tmp_path, capsys):
    """The issue's case end to end: the offsets of a metadata file two folders up were applied to the run."""
    flat = write_sample_tile(tmp_path / "a" / "b", size=120, layout="flat")
    (flat / "MTD_MSIL2A.xml").rename(tmp_path / "a" / "MTD_MSIL2A.xml")
    code, err = run_cli(capsys, "segment", flat, tmp_path / "out", "--quiet")
    assert code == 0, err
    report = json.loads(next((tmp_path / "out").glob("*_report.json")).read_text())
    assert report["tile"]["offsets"] == {} and report["tile"]["baseline"] is None
