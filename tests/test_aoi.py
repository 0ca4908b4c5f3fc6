"""Areas of interest: only their chunks are computed, the products cover their bounding box on the
10 m grid, and every pixel equals the same pixel of a whole-tile run, byte for byte."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_bounds
from doubles import ConvDenseModel

from doubles import SpectralPatchModel
from s2seg.core import aoi as aoi_
from s2seg.core.config import EngineConfig
from s2seg.core.errors import ConfigError, InputError
from s2seg.core.grid import journal_points, plan, plan_window
from s2seg.core.journal import run_fields
from s2seg.core.models import resolve_card
from s2seg.core.pipeline import segment
from s2seg.core.sample import EPSG, ORIGIN, write_sample_tile
from s2seg.core.sentinel2 import discover

PRODUCTS = ("class", "maxprob", "entropy", "gap")
SIZE = 240
LEFT, TOP = ORIGIN


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    return write_sample_tile(tmp_path_factory.mktemp("tile"), size=SIZE, seed=3, level="L2A", layout="safe")


@pytest.fixture(scope="module")
def full(tile, tmp_path_factory):
    """Whole-tile runs, per model, read once."""
    runs = {}

    def run(name, make_model):
        if name not in runs:
            result = segment(tile, tmp_path_factory.mktemp(f"full-{name}"), model=make_model(),
                             config=EngineConfig(chunk_size=120))
            runs[name] = read(result)
        return runs[name]

    return run


def read(result) -> dict[str, np.ndarray]:
    out = {}
    for key in PRODUCTS:
        with rasterio.open(result.products[key]) as ds:
            out[key] = ds.read(1)
            out["transform"], out["crs"] = ds.transform, ds.crs
    return out


def bbox(row0: int, col0: int, row1: int, col1: int) -> str:
    """The tile-CRS bounding box of tile pixels rows [row0, row1) × cols [col0, col1)."""
    return f"{LEFT + 10 * col0},{TOP - 10 * row1},{LEFT + 10 * col1},{TOP - 10 * row0}"


def assert_crop(part: dict, whole: dict, row0: int, col0: int, inside: np.ndarray | None = None,
                entropy_atol: float = 0.0) -> None:
    """``part`` is the window at (row0, col0) of ``whole``, byte for byte (nodata outside ``inside``);
    entropy within ``entropy_atol`` where asked (see the dense test)."""
    h, w = part["class"].shape
    assert part["transform"] == whole["transform"] * rasterio.Affine.translation(col0, row0)
    assert part["crs"] == whole["crs"]
    for key in PRODUCTS:
        crop = whole[key][row0: row0 + h, col0: col0 + w]
        if inside is not None:
            crop = np.where(inside, crop, 255 if key == "class" else np.nan).astype(crop.dtype)
        if key == "entropy" and entropy_atol:
            assert np.array_equal(np.isnan(crop), np.isnan(part[key]))
            np.testing.assert_allclose(part[key], crop, rtol=0, atol=entropy_atol, equal_nan=True)
        else:
            assert crop.tobytes() == part[key].tobytes(), key


MODELS = {"dense": lambda: ConvDenseModel(resolution=10, patch_size=40), "patch": SpectralPatchModel,
          "dense-30m": lambda: ConvDenseModel(resolution=30, patch_size=20),
          "builtin-one-pass": lambda: "builtin"}  # receptive_field: grid.plan_one_pass with the AOI's window


@pytest.mark.parametrize("name", list(MODELS))
def test_a_bbox_in_the_tile_crs_gives_the_crop_of_the_whole_tile_run_byte_for_byte(tile, full, tmp_path, name):
    whole = full(name, MODELS[name])
    row0, col0, row1, col1 = 37, 101, 158, 203  # off every chunk, patch and 30 m edge
    result = segment(tile, tmp_path / "aoi", model=MODELS[name](),
                     config=EngineConfig(chunk_size=120 if name != "dense-30m" else 0, aoi=bbox(row0, col0, row1, col1)))
    part = read(result)
    assert part["class"].shape == (row1 - row0, col1 - col0)
    assert (part["class"] != 255).all()
    # Dense 10 m: the entropy of pixels whose other classes have probabilities near 1e-20 (entropy
    # ~1e-19 bits) differs in its last bits, because the blend's matrix products round by the chunk's
    # shape (as between whole-tile runs of two chunk sizes); every other product is byte for byte.
    assert_crop(part, whole, row0, col0, entropy_atol=1e-15 if name == "dense" else 0.0)


def test_only_the_chunks_of_the_aoi_are_read_and_computed(tile, tmp_path):
    whole = SpectralPatchModel()
    segment(tile, tmp_path / "whole", model=whole, config=EngineConfig(chunk_size=60))
    part = SpectralPatchModel()
    result = segment(tile, tmp_path / "aoi", model=part, config=EngineConfig(chunk_size=60, aoi=bbox(0, 0, 50, 50)))
    assert result.n_chunks == 1  # of 16 for the whole tile
    assert 0 < part.patches <= 9 < whole.patches  # the 3 × 3 global patches around 50² px, of 9 × 9


def test_a_bbox_in_wgs84_is_transformed_and_snapped_outward_to_the_10m_grid(tile, full, tmp_path):
    whole = full("patch", MODELS["patch"])
    west, south, east, north = transform_bounds(f"EPSG:{EPSG}", "EPSG:4326", LEFT + 503, TOP - 1797, LEFT + 1204, TOP - 395)
    result = segment(tile, tmp_path / "aoi", model=SpectralPatchModel(),
                     config=EngineConfig(chunk_size=120, aoi=f"{west},{south},{east},{north},EPSG:4326"))
    part = read(result)
    # the WGS84 box (its edges bend in UTM) holds the UTM box: the window holds its pixels, and not much more
    col0, row0 = ~whole["transform"] * (part["transform"].c, part["transform"].f)
    row0, col0 = round(row0), round(col0)
    h, w = part["class"].shape
    assert row0 <= 39 and col0 <= 50 and row0 + h >= 180 and col0 + w >= 121
    assert row0 >= 36 and col0 >= 47 and row0 + h <= 183 and col0 + w <= 124
    assert_crop(part, whole, row0, col0)


def _polygon_file(path, rings_utm, layer="fields", crs="EPSG:4326", extra=()):
    """A GeoPackage of polygons given in tile (UTM) coordinates, stored in ``crs``."""
    from osgeo import ogr, osr

    ogr.UseExceptions()
    source_srs, target_srs = osr.SpatialReference(), osr.SpatialReference()
    source_srs.ImportFromEPSG(EPSG)
    target_srs.SetFromUserInput(crs)
    for srs in (source_srs, target_srs):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    to_file = osr.CoordinateTransformation(source_srs, target_srs)
    driver = ogr.GetDriverByName("GPKG" if str(path).endswith(".gpkg") else "GeoJSON")
    ds = driver.CreateDataSource(str(path))
    lyr = ds.CreateLayer(layer, target_srs, ogr.wkbPolygon)
    lyr.CreateField(ogr.FieldDefn("name", ogr.OFTString))
    for name, ring in [*rings_utm, *extra]:
        geometry = ogr.CreateGeometryFromJson(json.dumps({"type": "Polygon", "coordinates": [ring]}))
        geometry.Transform(to_file)
        feature = ogr.Feature(lyr.GetLayerDefn())
        feature.SetField("name", name)
        feature.SetGeometry(geometry)
        lyr.CreateFeature(feature)
    ds = None
    return path


def test_a_polygon_crossing_the_tile_edge_writes_nodata_outside_it_and_the_whole_run_inside(tile, full, tmp_path):
    whole = full("patch", MODELS["patch"])
    # a triangle reaching 500 m past the tile's east edge; a second feature filtered out by the subset
    triangle = [[LEFT + 1500, TOP - 300], [LEFT + 2900, TOP - 1200], [LEFT + 1500, TOP - 2100], [LEFT + 1500, TOP - 300]]
    elsewhere = [[LEFT + 10, TOP - 10], [LEFT + 200, TOP - 10], [LEFT + 200, TOP - 200], [LEFT + 10, TOP - 10]]
    path = _polygon_file(tmp_path / "aoi.gpkg", [("keep", triangle)], extra=[("drop", elsewhere)])
    result = segment(tile, tmp_path / "aoi", model=SpectralPatchModel(),
                     config=EngineConfig(chunk_size=120, aoi=f"{path}|layername=fields|subset=name = 'keep'"))
    part = read(result)
    col0, row0 = (round(v) for v in ~whole["transform"] * (part["transform"].c, part["transform"].f))
    h, w = part["class"].shape
    assert col0 + w == SIZE  # clipped at the tile's east edge
    assert 28 <= row0 <= 31 and 149 <= col0 <= 150 and 209 <= row0 + h <= 212
    # the mask: pixel centres inside the triangle (x ≥ 1500 and within the two slanted edges)
    rows, cols = np.mgrid[row0: row0 + h, col0: col0 + w]
    x, y = 10 * cols + 5 - 1500, 10 * rows + 5  # metres right of the vertical edge, below the top edge
    inside = (x > 0) & (y > 300 + x * 900 / 1400) & (y < 2100 - x * 900 / 1400)
    edge = np.abs(np.minimum(np.abs(y - 300 - x * 900 / 1400), np.abs(2100 - x * 900 / 1400 - y))) < 8
    assert ((part["class"] != 255) == inside)[~edge & (x > 8)].all()
    assert_crop(part, whole, row0, col0, inside=part["class"] != 255)
    assert (part["class"] == 255).sum() > 1000 and (part["class"] != 255).sum() > 5000


def test_an_aoi_outside_the_tile_is_a_clear_error(tile, tmp_path):
    with pytest.raises(InputError, match=r"area of interest '.*' covers \(.*\) in EPSG:32632, outside the tile \(600000.0, "):
        segment(tile, tmp_path / "out", model=SpectralPatchModel(),
                config=EngineConfig(aoi=f"{LEFT - 5000},{TOP - 100},{LEFT - 10},{TOP}"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(("text", "message"), [
    ("1,2,3", r"neither a bounding box 'minx,miny,maxx,maxy\[,CRS\]' nor an existing vector file"),
    ("3,2,1,4", "minx < maxx and miny < maxy"),
    ("1,2,3,4,EPSG:999999", "unknown CRS 'EPSG:999999'"),
    ("1,nan,3,4", "must be finite"),
])
def test_malformed_aois_are_config_errors_naming_them(text, message):
    with pytest.raises(ConfigError, match=message):
        aoi_.parse(text)


def test_a_vector_file_of_lines_or_with_several_layers_is_refused_naming_it(tile, tmp_path):
    bandset = discover(tile)
    from osgeo import ogr, osr

    path = tmp_path / "two.gpkg"
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    for name in ("a", "b"):
        lyr = ds.CreateLayer(name, srs, ogr.wkbLineString)
        feature = ogr.Feature(lyr.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(f"LINESTRING ({LEFT + 10} {TOP - 10}, {LEFT + 500} {TOP - 500})"))
        lyr.CreateFeature(feature)
    ds = None
    args = (bandset.width, bandset.height, bandset.transform, bandset.crs)
    with pytest.raises(InputError, match=r"holds 2 layers \(a, b\); name one with .*\|layername=NAME"):
        aoi_.resolve(str(path), *args)
    with pytest.raises(InputError, match="feature 1 is a LINESTRING; only polygons are accepted"):
        aoi_.resolve(f"{path}|layername=b", *args)
    with pytest.raises(InputError, match="has no layer 'c' \\(layers: a, b\\)"):
        aoi_.resolve(f"{path}|layername=c", *args)


def test_plan_window_covers_the_window_once_with_the_tiles_patches_and_block_aligned_journal_points():
    whole = plan(1000, 1000, 120, 240)
    grid = plan_window(1000, 1000, 120, 240, (130, 70, 500, 610))
    covered = np.zeros((1000, 1000), dtype=int)
    for chunk in grid.chunks:
        covered[chunk.row0: chunk.row1, chunk.col0: chunk.col1] += 1
        assert chunk.ky0 == chunk.row0 // whole.stride - 1 and chunk.kx1 == (chunk.col1 - 1) // whole.stride + 1
    assert (covered[130:630, 70:680] == 1).all() and covered.sum() == 500 * 610
    assert grid.output_window == (130, 70, 500, 610)
    assert journal_points(grid, 240) == frozenset(range(len(grid.chunks)))  # chunks start at the window's corner
    with pytest.raises(ConfigError, match="not inside the 1000 × 1000 px tile"):
        plan_window(1000, 1000, 120, 240, (900, 0, 200, 10))


def test_the_aoi_is_part_of_the_resume_key(tile):
    bandset = discover(tile)
    card = resolve_card("builtin")
    settings = dict(chunk_size=120, write_probs=False, compress="ZSTD", block=128)
    plain = run_fields(bandset, card, **settings)
    a = aoi_.resolve(bbox(0, 0, 50, 50), bandset.width, bandset.height, bandset.transform, bandset.crs)
    b = aoi_.resolve(bbox(0, 0, 50, 60), bandset.width, bandset.height, bandset.transform, bandset.crs)
    assert "aoi" not in plain
    assert run_fields(bandset, card, **settings, aoi=a.fields()) != run_fields(bandset, card, **settings, aoi=b.fields())


def test_a_run_with_an_aoi_resumes_after_an_interruption(tile, tmp_path, monkeypatch):
    from s2seg.core import chunkwriter

    config = EngineConfig(chunk_size=48, aoi=bbox(20, 30, 170, 200))  # 4 × 4 chunks of 48 px, 48 px blocks
    model = lambda: SpectralPatchModel(patch_size=32)  # noqa: E731
    reference = read(segment(tile, tmp_path / "ref", model=model(), config=config))
    calls = {"n": 0}
    original = chunkwriter.ChunkWriter.write

    def failing(self, chunk, valid, inferred):
        calls["n"] += 1
        if calls["n"] == 6:
            raise OSError("disk gone")
        return original(self, chunk, valid, inferred)

    monkeypatch.setattr(chunkwriter.ChunkWriter, "write", failing)
    with pytest.raises(OSError):
        segment(tile, tmp_path / "out", model=model(), config=config)
    monkeypatch.setattr(chunkwriter.ChunkWriter, "write", original)
    result = segment(tile, tmp_path / "out", model=model(), config=config)
    assert result.resumed_chunks == 5
    again = read(result)
    for key in PRODUCTS:
        assert again[key].tobytes() == reference[key].tobytes()



def test_the_command_line_takes_an_aoi_for_segment_and_batch(tile, tmp_path, capsys):
    from s2seg.core.cli import _parser, main

    assert main(["segment", str(tile), str(tmp_path / "out"), "--aoi", bbox(10, 20, 70, 100), "--device", "cpu",
                 "--quiet"]) == 0
    with rasterio.open(next((tmp_path / "out").glob("*_class.tif"))) as ds:
        assert (ds.height, ds.width) == (60, 80)
    args = _parser().parse_args(["batch", str(tmp_path), str(tmp_path / "b"), "--aoi", "1,2,3,4,EPSG:4326",
                                 "--bands", "B02,B03", "--scale", "0.0001", "--offset", "-0.1"])
    from s2seg.core.options import engine_config

    config = engine_config(args)
    assert (config.aoi, config.bands, config.scale, config.offset) == ("1,2,3,4,EPSG:4326", "B02,B03", 0.0001, -0.1)
    assert main(["segment", str(tile), str(tmp_path / "x"), "--aoi", "0,0,10,10", "--quiet"]) == 1
    assert "outside the tile" in capsys.readouterr().err
