"""One pass per pixel for models whose card declares a receptive field (the built-in model does):
each chunk plus a halo is computed once, no overlapping patches, no blending."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import rasterio
import torch

from s2seg.core.config import EngineConfig
from s2seg.core.errors import ConfigError, ModelError
from s2seg.core.feed import Normaliser
from s2seg.core.grid import OnePassChunk, plan_one_pass
from s2seg.core.models.builtin import BuiltinModel
from s2seg.core.models.builtin_card import BUILTIN_CARD, OPEN_WATER_RADIUS
from s2seg.core.models.card import MAX_RECEPTIVE_FIELD, ModelCard
from s2seg.core.pipeline import segment
from s2seg.core.reader import ChunkReader
from s2seg.core.sample import write_sample_tile
from s2seg.core.sentinel2 import discover

from doubles import needs_numba


class Recording(BuiltinModel):
    """The built-in model, recording the shape of every input it is given (and which of its methods ran)."""

    def __init__(self, card: ModelCard):
        super().__init__(card, torch.device("cpu"))
        self.shapes: list[tuple[int, ...]] = []
        self.calls: list[str] = []

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(batch.shape))
        self.calls.append("predict")
        return super().predict(batch)

    def predict_confidence(self, batch: torch.Tensor, valid: torch.Tensor, window: tuple[int, int]):
        self.shapes.append(tuple(batch.shape))
        self.calls.append("predict_confidence")
        return super().predict_confidence(batch, valid, window)


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    # Not a multiple of the chunk sizes below, with a nodata corner: edge chunks are partial.
    return write_sample_tile(tmp_path_factory.mktemp("onepass"), size=252, seed=5, level="L2A", layout="safe",
                             nodata_corner=True)


def _products(result) -> dict[str, np.ndarray]:
    out = {}
    for name in ("class", "maxprob", "probs"):
        with rasterio.open(result.products[name]) as ds:
            out[name] = ds.read()
    return out


def test_builtin_card_declares_its_receptive_field():
    assert BUILTIN_CARD.receptive_field == OPEN_WATER_RADIUS > 0


@pytest.mark.parametrize("chunk_size", [60, 120])
def test_outputs_do_not_depend_on_the_chunk_size(tile, tmp_path, chunk_size):
    whole = segment(tile, tmp_path / "whole", config=EngineConfig(chunk_size=300, write_probs=True))
    assert whole.n_chunks == 1
    chunked = segment(tile, tmp_path / "chunked", config=EngineConfig(chunk_size=chunk_size, write_probs=True))
    assert chunked.n_chunks > 4
    a, b = _products(whole), _products(chunked)
    np.testing.assert_array_equal(a["class"], b["class"])
    np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(a["maxprob"], b["maxprob"], atol=1e-6, equal_nan=True)


def test_engine_equals_one_direct_pass_over_the_whole_image(tile, tmp_path):
    """The probabilities the engine writes, chunk by chunk, are the model's on the whole tile at once."""
    model = BuiltinModel(BUILTIN_CARD, torch.device("cpu"))
    result = segment(tile, tmp_path / "out", model, EngineConfig(chunk_size=60, write_probs=True))
    bandset = discover(tile)
    with ChunkReader(bandset, BUILTIN_CARD.bands, BUILTIN_CARD.name, BUILTIN_CARD.resampling) as reader:
        pixels = reader.read((0, bandset.height), (0, bandset.width))
    x = Normaliser(BUILTIN_CARD, bandset, torch.device("cpu"))(torch.from_numpy(pixels.data[None].astype(np.float32)))
    direct = model.predict(x)[0].numpy()
    written = _products(result)["probs"]
    valid = pixels.valid
    assert (~valid).any() and valid.any()
    np.testing.assert_allclose(written[:, valid], direct[:, valid], atol=1e-6)
    assert np.isnan(written[:, ~valid]).all()


def test_each_pixel_is_computed_once(tile, tmp_path):
    """Strips of whole chunk rows with the halo only, instead of 120² patches at 50 % overlap (4× the pixels)."""
    model = Recording(BUILTIN_CARD)
    segment(tile, tmp_path / "out", model, EngineConfig(chunk_size=120))
    assert all(shape[0] == 1 for shape in model.shapes)
    computed = sum(h * w for _, _, h, w in model.shapes)
    halo = 2 * OPEN_WATER_RADIUS
    assert computed <= (252 + 2 * halo) ** 2  # each pixel once, plus the halos between chunks


def test_a_dense_model_without_the_field_keeps_the_blended_patches(tile, tmp_path):
    model = Recording(dataclasses.replace(BUILTIN_CARD, receptive_field=0))
    segment(tile, tmp_path / "out", model, EngineConfig(chunk_size=120))
    p = BUILTIN_CARD.patch_size
    assert model.shapes and all(shape[2:] == (p, p) for shape in model.shapes)


