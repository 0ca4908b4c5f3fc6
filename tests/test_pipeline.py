"""End-to-end runs of the engine on small real-format tiles (GeoTIFF/JP2 bands, SAFE metadata)."""
import dataclasses
import json
import os
import threading

import numpy as np
import pytest
import rasterio
import torch
from osgeo import gdal

from doubles import ConvDenseModel, SpectralPatchModel

from s2seg.core.config import EngineConfig
from s2seg.core.errors import Cancelled, ConfigError, ModelError, OutputError, OutputsExist
from s2seg.core.models.card import ModelCard
from s2seg.core.nomenclature import BIGEARTHNET19_COLOURS, BIGEARTHNET19_NAMES
from s2seg.core import pipeline
from s2seg.core.pipeline import segment
from s2seg.core.sample import write_sample_tile
from s2seg.core.sentinel2 import discover

FLOATS = ("maxprob", "entropy", "gap")


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    return write_sample_tile(tmp_path_factory.mktemp("tile"), size=360, seed=3, level="L2A", layout="safe", nodata_corner=True)


def read(path, band=None):
    with rasterio.open(path) as ds:
        return ds.read(band) if band else ds.read()


def test_builtin_end_to_end_outputs(tile, tmp_path):
    result = segment(tile, tmp_path / "out", config=EngineConfig(write_probs=True))
    paths = result.products
    assert set(paths) == {"class", "maxprob", "entropy", "gap", "probs"}
    with rasterio.open(paths["class"]) as ds:
        assert ds.dtypes[0] == "uint8" and ds.nodata == 255 and ds.crs.to_epsg() == 32632
        assert ds.profile["tiled"] and ds.compression is not None
        assert ds.colormap(1)[11][:3] == (0xE6, 0xF2, 0xFF)
        classes = ds.read(1)
    # (Band.GetCategoryNames() returns None in Debian's GDAL 3.6 bindings; gdalinfo's JSON reads them.)
    assert gdal.Info(str(paths["class"]), format="json")["bands"][0]["categories"][11] == "Marine waters"
    with rasterio.open(paths["probs"]) as ds:
        assert ds.count == 19 and ds.descriptions[0] == "Agro-forestry areas"
        probs = ds.read()
    nodata = classes == 255
    assert 0 < nodata.sum() < classes.size / 2  # the nodata corner, and only it
    maxprob, entropy, gap = (read(paths[k], 1) for k in FLOATS)
    for product in (maxprob, entropy, gap):
        assert np.isnan(product[nodata]).all() and np.isfinite(product[~nodata]).all()
    assert (maxprob[~nodata] <= 1 + 1e-6).all() and (gap[~nodata] >= 0).all()
    assert (entropy[~nodata] >= 0).all() and (entropy[~nodata] <= np.log2(19) + 1e-5).all()
    np.testing.assert_allclose(probs[:, ~nodata].max(axis=0), maxprob[~nodata], atol=1e-6)
    assert np.array_equal(probs[:, ~nodata].argmax(axis=0), classes[~nodata])
    assert result.preview.is_file() and len(np.unique(classes[~nodata])) >= 3
    report = json.loads(result.report.read_text())
    assert report["model"]["name"] == "builtin" and report["tile"]["level"] == "L2A" and report["n_chunks"] == result.n_chunks
    assert abs(sum(s.share for s in result.class_stats) - 1) < 1e-9
    assert not list((tmp_path / "out").glob("*.part"))


@pytest.mark.parametrize("make_model", [lambda: "builtin", SpectralPatchModel], ids=["dense", "patch"])
def test_outputs_do_not_depend_on_chunk_size(tile, tmp_path, make_model):
    outs = []
    for chunk_size in (120, 360):
        result = segment(tile, tmp_path / str(chunk_size), model=make_model(), config=EngineConfig(chunk_size=chunk_size))
        assert result.n_chunks == (9 if chunk_size == 120 else 1)
        outs.append(result.products)
    assert np.array_equal(read(outs[0]["class"]), read(outs[1]["class"]))
    for key in FLOATS:
        np.testing.assert_allclose(read(outs[0][key]), read(outs[1][key]), atol=1e-5, equal_nan=True)


