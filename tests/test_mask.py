"""The cloud/shadow/snow mask of a run (issue 17): sources, the mask product, land cover hidden under
it, statistics, chunk-size invariance, resume, the journal key and the command-line option."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from doubles import SpectralPatchModel

from s2seg.core import mask as mask_
from s2seg.core.config import EngineConfig
from s2seg.core.errors import Cancelled, ConfigError, InputError, ResumeImpossible
from s2seg.core.journal import journal_path, read_journal
from s2seg.core.pipeline import segment
from s2seg.core.sample import cloud_truth_window, write_sample_tile
from s2seg.core.scl import MASK_CLASSES, MASK_COLOURS, MASK_NODATA
from s2seg.core.sentinel2 import discover

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::FutureWarning")]
SIZE = 240
CHUNK = 96  # with 32 px patches: 9 chunks, each one whole GeoTIFF block


class PatchModel(SpectralPatchModel):
    def __init__(self):
        super().__init__(patch_size=32)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture(scope="module")
def tile(tmp_path_factory) -> Path:
    return write_sample_tile(tmp_path_factory.mktemp("tile"), size=SIZE, seed=3, nodata_corner=True)


@pytest.fixture(scope="module")
def unmasked(tile, tmp_path_factory):
    out = tmp_path_factory.mktemp("unmasked")
    return segment(tile, out, model=PatchModel(), config=EngineConfig(chunk_size=CHUNK))


@pytest.fixture(scope="module")
def masked(tile, tmp_path_factory):
    out = tmp_path_factory.mktemp("masked")
    return segment(tile, out, model=PatchModel(), config=EngineConfig(chunk_size=CHUNK, mask="scl"))


# ------------------------------------------------------------------ sources, on the sample
@pytest.mark.parametrize("level, source", [("L2A", "scl"), ("L2A", "spectral"), ("L1C", "spectral")])
def test_mask_recall_on_the_sample(tmp_path, level, source):
    """Seed 3, 800²: ≥ 95 % of rendered clouds and ≤ 5 % of clear pixels hidden; with the SCL also
    ≥ 80 % of rendered shadows (the spectral test does not look for shadows)."""
    bandset = discover(write_sample_tile(tmp_path, size=800, seed=3, level=level))
    with mask_.ChunkMasker(bandset, source) as masker:
        hidden = mask_.hidden(masker.read((0, 800), (0, 800)))
    clouds, shadows, clear = cloud_truth_window(800, 3)
    assert hidden[clouds].mean() >= 0.95
    assert hidden[clear].mean() <= 0.05
    if source == "scl":
        assert hidden[shadows].mean() >= 0.80


def test_spectral_test_flags_snow_and_not_water():
    # bands B02 B03 B04 B08 B11: snow (bright, dark in SWIR), cloud (bright, white), water (dark), forest
    pixels = np.array([[.80, .85, .83, .75, .10], [.50, .51, .52, .54, .42], [.04, .035, .02, .006, .003],
                       [.025, .045, .025, .29, .15]], dtype=np.float32).T[:, None, :]
    codes = mask_.spectral_mask(pixels, np.array([[True, True, True, False]]))
    assert codes.tolist() == [[mask_.SNOW, mask_.CLOUD, mask_.CLEAR, MASK_NODATA]]


def test_auto_picks_scl_then_the_cloud_model_then_spectral(tile, tmp_path, monkeypatch):
    source, note = mask_.resolve_mode("auto", discover(tile))
    assert source == "scl" and note.startswith("mask auto: cloud/shadow/snow mask from the scene classification")
    assert "to turn it off: --mask none" in note  # the log says what auto chose and how to stop it
    l1c = discover(write_sample_tile(tmp_path, size=60, level="L1C"))
    assert mask_.resolve_mode("auto", l1c, "my-cloud-model")[0] == "model"
    monkeypatch.setattr(mask_, "available_cards", lambda: {"s2-cloud-l1c": None})
    assert mask_.resolve_mode("auto", l1c)[0] == "model"
    monkeypatch.setattr(mask_, "available_cards", lambda: {})  # ukis-csmask not installed
    assert mask_.resolve_mode("auto", l1c)[0] == "spectral"
    with pytest.raises(InputError, match=r"tile .*L1C.* has no scene classification layer"):
        mask_.resolve_mode("scl", l1c)
    with pytest.raises(ConfigError, match=r"mask must be one of auto, scl, model, spectral, none, got 'sky'"):
        EngineConfig(mask="sky")


def test_mask_product_needs_a_mask_source():
    from s2seg.core.products import select
    with pytest.raises(ConfigError, match="product mask needs a cloud/shadow/snow mask source"):
        select(EngineConfig(products=("class", "mask")))
    assert "mask" in select(EngineConfig(mask="scl")).rasters
    assert "mask" not in select(EngineConfig()).rasters


# ------------------------------------------------------------------ the run's products
def test_mask_product_codes_palette_and_names(tile, masked):
    path = masked.products["mask"]
    bandset = discover(tile)
    with mask_.ChunkMasker(bandset, "scl") as masker:
        expected = masker.read((0, SIZE), (0, SIZE))
    class_raster = read(masked.products["class"])
    with rasterio.open(path) as ds:
        codes = ds.read(1)
        assert ds.dtypes[0] == "uint8" and ds.nodata == MASK_NODATA
        assert [ds.colormap(1)[i][:3] for i in range(5)] == [
            tuple(int(c[k:k + 2], 16) for k in (1, 3, 5)) for c in MASK_COLOURS]
        assert ds.overviews(1) or SIZE < 512  # small rasters have no overviews
    from osgeo import gdal
    # (Band.GetCategoryNames() returns None in Debian's GDAL 3.6 bindings; gdalinfo's JSON reads them.)
    names = gdal.Info(str(path), format="json")["bands"][0]["categories"]
    assert tuple(names[:5]) == MASK_CLASSES and names[MASK_NODATA] == "nodata"
    nodata_input = read(next(Path(tile).rglob("*_B02_10m.tif"))) == 0
    assert (codes[nodata_input] == MASK_NODATA).all()
    assert np.array_equal(codes[~nodata_input], expected[~nodata_input])
    assert {mask_.CLOUD, mask_.SHADOW, mask_.CLEAR} <= set(np.unique(codes).tolist())
    # land cover nodata exactly where the mask hides it (or the input has no data)
    assert np.array_equal(class_raster == 255, mask_.hidden(codes))
    assert (masked.outputs["mask.qml"]).is_file()


def test_land_cover_kept_elsewhere_and_statistics_count_visible_pixels(tile, masked, unmasked):
    codes = read(masked.products["mask"])
    visible = ~mask_.hidden(codes)
    assert np.array_equal(read(masked.products["class"])[visible], read(unmasked.products["class"])[visible])
    assert masked.valid_pixels == int(visible.sum()) < unmasked.valid_pixels
    assert sum(s.pixels for s in masked.class_stats) == masked.valid_pixels
    assert sum(s.share for s in masked.class_stats) == pytest.approx(1.0)
    report = json.loads(masked.report.read_text())
    assert report["mask"]["source"] == "scl" and report["valid_pixels"] == masked.valid_pixels
    counts = np.bincount(codes.ravel(), minlength=256)
    assert report["mask"]["pixels"] == {name: int(counts[i]) for i, name in enumerate(MASK_CLASSES)}
    with_data = counts[:5].sum()
    hidden = counts[[mask_.CLOUD, mask_.SHADOW, mask_.SNOW]].sum()
    assert report["mask"]["masked_share"] == pytest.approx(hidden / with_data) and 0.05 < hidden / with_data < 0.5
    assert "mask" not in json.loads(unmasked.report.read_text()) or json.loads(unmasked.report.read_text())["mask"] is None


def test_keep_masked_writes_the_mask_and_keeps_the_land_cover(tile, unmasked, tmp_path):
    result = segment(tile, tmp_path, model=PatchModel(), config=EngineConfig(chunk_size=CHUNK, mask="scl",
                                                                             keep_masked=True))
    assert np.array_equal(read(result.products["class"]), read(unmasked.products["class"]))
    assert result.valid_pixels == unmasked.valid_pixels
    assert result.mask["kept_under_mask"] is True and result.mask["masked_share"] > 0.05


def test_chunk_size_invariance(tile, masked, tmp_path):
    whole = segment(tile, tmp_path, model=PatchModel(), config=EngineConfig(chunk_size=SIZE, mask="scl"))
    assert whole.n_chunks == 1 and masked.n_chunks == 9
    for key in ("mask", "class"):
        assert np.array_equal(read(whole.products[key]), read(masked.products[key])), key


def test_spectral_mask_on_l1c_through_the_engine(tmp_path):
    tile = write_sample_tile(tmp_path, size=SIZE, seed=3, level="L1C")
    messages: list[str] = []
    result = segment(tile, tmp_path / "out", model=PatchModel(),
                     config=EngineConfig(chunk_size=CHUNK, mask="spectral"), log=messages.append)
    assert result.mask["source"] == "spectral"
    assert any("spectral test" in m for m in messages)
    clouds = cloud_truth_window(SIZE, 3)[0]
    codes = read(result.products["mask"])
    assert (codes[clouds] == mask_.CLOUD).mean() >= 0.95


# ------------------------------------------------------------------ resume and the journal key
def test_cancelled_masked_run_resumes_to_the_same_products(tile, masked, tmp_path):
    cancel = threading.Event()

    def progress(fraction, message):
        if message.startswith("chunk 3/") and message.endswith("written"):
            cancel.set()

    config = EngineConfig(chunk_size=CHUNK, mask="scl")
    with pytest.raises(Cancelled):
        segment(tile, tmp_path, model=PatchModel(), config=config, progress=progress, cancel=cancel)
    journal = journal_path(tmp_path, masked.tile_name)
    journaled = len(read_journal(journal).done)
    assert 3 <= journaled < 9
    # another mask source is another run: not resumed from this journal
    with pytest.raises(ResumeImpossible):
        segment(tile, tmp_path, model=PatchModel(), config=config.with_(mask="spectral", resume="require"))
    resumed = segment(tile, tmp_path, model=PatchModel(), config=config)
    assert resumed.resumed_chunks == journaled
    for key in ("mask", "class", "maxprob"):
        assert np.array_equal(read(resumed.products[key]), read(masked.products[key]), equal_nan=True), key
    assert resumed.mask == masked.mask and resumed.valid_pixels == masked.valid_pixels


# ------------------------------------------------------------------ command line
def test_cli_options_set_the_engine_config():
    import argparse

    from s2seg.core.options import add_engine_options, engine_config
    parser = argparse.ArgumentParser()
    add_engine_options(parser)
    config = engine_config(parser.parse_args(["--mask", "scl", "--keep-masked"]))
    assert (config.mask, config.keep_masked) == ("scl", True)
    # the command line masks by default (as QGIS does); the Python API does what it is told
    assert (engine_config(parser.parse_args([])).mask, EngineConfig().mask) == ("auto", "none")
    with pytest.raises(SystemExit):
        parser.parse_args(["--mask", "sky"])


def test_preview_legend_gets_the_masked_share(tmp_path):
    from PIL import Image

    from s2seg.core.preview import PreviewBuilder
    builder = PreviewBuilder(64, 64, 64)
    builder.add(np.zeros((64, 64), np.uint8), 0, 0)
    builder.save(tmp_path / "plain.png", ["forest"], ["#00a000"], [1.0])
    builder.save(tmp_path / "masked.png", ["forest"], ["#00a000"], [1.0], 0.25)
    plain, masked = Image.open(tmp_path / "plain.png"), Image.open(tmp_path / "masked.png")
    assert masked.size[1] == plain.size[1] and masked.size[0] > plain.size[0]  # a longer legend line: wider
    # the second entry's swatch (below forest's) is filled with the nodata colour, black
    assert np.asarray(masked.convert("RGB"))[25, 75].tolist() == [0, 0, 0]
    assert np.asarray(plain.convert("RGB"))[25, 75].tolist() == [255, 255, 255]