def test_plan_one_pass_reads_the_halo_inside_the_tile():
    grid = plan_one_pass(100, 130, 60, 15, footprint=12)  # chunk unit lcm(6, 6) = 6
    assert [(c.row0, c.row1, c.col0, c.col1) for c in grid.chunks][:3] == [(0, 60, 0, 60), (0, 60, 60, 120), (0, 60, 120, 130)]
    first, middle, last = grid.chunks[0], grid.chunks[1], grid.chunks[-1]
    assert all(isinstance(c, OnePassChunk) for c in grid.chunks)
    assert (first.input_rows, first.input_cols) == ((0, 75), (0, 75))
    assert middle.input_cols == (45, 130)
    assert (last.input_rows, last.input_cols) == ((45, 100), (105, 130))
    with pytest.raises(ConfigError, match=r"chunk size 50 must be a positive multiple of 6 \(lcm of the 60 m band "
                                          r"scale 6 and the patch stride 6\); nearest valid: 48 or 54"):
        plan_one_pass(100, 100, 50, 15, footprint=12)


BASE = dict(BUILTIN_CARD.to_dict())


@pytest.mark.parametrize("value, message", [
    (-1, r"receptive_field must be a whole number of 10 m pixels from 0 .* got -1"),
    (True, r"receptive_field must be a whole number .* got True"),
    (2.5, r"receptive_field must be a whole number .* got 2.5"),
    ("15", r"receptive_field must be a whole number .* got '15'"),
    (MAX_RECEPTIVE_FIELD + 1, rf"receptive_field must be .* to {MAX_RECEPTIVE_FIELD}, got {MAX_RECEPTIVE_FIELD + 1}"),
])
def test_card_rejects_a_bad_receptive_field(value, message):
    with pytest.raises(ModelError, match=rf"model card 'builtin': {message}"):
        ModelCard(**{**BASE, "receptive_field": value})


@pytest.mark.parametrize("change, what", [({"output_kind": "patch"}, "output_kind is 'patch'"),
                                          ({"resolution": 30}, "resolution 30 m")])
def test_receptive_field_is_for_dense_10m_models(change, what):
    with pytest.raises(ModelError, match=f"receptive_field is for dense models at 10 m .* {what}"):
        ModelCard(**{**BASE, **change})


def test_receptive_field_round_trips_through_a_card_file(tmp_path):
    path = tmp_path / "m.card.json"
    path.write_text(json.dumps({**BASE, "receptive_field": 7}))
    assert ModelCard.load(path).receptive_field == 7
    undeclared = {k: v for k, v in BASE.items() if k != "receptive_field"}
    path.write_text(json.dumps(undeclared))
    assert ModelCard.load(path).receptive_field == 0  # not declared: the blended path


def test_the_accelerator_path_gives_the_same_probabilities(tile):
    """On an accelerator the chunk is normalised on the device once and its extremes are checked per chunk;
    run here on the CPU (``asynchronous=True``), it must give what the host path gives."""
    from s2seg.core.inferer import ChunkInferer

    bandset = discover(tile)
    card = BUILTIN_CARD
    grid = plan_one_pass(bandset.height, bandset.width, 120, card.receptive_field, card.footprint)
    chunk = grid.chunks[1]  # an inner edge on each side: halo on the left, the tile's edge above
    model = BuiltinModel(card, torch.device("cpu"))
    with ChunkReader(bandset, card.bands, card.name, card.resampling) as reader:
        pixels = reader.read(chunk.input_rows, chunk.input_cols)
    results = []
    for asynchronous in (False, True):
        inferer = ChunkInferer(model, Normaliser(card, bandset, torch.device("cpu")), 4, asynchronous=asynchronous,
                               write_probs=True)
        inferred = inferer.infer(chunk, pixels)
        assert (inferred.extremes is not None) == asynchronous
        inferred.raise_if_bad(card)
        results.append(inferred.probabilities.probs)
    assert results[0].shape == (card.num_classes, chunk.height, chunk.width)
    torch.testing.assert_close(results[0], results[1])


def test_confidence_products_do_not_depend_on_writing_probabilities(tile, tmp_path):
    """Without probabilities the one-pass path keeps only each strip's confidence (computed in the inference stage);
    the products are those the writer computes from the probabilities, bit for bit."""
    runs = [segment(tile, tmp_path / str(p), config=EngineConfig(chunk_size=60, write_probs=p)) for p in (True, False)]
    for name in ("class", "maxprob", "entropy", "gap"):
        with rasterio.open(runs[0].products[name]) as a, rasterio.open(runs[1].products[name]) as b:
            np.testing.assert_array_equal(a.read(), b.read())