def test_patch_level_products_are_the_same_with_and_without_probabilities(tile, tmp_path):
    """Without --probs patch-level strips are blended and summarised in one fused pass."""
    fused = segment(tile, tmp_path / "fused", model=SpectralPatchModel(), config=EngineConfig(chunk_size=120)).products
    split = segment(tile, tmp_path / "split", model=SpectralPatchModel(), config=EngineConfig(chunk_size=120, write_probs=True)).products
    assert np.array_equal(read(fused["class"]), read(split["class"]))
    for key in FLOATS:
        np.testing.assert_allclose(read(fused[key]), read(split[key]), atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("make_model", [lambda: "builtin", SpectralPatchModel, ConvDenseModel], ids=["dense", "patch", "dense-30m"])
def test_accelerator_path_writes_the_same_products(tile, tmp_path, make_model, monkeypatch):
    """On accelerators chunks are normalised on the device and batches gathered there, and NaN/Inf
    is read by the writer once per chunk: forced on the CPU, that path writes the same products."""
    config = EngineConfig(chunk_size=120 if make_model is not ConvDenseModel else 0)
    host = segment(tile, tmp_path / "host", model=make_model(), config=config).products
    monkeypatch.setattr(pipeline, "_asynchronous", lambda device: True)
    resident = segment(tile, tmp_path / "resident", model=make_model(), config=config).products
    assert np.array_equal(read(host["class"]), read(resident["class"]))
    for key in FLOATS:
        np.testing.assert_allclose(read(host[key]), read(resident[key]), atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("make_model", [ConvDenseModel, lambda: SpectralPatchModel(patch_size=20, resolution=20)],
                         ids=["dense-30m", "patch-20m"])
def test_coarse_model_outputs_do_not_depend_on_chunk_size(tile, tmp_path, make_model):
    """A 20/30 m model: chunks average 10 m blocks, run the model's grid and interpolate back to 10 m;
    one more patch beyond each chunk edge makes the result the same for any chunking."""
    outs = []
    for chunk_size in (120, 360):
        result = segment(tile, tmp_path / str(chunk_size), model=make_model(), config=EngineConfig(chunk_size=chunk_size))
        assert result.n_chunks == (9 if chunk_size == 120 else 1)
        outs.append(result.products)
    classes = read(outs[0]["class"], 1)
    assert classes.shape == (360, 360) and np.array_equal(classes, read(outs[1]["class"], 1))
    assert len(np.unique(classes[classes != 255])) >= 2
    for key in FLOATS:
        np.testing.assert_allclose(read(outs[0][key]), read(outs[1][key]), atol=1e-5, equal_nan=True)
    # Interpolated, not blocky: block-constant values (nearest) would change at most at every 2nd/3rd pixel.
    maxprob = read(outs[0]["maxprob"], 1)[:120, 180:300]  # clear of the nodata corner
    assert np.isfinite(maxprob).all() and (np.abs(np.diff(maxprob, axis=1)) > 1e-6).mean() > 0.6


def test_coarse_model_sees_block_means_of_the_10m_bands(tmp_path):
    tile = write_sample_tile(tmp_path / "tile", size=360, seed=2, level="L2A")
    model = ConvDenseModel(resolution=30, patch_size=20)
    segment(tile, tmp_path / "out", model=model, config=EngineConfig(chunk_size=360))
    batch = torch.cat(model.inputs)
    assert batch.shape[1:] == (4, 20, 20)
    # Patch (ky, kx) = (0, 0) starts at 10 m pixel 0: its model pixels are 3 × 3 means of the bands.
    from s2seg.core.sentinel2 import discover

    bandset = discover(tile)
    with rasterio.open(bandset.files["B02"].path) as ds:
        blue = ds.read(1, window=((0, 60), (0, 60))).astype(np.float64)
    means = blue.reshape(20, 3, 20, 3).mean(axis=(1, 3))
    expected = ((means + bandset.offset("B02")) * 1e-4 - 0.05) / 0.03
    # Patches arrive in row-major order from ky = kx = -2 (margin): (0, 0) is number 2·n + 2 of n per row.
    n = 360 // 30 + 1 + 2
    np.testing.assert_allclose(batch[2 * n + 2, 0].numpy(), expected, rtol=1e-5, atol=1e-4)


def test_nodata_only_patches_are_not_sent_to_the_model(tmp_path):
    full = write_sample_tile(tmp_path / "a", size=360, seed=1)
    corner = write_sample_tile(tmp_path / "b", size=360, seed=1, nodata_corner=True)
    counts = []
    for tile in (full, corner):
        model = SpectralPatchModel()
        segment(tile, tmp_path / f"out-{len(counts)}", model=model, config=EngineConfig(chunk_size=360))
        counts.append(model.patches)
    assert counts[0] == (360 // 30 + 1) ** 2  # one chunk: every global patch once
    assert counts[1] < counts[0]


def test_model_error_mid_tile_stops_everything_and_leaves_no_outputs(tile, tmp_path):
    model = SpectralPatchModel(fail_on_call=3)
    out = tmp_path / "out"
    with pytest.raises(ModelError, match="simulated CUDA out of memory"):
        segment(tile, out, model=model, config=EngineConfig(chunk_size=60, batch_size=4))
    assert not [p for p in out.iterdir() if p.suffix in (".tif", ".png", ".json", ".part")]
    assert not [t for t in threading.enumerate() if t.name.startswith("s2seg-")]


def test_wrong_number_of_classes_is_a_model_error(tile, tmp_path):
    model = SpectralPatchModel()
    model.card = ModelCard(**{**model.card.to_dict(), "class_names": BIGEARTHNET19_NAMES[:4], "class_colours": BIGEARTHNET19_COLOURS[:4]})
    with pytest.raises(ModelError, match=r"returned shape \(\d+, 5\), expected \(\d+, 4\)"):
        segment(tile, tmp_path / "out", model=model)


def test_cancel_stops_within_a_batch_and_removes_partial_outputs(tile, tmp_path):
    cancel = threading.Event()
    model = SpectralPatchModel()
    calls_at_cancel = []

    def progress(fraction, message):
        if "batch" in message and not cancel.is_set():
            cancel.set()
            calls_at_cancel.append(model.calls)

    with pytest.raises(Cancelled):
        segment(tile, tmp_path / "out", model=model, config=EngineConfig(chunk_size=60, batch_size=2), progress=progress, cancel=cancel)
    assert model.calls <= calls_at_cancel[0] + 1
    assert not list((tmp_path / "out").glob("*.tif*"))


def test_existing_outputs_need_overwrite(tile, tmp_path):
    segment(tile, tmp_path, model=SpectralPatchModel())
    with pytest.raises(OutputsExist, match=r"outputs already exist \(.*_class\.tif.*\) in ") as info:
        segment(tile, tmp_path, model=SpectralPatchModel())
    assert "--" not in str(info.value)  # neutral: the CLI and QGIS say how to overwrite, each in its words
    segment(tile, tmp_path, model=SpectralPatchModel(), config=EngineConfig(overwrite=True))


def test_bad_parameters_are_named():
    with pytest.raises(ConfigError, match="batch size"):
        EngineConfig(batch_size=-1)
    with pytest.raises(ConfigError, match="device"):
        EngineConfig(device="tpu")


def test_chunk_size_not_on_the_grid_is_refused_before_any_output(tile, tmp_path):
    with pytest.raises(ConfigError, match="chunk size 100 must be a positive multiple of 60"):
        segment(tile, tmp_path / "out", config=EngineConfig(chunk_size=100))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["checked-per-batch", "checked-by-the-writer"])
def test_logits_from_a_model_declaring_probabilities_are_refused(tile, tmp_path, monkeypatch, asynchronous):
    """A card with activation 'none' promises probabilities: logits must stop the run, naming the fix."""
    monkeypatch.setattr(pipeline, "_asynchronous", lambda device: asynchronous)
    model = SpectralPatchModel()
    model.card = dataclasses.replace(model.card, activation="none")
    model.predict = lambda batch: batch.mean(dim=(2, 3)) @ model.weights  # raw scores, far outside [0, 1]
    out = tmp_path / "out"
    with pytest.raises(ModelError, match=r"model 'patch-test' declares activation 'none' \(its outputs are probabilities\) "
                                         r"but produced values outside \[0, 1\] \(min -?[\d.e+-]+, max [\d.e+-]+\): "
                                         r"set activation to 'softmax' or 'sigmoid' in its card"):
        segment(tile, out, model=model, config=EngineConfig(chunk_size=120))
    assert not [p for p in out.iterdir() if p.suffix in (".tif", ".png", ".json")]


def test_probabilities_of_a_model_without_activation_pass_the_range_check(tile, tmp_path):
    model = SpectralPatchModel()
    model.card = dataclasses.replace(model.card, activation="none")  # its predict already applies a softmax
    assert segment(tile, tmp_path / "out", model=model, config=EngineConfig(chunk_size=120)).valid_pixels > 0


def test_an_output_folder_name_that_is_not_utf8_is_refused_before_anything_is_written(tile, tmp_path):
    out = tmp_path / os.fsdecode(b"out-\xff")
    with pytest.raises(OutputError, match=r"output folder .*out-\\xff: its name is not valid UTF-8") as info:
        segment(tile, out, model=SpectralPatchModel())
    str(info.value).encode("utf-8")  # printable as is
    assert os.listdir(tmp_path) == []  # no folder left behind


@pytest.mark.parametrize("name", [".s2seg-write-test-{pid}", "{tile}_report.json.part", "{tile}.s2seg-journal.tmp",
                                  "{tile}_class.tif.part", "{tile}_preview.png.part"])
def test_links_planted_in_the_output_folder_are_never_written_through(tile, tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    tile_name = discover(tile).name
    link = out / name.format(pid=os.getpid(), tile=tile_name)
    link.symlink_to(victim)
    result = segment(tile, out, model=SpectralPatchModel(), config=EngineConfig(chunk_size=120))
    assert victim.read_text() == "precious"
    assert json.loads(result.report.read_text())["n_chunks"] == result.n_chunks


def test_the_stages_run_over_any_writer_and_the_inferer_runs_alone(tile):
    """The public pieces the benchmark harness drives: ChunkStages.infer and ChunkStages.run over a writer."""
    from s2seg.core.reader import ChunkReader

    bandset, model = discover(tile), SpectralPatchModel()
    grid = pipeline.plan(bandset.height, bandset.width, model.card.patch_size, 120, model.card.pixel_factor)
    stages = pipeline.ChunkStages(bandset, model, grid, EngineConfig(chunk_size=120), 16, threading.Event())
    chunk = grid.chunks[4]
    with ChunkReader(bandset, model.card.bands, model.card.name) as reader:
        inferred = stages.infer(chunk, reader.read(chunk.input_rows, chunk.input_cols))
    probs, conf = inferred.probabilities.strip((chunk.row0, chunk.row1), torch.ones((chunk.height, chunk.width), dtype=torch.bool))
    assert probs is None and conf.classes.shape == (chunk.height, chunk.width)

    class Discarding:
        def __init__(self):
            self.windows = []

        def write(self, key, array, row0, col0):
            self.windows.append((key, row0, col0))

        def flush(self, windows=(), sync=True):
            pass

        def sync(self):
            pass

    recorded = []
    writer = Discarding()
    stages.run(writer, recorded.extend)
    assert sorted(index for index, _ in recorded) == list(range(len(grid.chunks)))
    assert {(row0, col0) for key, row0, col0 in writer.windows if key == "class"} >= {(c.row0, c.col0) for c in grid.chunks}
