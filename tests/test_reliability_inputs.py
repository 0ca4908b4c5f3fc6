"""The bad-input matrix of issue 8: every case stops with a specific message naming the file or
parameter (exit code ≠ 0 from the CLI), and leaves no output that looks complete.

Covered elsewhere and referenced here: a torch.save pickle is refused without being unpickled
(tests/test_models_torchscript.py::test_torch_save_pickle_is_refused_without_unpickling, repeated
below through the CLI); Sentinel-1 BigEarthNet configs (tests/test_models_ben_v2.py::
test_sentinel1_models_are_refused, repeated below through the CLI); a model returning the wrong
number of classes mid-tile (tests/test_pipeline.py::test_wrong_number_of_classes_is_a_model_error).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from doubles import Evil, TinyClassifier

from s2seg.core.cli import main
from s2seg.core.config import EngineConfig
from s2seg.core.errors import ConfigError, InputError, ModelError
from s2seg.core.models.base import apply_activation
from s2seg.core.models.card import ModelCard
from s2seg.core.nomenclature import BIGEARTHNET19_COLOURS, BIGEARTHNET19_NAMES
from s2seg.core import pipeline
from s2seg.core.pipeline import segment
from s2seg.core.sample import write_sample_tile

pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")]
TILE_NAME = "T32UNU_20240612T103031_L2A_N0510"  # stem, level, baseline (sentinel2._tile_name)
CARD = {
    "name": "tiny", "format": "torchscript", "bands": ["B02", "B04", "B08", "B11"], "patch_size": 32,
    "class_names": list(BIGEARTHNET19_NAMES[:5]), "class_colours": list(BIGEARTHNET19_COLOURS[:5]),
    "output_kind": "patch", "activation": "softmax", "input_scale": "reflectance",
}


class BadModel:
    """A patch model whose output is poisoned with ``value`` (NaN or Inf) from its ``from_call``-th batch."""

    def __init__(self, value: float, from_call: int = 1):
        self.card = ModelCard(name="bad-values", format="builtin", bands=("B02", "B04", "B08", "B11"), patch_size=32,
                              class_names=BIGEARTHNET19_NAMES[:5], class_colours=BIGEARTHNET19_COLOURS[:5])
        self.device = torch.device("cpu")
        self.value, self.from_call, self.calls = value, from_call, 0

    def predict(self, batch):
        self.calls += 1
        out = apply_activation(batch.mean(dim=(2, 3)) @ torch.ones(4, 5), "softmax")
        if self.calls >= self.from_call:
            out[0, 0] = self.value
        return out


def cli(capsys, *args: str) -> tuple[int, str]:
    """Run the CLI in this process; (exit code, stderr)."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_nothing_finished(folder: Path) -> None:
    if folder.exists():
        finished = [p.name for p in folder.iterdir() if p.name.endswith((".tif", ".png", "_report.json"))]
        assert finished == [], f"finished-looking outputs left: {finished}"


def assert_no_engine_threads(folder: Path | None = None) -> None:
    assert not [t.name for t in threading.enumerate() if t.name.startswith("s2seg-")]
    if folder is not None and Path("/proc/self/fd").is_dir():  # and no file of the outputs left open
        links = [os.readlink(fd) for fd in Path("/proc/self/fd").iterdir() if fd.is_symlink()]
        assert not [link for link in links if link.startswith(str(folder))]


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    return write_sample_tile(tmp_path_factory.mktemp("tile"), size=240, seed=4)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A small TorchScript patch classifier with its sidecar card: loadable by path from the CLI."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    path = folder / "tiny.pt"
    torch.jit.script(TinyClassifier(bands=4, classes=5).eval()).save(str(path))
    path.with_suffix(".card.json").write_text(json.dumps(CARD))
    return path


def card_file(folder: Path, model_file: Path, **changes) -> Path:
    """A card JSON pointing at the tiny model, with some fields changed."""
    path = folder / f"{changes.get('name', 'card')}.card.json"
    path.write_text(json.dumps({**CARD, "path": str(model_file), **changes}))
    return path


def write_band(path: Path, res: int, size: int = 240, origin=(600000.0, 5300040.0), epsg: int = 32632) -> None:
    n = size * 10 // res
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=1, dtype="uint16", crs=f"EPSG:{epsg}",
                       transform=from_origin(origin[0], origin[1], res, res)) as ds:
        ds.write(np.full((1, n, n), 1500, dtype=np.uint16))


