"""``--mask model``: a cloud model in the same pass as the land-cover model (two models in one run):
chunk-size invariance, resume after a cancel and after kill -9, cancel, threads, the journal key,
the real cloud U-Nets on the issue's sample and on a crop smaller than their patch."""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import rasterio
import torch
from doubles import SpectralPatchModel

from s2seg.core import mask as mask_
from s2seg.core.config import EngineConfig
from s2seg.core.errors import Cancelled, ConfigError, ModelError, ResumeImpossible
from s2seg.core.journal import journal_path, read_journal
from s2seg.core.models import available_cards
from s2seg.core.models.base import apply_activation
from s2seg.core.models.card import ModelCard
from s2seg.core.pipeline import segment
from s2seg.core.sample import cloud_truth_window, write_sample_tile
from s2seg.core.sentinel2 import discover

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::FutureWarning")]
SIZE = 240
CHUNK = 96  # 9 chunks; a multiple of both models' chunk units (48 and 24)


class LandCover(SpectralPatchModel):
    def __init__(self):
        super().__init__(patch_size=32)


class BrightCloudModel:
    """A dense 30 m cloud model double: cloud where the visible bands are bright, counting its calls."""

    def __init__(self, classes: int = 3, name: str = "cloud-test", patch_size: int = 16):
        names = ("clear", "cloud", "cloud shadow", "extra")[:classes]
        self.card = ModelCard(name=name, format="builtin", bands=("B02", "B03", "B04", "B08", "B11", "B12"),
                              patch_size=patch_size, class_names=names, class_colours=("#00ff00", "#ffffff", "#333333",
                                                                               "#ff0000")[:classes],
                              output_kind="dense", activation="softmax", input_scale="reflectance", resolution=30,
                              levels=("L1C", "L2A"))
        self.device = torch.device("cpu")
        self.calls = 0
        self.patches = 0

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.patches += batch.shape[0]
        bright = batch[:, 0:3].mean(1)
        logits = [torch.zeros_like(bright), 60 * (bright - 0.2)] + [torch.full_like(bright, -10)] * (
            self.card.num_classes - 2)
        return apply_activation(torch.stack(logits, 1), "softmax")


def read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    return write_sample_tile(tmp_path_factory.mktemp("tile"), size=SIZE, seed=3, level="L1C", nodata_corner=True)