def test_the_bench_floors_the_strips_the_inferer_runs(tile, tmp_path):
    """make bench's one-pass compute floor (benchmarks.engine_parts.one_pass_strips) runs the model on the same
    strips as the inference stage."""
    from s2seg.benchmarks.engine_parts import one_pass_strips

    model = Recording(BUILTIN_CARD)
    result = segment(tile, tmp_path / "out", model, EngineConfig(chunk_size=300, batch_size=2))  # one chunk, 2 strips
    bandset = discover(tile)
    grid = plan_one_pass(bandset.height, bandset.width, 300, OPEN_WATER_RADIUS, BUILTIN_CARD.footprint)
    expected = [(z - a, chunk.input_cols[1] - chunk.input_cols[0]) for chunk in grid.chunks
                for a, z in one_pass_strips(chunk, chunk.input_rows[1] - chunk.input_rows[0],
                                            chunk.input_cols[1] - chunk.input_cols[0], OPEN_WATER_RADIUS, 2,
                                            BUILTIN_CARD.patch_size)]
    assert result.n_chunks == len(grid.chunks) and len(model.shapes) > len(grid.chunks)
    assert sorted(shape[2:] for shape in model.shapes) == sorted(expected)


def _confidence_products(result) -> dict[str, np.ndarray]:
    out = {}
    for name in ("class", "maxprob", "entropy", "gap"):
        with rasterio.open(result.products[name]) as ds:
            out[name] = ds.read()
    return out




@needs_numba
def test_without_probabilities_the_model_makes_the_products_itself(tile, tmp_path):
    """The fused path: no probabilities are asked of the model when they are not written; with them, only they are."""
    for write_probs, method in ((False, "predict_confidence"), (True, "predict")):
        model = Recording(BUILTIN_CARD)
        segment(tile, tmp_path / str(write_probs), model, EngineConfig(chunk_size=120, write_probs=write_probs))
        assert model.calls and set(model.calls) == {method}


@needs_numba
@pytest.mark.parametrize("chunk_size, batch_size", [(60, 1), (120, 3), (300, 2)])
def test_fused_products_do_not_depend_on_chunk_size_or_strip_height(tile, tmp_path, chunk_size, batch_size):
    whole = _confidence_products(segment(tile, tmp_path / "whole", config=EngineConfig(chunk_size=300, batch_size=64)))
    other = _confidence_products(segment(tile, tmp_path / "other",
                                         config=EngineConfig(chunk_size=chunk_size, batch_size=batch_size)))
    for name, values in whole.items():
        assert np.array_equal(values, other[name], equal_nan=True), name


@needs_numba
def test_the_torch_path_gives_the_fused_products(tile, tmp_path, monkeypatch):
    """Without numba (or on an accelerator) the model's probabilities and confidence() make the products."""
    fused = _confidence_products(segment(tile, tmp_path / "fused", config=EngineConfig(chunk_size=120)))
    monkeypatch.setenv("S2SEG_NO_NUMBA", "1")
    model = Recording(BUILTIN_CARD)
    plain = _confidence_products(segment(tile, tmp_path / "plain", model, EngineConfig(chunk_size=120)))
    assert set(model.calls) == {"predict"}
    assert (fused["class"] != plain["class"]).mean() < 1e-3  # ties within float rounding may flip
    for name in ("maxprob", "entropy", "gap"):
        np.testing.assert_allclose(fused[name], plain[name], atol=1e-5, equal_nan=True)


def test_overviews_are_made_as_the_strips_are_written(tmp_path, monkeypatch):
    """A one-pass run's strips keep the overviews' 2 × 2 pairs whole (even strip heights, chunk origins), so its
    products' overviews come from the writer's feed, not from reading them back at the commit: only the 19-band
    probabilities are read back."""
    import warnings

    from s2seg.core import writer as writer_module

    tile = write_sample_tile(tmp_path / "tile", size=600, seed=2, level="L2A", layout="safe", nodata_corner=True)
    read_back = []
    fill = writer_module.ProductWriter._fill_overviews
    monkeypatch.setattr(writer_module.ProductWriter, "_fill_overviews",
                        lambda self, key, *a: read_back.append(key) or fill(self, key, *a))
    # 10 patches of 120² over the first chunk's 480 + 15 px wide input: strips of ⌈290.9⌉ = 291 rows, raised to 292
    config = EngineConfig(chunk_size=480, write_probs=True, batch_size=10)
    assert -(-10 * 120**2 // (480 + OPEN_WATER_RADIUS)) == 291
    result = segment(tile, tmp_path / "out", config=config)
    assert result.n_chunks == 4 and read_back == ["probs"]
    with rasterio.open(result.products["maxprob"]) as ds:
        assert ds.overviews(1) == [2]
        full, level = ds.read(1), ds.read(1, out_shape=(300, 300))  # out_shape: the overview itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # pairs of nodata only: NaN
        expected = np.nanmean(full.reshape(300, 2, 300, 2).astype(np.float64), axis=(1, 3))
    assert np.isnan(expected).any() and not np.isnan(expected).all()
    np.testing.assert_allclose(level, expected, atol=1e-6, equal_nan=True)