# ------------------------------------------------------------------ the tile
def test_empty_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = cli(capsys, "segment", empty, tmp_path / "out")
    assert code == 1
    assert f"s2seg: error: tile folder {empty} is empty; give a .SAFE folder, its .zip or a folder of band files" in err
    assert not (tmp_path / "out").exists()


def test_folder_without_sentinel2_bands(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.tif").write_bytes(b"II*\0")
    (folder / "notes.txt").write_text("no bands here")
    code, err = cli(capsys, "segment", folder, tmp_path / "out")
    assert code == 1
    assert f"s2seg: error: no Sentinel-2 band files (*_B02.jp2, *_B8A.tif …) found in {folder}" in err


def test_band_the_model_needs_is_missing_names_band_and_model(tile, tmp_path, capsys):
    copy = tmp_path / tile.name
    shutil.copytree(tile, copy)
    next(copy.rglob("*_B11_20m.tif")).unlink()
    code, err = cli(capsys, "segment", copy, tmp_path / "out")
    assert code == 1
    assert f"s2seg: error: tile {copy} lacks band(s) B11 that model 'builtin' needs (found: B01, B02," in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("b03", "pattern"), [
    ({"epsg": 32633}, r"band B03 \(.*_B03\.tif\) is in EPSG:32633, but B02 \(.*_B02\.tif\) is in EPSG:32632"),
    ({"origin": (601000.0, 5300040.0)}, r"band B03 \(.*_B03\.tif\) covers \(601000\.0, .*\), which does not match B02 \(.*_B02\.tif\) covering \(600000\.0, "),
], ids=["crs", "footprint"])
def test_bands_with_different_crs_or_footprint(tmp_path, capsys, b03, pattern):
    folder = tmp_path / "bands"
    folder.mkdir()
    write_band(folder / "T32UNU_20240612T103031_B02.tif", 10)
    write_band(folder / "T32UNU_20240612T103031_B03.tif", 10, **b03)
    code, err = cli(capsys, "segment", folder, tmp_path / "out")
    assert code == 1
    assert re.search(pattern, err), err
    assert not (tmp_path / "out").exists()


def truncate_before_block_row(path: Path, block_row: int) -> None:
    """Cut a tiled GeoTIFF just before the first block of ``block_row``: the header and the rows above stay readable."""
    from osgeo import gdal

    ds = gdal.Open(str(path))
    offset = int(ds.GetRasterBand(1).GetMetadataItem(f"BLOCK_OFFSET_0_{block_row}", "TIFF"))
    ds = None
    with open(path, "r+b") as f:
        f.truncate(offset)


def test_truncated_geotiff_fails_when_the_bad_window_is_read(tmp_path, capsys):
    tile = write_sample_tile(tmp_path / "tile", size=600, seed=1)
    band = next(tile.rglob("*_B04_10m.tif"))
    truncate_before_block_row(band, 1)  # 256 px blocks: rows ≥ 256 are gone
    out = tmp_path / "out"
    messages = []
    with pytest.raises(InputError) as info:
        segment(tile, out, model=BadModel(value=0.25, from_call=10**9), config=EngineConfig(chunk_size=192), log=messages.append)
    message = str(info.value)
    assert message.startswith(f"cannot read band B04 from {band} (window rows ")
    # the chunks above the damage were written, journaled and kept for a resume once the file is repaired
    assert "of 16 chunk(s) are saved in" in message and "run again with the same settings to resume" in message
    assert_nothing_finished(out)
    assert_no_engine_threads(out)


def test_corrupt_jpeg2000_band_through_the_cli(tmp_path, capsys):
    tile = write_sample_tile(tmp_path / "tile", size=240, seed=1, fmt="jp2")
    band = next(tile.rglob("*_B08_10m.jp2"))
    data = band.read_bytes()
    band.write_bytes(data[: len(data) * 2 // 3])  # the header is intact: discovery succeeds
    out = tmp_path / "out"
    code, err = cli(capsys, "segment", tile, out)
    assert code == 1
    assert f"s2seg: error: cannot read band B08 from {band} (window rows " in err
    assert "partial outputs were removed" in err
    assert_nothing_finished(out)
    assert_no_engine_threads()


def test_l1c_tile_given_to_an_l2a_only_model_warns(tmp_path, model_file, capsys):
    tile = write_sample_tile(tmp_path / "tile", size=240, seed=1, level="L1C")
    card = card_file(tmp_path, model_file, name="tiny-l2a", levels=["L2A"])
    code, err = cli(capsys, "segment", tile, tmp_path / "out", "--model", card, "--quiet")
    assert code == 0
    assert f"warning: model 'tiny-l2a' was trained on L2A data but {tile.name} is L1C; results may be poor" in err


def test_sentinel1_bigearthnet_model_is_refused(tile, tmp_path, capsys):
    folder = tmp_path / "resnet50-all-v0.2.0"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"config": {"network_type": "resnet50", "channels": 12, "classes": 19, "image_size": 120}}))
    code, err = cli(capsys, "segment", tile, tmp_path / "out", "--model", folder)
    assert code == 1
    assert f"s2seg: error: BigEarthNet v2 model {folder} (all, 12 channels) takes Sentinel-1 VV/VH bands, which a Sentinel-2 tile does not have" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ sizes