@pytest.fixture(scope="module")
def reference(tile, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    cloud = BrightCloudModel()
    result = segment(tile, out, model=LandCover(), config=EngineConfig(chunk_size=CHUNK, mask="model"),
                     mask_model=cloud)
    assert result.n_chunks == 9 and cloud.calls > 0
    return result


def test_two_models_in_one_run(tile, reference):
    codes = read(reference.products["mask"])
    clouds = cloud_truth_window(SIZE, 3)[0]
    assert (codes[clouds] == mask_.CLOUD).mean() >= 0.95
    assert np.array_equal(read(reference.products["class"]) == 255, mask_.hidden(codes))
    assert reference.mask["source"] == "model" and reference.mask["masked_share"] > 0.03


def test_chunk_size_invariance(tile, reference, tmp_path):
    whole = segment(tile, tmp_path, model=LandCover(), config=EngineConfig(chunk_size=SIZE, mask="model"),
                    mask_model=BrightCloudModel())
    assert whole.n_chunks == 1
    for key in ("mask", "class", "maxprob"):
        assert np.array_equal(read(whole.products[key]), read(reference.products[key]), equal_nan=True), key


def test_each_cloud_patch_is_computed_once_per_run(tile, tmp_path):
    """9 chunks share the cloud model's 48 px (16 px at 30 m) patches with their neighbours: the run
    computes each patch once, as many as one chunk over the whole tile, and says so in the log."""
    counts, messages = {}, []
    for chunk in (CHUNK, SIZE):
        cloud = BrightCloudModel()
        segment(tile, tmp_path / str(chunk), model=LandCover(), config=EngineConfig(chunk_size=chunk, mask="model"),
                mask_model=cloud, log=messages.append)
        counts[chunk] = cloud.patches
    assert counts[CHUNK] == counts[SIZE] > 0
    assert f"cloud model: {counts[CHUNK]} patches computed" in "\n".join(messages)


@pytest.mark.parametrize("first", [0, 4])
def test_patch_reuse_computes_every_patch_of_the_run_once_and_keeps_few(first):
    """The plan for the chunks of a run (all of them, or those left after a resume): every patch of their
    ranges computed by exactly one chunk, the first that needs it; the store never holds more than the
    patch rows and columns neighbouring chunks share."""
    from s2seg.core.grid import plan

    grid = mask_.mask_grid(plan(960, 960, 32, 96), BrightCloudModel().card)  # 10 × 10 chunks, 16 px patches at 30 m
    order = list(range(first * 10, len(grid.chunks)))
    reuse = mask_.PatchReuse(grid, order)
    computed = np.zeros((50, 50), dtype=int)
    needed = np.zeros((50, 50), dtype=bool)
    for index in order:
        c = grid.chunks[index]
        window = (slice(c.ky0 - reuse.y0, c.ky1 - reuse.y0), slice(c.kx0 - reuse.x0, c.kx1 - reuse.x0))
        computed[window] += reuse.compute[index]
        needed[window] = True
    assert np.array_equal(computed, needed.astype(int))
    assert reuse.compute[order[0]].all()  # after a resume the store is empty: the first chunk computes everything
    shared_rows = grid.chunks[0].ky1 - grid.chunks[10].ky0  # with the chunk row below
    shared_cols = grid.chunks[0].kx1 - grid.chunks[1].kx0  # with the next chunk in the row
    assert reuse.capacity <= shared_rows * needed.shape[1] + shared_cols * grid.chunks[0].n_patches_y


def test_cancel_then_resume_gives_the_same_products_and_joins_every_thread(tile, reference, tmp_path, monkeypatch):
    before = set(threading.enumerate())
    cancel = threading.Event()

    def progress(fraction, message):
        if message.startswith("chunk 4/") and message.endswith("written"):
            cancel.set()

    config = EngineConfig(chunk_size=CHUNK, mask="model")
    with pytest.raises(Cancelled):
        segment(tile, tmp_path, model=LandCover(), config=config, progress=progress, cancel=cancel,
                mask_model=BrightCloudModel())
    assert set(threading.enumerate()) <= before  # reader pools of both models, stages: all joined
    journaled = len(read_journal(journal_path(tmp_path, reference.tile_name)).done)
    assert 4 <= journaled < 9
    # another cloud model is another run: its journal is not resumed
    with pytest.raises(ResumeImpossible):
        segment(tile, tmp_path, model=LandCover(), config=config.with_(resume="require"),
                mask_model=BrightCloudModel(name="other-cloud-model"))
    with monkeypatch.context() as m:  # nor is one whose snow test changed (its chunks' snow would differ)
        m.setattr(mask_, "SNOW_TEST", {**mask_.SNOW_TEST, "ndsi_min": 0.42})
        with pytest.raises(ResumeImpossible, match="snow_test"):
            segment(tile, tmp_path, model=LandCover(), config=config.with_(resume="require"),
                    mask_model=BrightCloudModel())
    cloud = BrightCloudModel()
    resumed = segment(tile, tmp_path, model=LandCover(), config=config, mask_model=cloud)
    assert resumed.resumed_chunks == journaled
    for key in ("mask", "class", "maxprob"):
        assert np.array_equal(read(resumed.products[key]), read(reference.products[key]), equal_nan=True), key
    assert resumed.mask == reference.mask


def test_cancel_during_the_cloud_model_stops_the_run(tile, tmp_path):
    cancel = threading.Event()

    class Cancelling(BrightCloudModel):
        def predict(self, batch):
            cancel.set()  # the next batch check of either model stops the run
            return super().predict(batch)

    with pytest.raises(Cancelled):
        segment(tile, tmp_path, model=LandCover(), config=EngineConfig(chunk_size=CHUNK, mask="model"),
                cancel=cancel, mask_model=Cancelling())
    assert not list(tmp_path.glob("*_mask.tif"))


def test_a_model_that_is_not_a_cloud_model_is_refused(tile, tmp_path):
    with pytest.raises(ModelError, match=r"mask model 'cloud-test' has 4 classes; a cloud mask model gives 3"):
        segment(tile, tmp_path, model=LandCover(), config=EngineConfig(chunk_size=CHUNK, mask="model"),
                mask_model=BrightCloudModel(classes=4))


def test_a_chunk_size_off_the_cloud_models_grid_is_refused(tile, tmp_path):
    """144 px suits the land-cover model (a multiple of 48) but not a cloud model of 64 px patches at
    30 m (stride 96 px): refused before anything is written, naming the sizes."""
    with pytest.raises(ConfigError, match=r"chunk size 144 must be a positive multiple of 96"):
        segment(tile, tmp_path, model=LandCover(), config=EngineConfig(chunk_size=144, mask="model"),
                mask_model=BrightCloudModel(patch_size=64))
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ snow: the cloud models know none
class ConstantCloudModel(BrightCloudModel):
    """A cloud model double that gives one class everywhere (0 clear, 1 cloud, 2 cloud shadow)."""

    def __init__(self, cls: int):
        super().__init__()
        self.cls = cls

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        logits = torch.full((batch.shape[0], 3, *batch.shape[2:]), -10.0)
        logits[:, self.cls] = 10.0
        return apply_activation(logits, "softmax")


@pytest.fixture(scope="module")
def snowy_patch(real_patches):
    """The real Finnish February BEN v1 patch (GeoTIFF band folder): snow over fields and forest."""
    return next(p for p in real_patches if p.snow).folder


@pytest.mark.parametrize("cls, code", [(0, mask_.SNOW), (1, mask_.CLOUD), (2, mask_.SHADOW)])
def test_snow_where_the_cloud_model_says_clear_and_the_snow_test_says_snow(snowy_patch, tmp_path, cls, code):
    """On a real snowy patch, a cloud model that says clear everywhere gives snow exactly where the
    spectral test of ``--mask spectral`` does, on the same 10 m pixels (before: all clear); cloud and
    shadow stay what the model says."""
    result = segment(snowy_patch, tmp_path, model=LandCover(), config=EngineConfig(mask="model"),
                     mask_model=ConstantCloudModel(cls))
    codes = read(result.products["mask"])
    with mask_.ChunkMasker(discover(snowy_patch), "spectral") as masker:
        spectral = masker.read((0, codes.shape[0]), (0, codes.shape[1]))
    snow = spectral == mask_.SNOW
    assert snow.mean() > 0.5  # the patch is snow, and the test sees it
    expected = np.where(snow, code, mask_.CLEAR) if cls == 0 else np.full_like(codes, code)
    assert np.array_equal(codes, expected)
    assert np.array_equal(read(result.products["class"]) == 255, mask_.hidden(codes))


def test_snow_test_needs_its_bands_and_says_so_without_them(tmp_path):
    """A custom cloud model on a tile without B11: the cloud mask runs, snow is not tested, the log says why."""
    from s2seg.benchmarks.evaluation_data import _write_band_folder

    rng = np.random.default_rng(0)
    bands = {b: rng.integers(500, 3000, (120, 120), dtype=np.uint16) for b in ("B02", "B03", "B04", "B08")}
    _write_band_folder(tmp_path / "four", "four", bands, 32633)
    model = ConstantCloudModel(0)
    model.card = dataclasses.replace(model.card, bands=("B02", "B03", "B04", "B08"))
    land = LandCover()
    land.card = dataclasses.replace(land.card, bands=("B02", "B03", "B04", "B08"))
    messages: list[str] = []
    result = segment(tmp_path / "four", tmp_path / "out", model=land, config=EngineConfig(mask="model"),
                     mask_model=model, log=messages.append)
    assert (read(result.products["mask"]) == mask_.CLEAR).all()
    assert any("snow is not masked: the tile lacks the bands of the snow test (B03, B08, B11)" in m for m in messages)


# ------------------------------------------------------------------ the shipped cloud U-Nets
needs_csmask = pytest.mark.skipif("s2-cloud-l2a" not in available_cards(), reason="ukis-csmask not installed")


@needs_csmask
def test_real_cloud_model_on_the_issue_sample(tmp_path):
    """Seed 3, 800², L2A: the ukis-csmask U-Net beside a land-cover model finds ≥ 95 % of the rendered
    clouds and ≥ 80 % of the shadows, and masks ≤ 5 % of the clear pixels."""
    tile = write_sample_tile(tmp_path, size=800, seed=3)
    result = segment(tile, tmp_path / "out", model=LandCover(), config=EngineConfig(mask="model", device="cpu"))
    hidden = mask_.hidden(read(result.products["mask"]))
    clouds, shadows, clear = cloud_truth_window(800, 3)
    assert hidden[clouds].mean() >= 0.95
    assert hidden[shadows].mean() >= 0.80
    assert hidden[clear].mean() <= 0.05
    codes = read(result.products["mask"])
    assert (codes[clouds] == mask_.CLOUD).mean() >= 0.95  # the snow test turns clear into snow, never cloud


@needs_csmask
def test_real_cloud_model_masks_snow_on_a_real_snowy_patch(snowy_patch, tmp_path):
    """The U-Nets know clear, cloud and shadow only: on the real Finnish February patch (snow from
    edge to edge) ``--mask model`` masked nothing before; now the snow is snow."""
    result = segment(snowy_patch, tmp_path, model=LandCover(), config=EngineConfig(mask="model", device="cpu"))
    codes = read(result.products["mask"])
    assert (codes == mask_.SNOW).mean() >= 0.5
    assert result.mask["shares"]["snow/ice"] >= 0.5


@needs_csmask
def test_real_cloud_model_on_a_crop_smaller_than_its_patch(tmp_path):
    """The U-Nets' patch is 768 px at 10 m: a 240² L1C crop runs (the grid reflects the tile) and auto
    picks the L1C model for a tile without SCL."""
    tile = write_sample_tile(tmp_path, size=SIZE, seed=3, level="L1C")
    messages: list[str] = []
    result = segment(tile, tmp_path / "out", model=LandCover(), config=EngineConfig(mask="auto", device="cpu"),
                     log=messages.append)
    assert any("model 's2-cloud-l1c', in the same pass" in m for m in messages)
    assert result.mask["source"] == "model"
    hidden = mask_.hidden(read(result.products["mask"]))
    assert hidden[cloud_truth_window(SIZE, 3)[0]].mean() >= 0.90


# ------------------------------------------------------------------ kill -9 of the real command line
class BrightCloudNet(torch.nn.Module):
    """TorchScript twin of :class:`BrightCloudModel` (loadable by path, for the command line)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = x[:, 0:3].mean(1)
        return torch.stack([torch.zeros_like(bright), 60 * (bright - 0.2), torch.full_like(bright, -10.0)], 1)


class MeanClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3))) * 20


def save_torchscript(module: torch.nn.Module, card: ModelCard, path) -> str:
    torch.jit.script(module.eval()).save(str(path))
    values = card.to_dict()
    values.update(format="torchscript", activation="softmax")
    del values["path"]  # the file beside the card
    path.with_suffix(".card.json").write_text(json.dumps(values))
    return str(path)


def test_kill_9_mid_tile_then_resume_gives_identical_products(tile, tmp_path):
    from s2seg.core.cli import main

    torch.manual_seed(1)
    land = save_torchscript(MeanClassifier(), LandCover().card, tmp_path / "land.pt")
    cloud = save_torchscript(BrightCloudNet(), BrightCloudModel().card, tmp_path / "cloud.pt")
    config = EngineConfig(chunk_size=CHUNK, mask="model", mask_model=cloud, device="cpu")
    expected = segment(tile, tmp_path / "reference", model=land, config=config)
    args = ["segment", str(tile), str(tmp_path / "out"), "--model", land, "--chunk-size", str(CHUNK), "--device", "cpu",
            "--mask", "model", "--mask-model", cloud, "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "s2seg.core.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    journal = journal_path(tmp_path / "out", expected.tile_name)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # freeze it once two chunks are journaled, then kill it
        assert proc.poll() is None, proc.stderr.read()
        if journal.exists() and len([ln for ln in journal.read_bytes().split(b"\n")[1:] if ln.strip()]) >= 2:
            proc.send_signal(signal.SIGSTOP)
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    journaled = len(read_journal(journal).done)
    assert 2 <= journaled < 9 and not list((tmp_path / "out").glob("*_mask.tif"))
    assert main(args) == 0
    for key in ("mask", "class", "maxprob"):
        assert np.array_equal(read(tmp_path / "out" / expected.products[key].name), read(expected.products[key]),
                              equal_nan=True), key
    report = json.loads((tmp_path / "out" / expected.report.name).read_text())
    assert report["resumed_chunks"] == journaled and report["mask"] == expected.mask