@pytest.mark.parametrize(("args", "message"), [
    (["--chunk-size", "-60"], "chunk size must be 0 (automatic) or a positive number of pixels, got -60"),
    (["--chunk-size", "100"], "chunk size 100 must be a positive multiple of 60 (lcm of the 60 m band scale 6 and the patch stride 60); nearest valid: 60 or 120"),
    (["--batch-size", "-1"], "batch size must be 0 (automatic) or a positive number of patches, got -1"),
])
def test_chunk_and_batch_size_out_of_range(tile, tmp_path, capsys, args, message):
    code, err = cli(capsys, "segment", tile, tmp_path / "out", *args)
    assert code == 1
    assert f"s2seg: error: {message}" in err
    assert not (tmp_path / "out").exists()


def test_sizes_that_are_not_numbers_are_refused_by_the_parser(tile, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["segment", str(tile), str(tmp_path / "out"), "--chunk-size", "big"])
    assert info.value.code == 2
    assert "--chunk-size: invalid int value: 'big'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="chunk size must be 0 .* got True"):
        EngineConfig(chunk_size=True)


def test_zero_means_automatic_and_a_chunk_larger_than_the_tile_is_one_chunk(tile, tmp_path, model_file, capsys):
    """Friendly on purpose: a chunk at least as large as the tile (even off the 60 px grid) processes the
    tile as one chunk rather than failing; 0 chooses chunk and batch size automatically."""
    code, err = cli(capsys, "segment", tile, tmp_path / "out", "--model", model_file, "--chunk-size", "1000",
                    "--batch-size", "0", "--quiet")
    assert code == 0
    assert "chunk size 1000 is at least the tile size (240 × 240 px): processing the tile as one chunk of 240 px" in err
    assert "1 chunk(s) of 240 px" in err


@pytest.mark.parametrize(("changes", "message"), [
    ({"patch_size": 7}, "patch_size must be an even number of pixels ≥ 12, got 7"),
    ({"patch_size": 0}, "patch_size must be an even number of pixels ≥ 12, got 0"),
    ({"patch_size": -32}, "patch_size must be an even number of pixels ≥ 12, got -32"),
])
def test_patch_size_out_of_range(tile, tmp_path, model_file, capsys, changes, message):
    code, err = cli(capsys, "segment", tile, tmp_path / "out", "--model", card_file(tmp_path, model_file, **changes))
    assert code == 1
    assert message in err
    assert_nothing_finished(tmp_path / "out")


# ------------------------------------------------------------------ the output folder
def test_output_folder_that_is_a_file(tile, tmp_path, capsys):
    target = tmp_path / "out"
    target.write_text("")
    code, err = cli(capsys, "segment", tile, target)
    assert code == 1 and f"s2seg: error: output folder {target} is a file" in err


@pytest.fixture
def mount_tmpfs(tmp_path):
    """Mount a tmpfs (needs root with CAP_SYS_ADMIN); yields a function (name, options) → mount point."""
    mounted = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); root ignores file modes, "
                        "so a read-only or full file system is the only honest way to test this")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_output_folder_on_a_read_only_file_system(tile, mount_tmpfs, capsys):
    point = mount_tmpfs("ro", "ro,size=1m")
    code, err = cli(capsys, "segment", tile, point)
    assert code == 1
    assert f"s2seg: error: output folder {point} is not writable: Read-only file system" in err
    code, err = cli(capsys, "segment", tile, point / "sub")
    assert code == 1
    assert f"s2seg: error: cannot create output folder {point / 'sub'}: Read-only file system" in err


def test_output_disk_full(tile, mount_tmpfs, model_file, capsys):
    point = mount_tmpfs("full", "size=256k")
    code, err = cli(capsys, "segment", tile, point, "--model", model_file, "--probs", "--chunk-size", "96", "--quiet")
    assert code == 1
    assert "s2seg: error: disk full while writing " in err and "free some space or choose another output folder" in err
    assert_nothing_finished(point)
    assert_no_engine_threads(point)


def test_existing_outputs_need_overwrite(tile, tmp_path, model_file, capsys):
    out = tmp_path / "out"
    assert cli(capsys, "segment", tile, out, "--model", model_file, "--mask", "none", "--quiet")[0] == 0
    code, err = cli(capsys, "segment", tile, out, "--model", model_file, "--mask", "none", "--quiet")
    assert code == 1
    stac = f", {TILE_NAME}_stac.json" if (out / f"{TILE_NAME}_stac.json").exists() else ""  # with pystac installed
    assert (f"s2seg: error: outputs already exist ({TILE_NAME}_class.tif, {TILE_NAME}_maxprob.tif, {TILE_NAME}_entropy.tif, "
            f"{TILE_NAME}_gap.tif, {TILE_NAME}_preview.png, {TILE_NAME}_report.json{stac}) in {out}; "
            f"use --overwrite to replace them") in err
    assert cli(capsys, "segment", tile, out, "--model", model_file, "--quiet", "--overwrite")[0] == 0


# ------------------------------------------------------------------ the model
@pytest.mark.parametrize("asynchronous", [False, True], ids=["checked-per-batch", "checked-by-the-writer"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_model_producing_nan_or_inf(tile, tmp_path, value, asynchronous, monkeypatch):
    # Accelerators fold the test into a device flag that the writer reads per chunk (forced here on the CPU).
    monkeypatch.setattr(pipeline, "_asynchronous", lambda device: asynchronous)
    with pytest.raises(ModelError, match="model 'bad-values' produced NaN or Inf values"):
        segment(tile, tmp_path / "out", model=BadModel(value), config=EngineConfig(chunk_size=96))
    assert_nothing_finished(tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())  # nothing was journaled: nothing kept
    assert_no_engine_threads(tmp_path / "out")


def test_model_with_the_wrong_number_of_classes_for_its_card(tile, tmp_path, model_file, capsys):
    card = card_file(tmp_path, model_file, class_names=CARD["class_names"][:4], class_colours=CARD["class_colours"][:4])
    code, err = cli(capsys, "segment", tile, tmp_path / "out", "--model", card)
    assert code == 1
    assert "s2seg: error: model 'tiny' returned shape (1, 5), expected (1, 4) (4 classes, patch output); check the card's class_names and output_kind" in err
    assert list((tmp_path / "out").iterdir()) == []  # refused at load time, before any file


def test_pickle_model_file_is_refused_and_never_unpickled(tile, tmp_path, capsys):
    """The loader-level test is tests/test_models_torchscript.py::test_torch_save_pickle_is_refused_without_unpickling."""
    marker = tmp_path / "unpickled"
    evil = tmp_path / "evil.pt"
    torch.save(Evil(marker), str(evil))
    evil.with_suffix(".card.json").write_text(json.dumps(CARD))
    code, err = cli(capsys, "segment", tile, tmp_path / "out", "--model", evil)
    assert code == 1
    assert "evil.pt was written with torch.save" in err and "refuses to unpickle it" in err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("changes", "message"), [
    ({"class_colours": CARD["class_colours"][:2]}, "5 class names but 2 class colours"),
    ({"mean": [1.0, 2.0]}, "mean has 2 values for 4 bands"),
    ({"mean": [0.0] * 4}, "give both mean and std, or neither"),
    ({"std": [1.0, 0.0, 1.0, 1.0], "mean": [0.0] * 4}, "std values must be positive"),
    ({"bands": ["B02", "VV"]}, "unknown Sentinel-2 band ids ['VV']"),
    ({"output_kind": "pixels"}, "output_kind must be one of patch, dense, got 'pixels'"),
    ({"levels": ["L3"]}, "levels must be a non-empty subset of ('L1C', 'L2A'), got ['L3']"),
])
def test_card_with_inconsistent_fields(tile, tmp_path, model_file, capsys, changes, message):
    card = card_file(tmp_path, model_file, **changes)
    code, err = cli(capsys, "segment", tile, tmp_path / "out", "--model", card)
    assert code == 1
    assert f"s2seg: error: model card {card}: model card 'tiny': {message}" in err
    assert not (tmp_path / "out").exists()
