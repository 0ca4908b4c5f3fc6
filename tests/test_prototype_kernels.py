"""The built-in model's fused pass (prototype_kernels.mixture_confidence): the confidence products of a strip's
output window made in the mixture pass, equal to confidence() of the probabilities, bit for bit."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from s2seg.core import kernels, uncertainty
from s2seg.core.errors import ModelError
from s2seg.core.feed import Normaliser
from s2seg.core.models import prototype_kernels
from s2seg.core.models.builtin import BuiltinModel
from s2seg.core.models.builtin_card import BUILTIN_CARD
from s2seg.core.reader import ChunkReader
from s2seg.core.sample import write_sample_tile
from s2seg.core.sentinel2 import discover
from s2seg.core.uncertainty import confidence

pytestmark = pytest.mark.skipif(not kernels.enabled(), reason="numba not installed or switched off")

PRODUCTS = ("classes", "maxprob", "entropy", "gap")


@pytest.fixture(scope="module")
def strip():
    """A real-format 200² L2A chunk with a nodata corner, normalised as the inferer feeds it."""
    with tempfile.TemporaryDirectory() as folder:
        tile = write_sample_tile(Path(folder), size=200, seed=3, level="L2A", layout="safe", nodata_corner=True)
        bandset = discover(tile)
        with ChunkReader(bandset, BUILTIN_CARD.bands, BUILTIN_CARD.name, BUILTIN_CARD.resampling) as reader:
            pixels = reader.read((0, 200), (0, 200))
        x = Normaliser(BUILTIN_CARD, bandset, torch.device("cpu"))(torch.from_numpy(pixels.data[None].astype(np.float32)))
        return x, torch.from_numpy(pixels.valid)


@pytest.fixture(scope="module")
def model():
    return BuiltinModel(BUILTIN_CARD, torch.device("cpu"))


def _assert_equal(a, b):
    for name in PRODUCTS:
        assert np.array_equal(getattr(a, name).numpy(), getattr(b, name).numpy(), equal_nan=True), name


@pytest.mark.parametrize("window", [(0, 0), (15, 15), (23, 7)], ids=["corner", "halo", "odd-offset"])
def test_fused_products_equal_the_confidence_of_the_probabilities(strip, model, window):
    x, valid = strip
    r, c = window
    h, w = 200 - r - 11, 200 - c - 5  # the window's pixels fall anywhere in the kernel's 256-pixel blocks
    out_valid = valid[r:r + h, c:c + w]
    assert (~out_valid).any() and out_valid.any()
    fused = model.predict_confidence(x, out_valid, window)
    reference = confidence(model.predict(x)[0, :, r:r + h, c:c + w], out_valid)
    assert fused.classes.shape == (h, w) and fused.classes.dtype == torch.uint8
    _assert_equal(fused, reference)
    assert (fused.classes[~out_valid] == uncertainty.CLASS_NODATA).all() and fused.maxprob[~out_valid].isnan().all()


def test_fused_products_do_not_depend_on_threads(strip, model, monkeypatch):
    x, valid = strip
    open_water = model.net._open_water(x)
    monkeypatch.setattr(prototype_kernels, "PARALLEL_MIN_PIXELS", 1000)  # 40,000 px: split them
    runs = [prototype_kernels.mixture_confidence(x, open_water, (0, 0), valid, model.net.kernel_tables, threads)
            for threads in (1, 3)]
    assert runs[0][1] and runs[1][1]
    _assert_equal(runs[0][0], runs[1][0])


def test_a_window_without_valid_pixels_is_nodata_and_not_computed(strip, model):
    x, _ = strip
    nothing = torch.zeros((40, 200), dtype=torch.bool)
    products = model.predict_confidence(x * float("nan"), nothing, (10, 0))  # NaN inputs: never looked at
    assert (products.classes == uncertainty.CLASS_NODATA).all() and products.entropy.isnan().all()


def test_non_finite_probabilities_of_a_valid_pixel_stop_the_run(strip, model):
    x, valid = strip
    x = x.clone()
    x[0, :, 50, 60] = float("nan")
    assert valid[50, 60]
    with pytest.raises(ModelError, match="model 'builtin' produced NaN or Inf values"):
        model.predict_confidence(x, valid, (0, 0))


def test_the_fused_kernels_cache_goes_stale_with_the_confidence_kernels_file():
    """numba stamps a cached kernel with its own file only; the fused kernel compiles uncertainty's functions
    into it, so its stamp also holds uncertainty.py's (an edit there recompiles it)."""
    stamp = prototype_kernels._mixture_confidence._cache._cache_file._source_stamp
    st = os.stat(uncertainty.__file__)
    assert (st.st_mtime, st.st_size) in stamp[1:]


def test_the_model_falls_back_where_the_kernels_cannot_run(model, monkeypatch):
    assert model.can_predict_confidence()
    monkeypatch.setenv("S2SEG_NO_NUMBA", "1")
    assert not model.can_predict_confidence()


def test_the_fused_kernel_writes_inside_its_share_only(strip, model):
    """Each thread's share of pixels (whole blocks) is written by it alone: nothing before or after is touched
    (numba once stored class ids 8 bytes past a row: uncertainty._finish_pixels keeps them in a loop of their own)."""
    x, valid = strip
    bands = x[0].reshape(5, -1).contiguous().numpy()
    open_water = model.net._open_water(x)[0].reshape(-1).contiguous().numpy()
    tables = model.net.kernel_tables
    n = 200 * 200
    guard = {"classes": np.full(n, 77, np.uint8), "maxprob": np.full(n, -5, np.float32),
             "entropy": np.full(n, -5, np.float32), "gap": np.full(n, -5, np.float32)}
    bad = np.zeros(1, np.uint8)
    p0, p1 = prototype_kernels.BLOCK, 5 * prototype_kernels.BLOCK + 17  # a partial last block
    prototype_kernels._mixture_confidence(bands, open_water, tables.floor, 200, 0, 0, valid.numpy().copy(), tables.affine,
                                          tables.indptr, tables.classes, tables.weights, tables.n_classes, *guard.values(),
                                          bad, p0, p1)
    for name, array in guard.items():
        sentinel = 77 if name == "classes" else -5
        assert (array[:p0] == sentinel).all() and (array[p1:] == sentinel).all(), name
        assert not (array[p0:p1] == sentinel).any(), name


def test_a_pixels_bits_do_not_depend_on_its_blocks_other_pixels(model):
    """A prototype far below a pixel's best gets weight 0 for that pixel (WEIGHT_CUTOFF), and a block skips the
    prototypes every one of its pixels is that far from: the same pixel gives the same bits in a block of its own
    kind (where the cloud prototypes are skipped) and in a block shared with cloud (where they are computed)."""
    tables = model.net.kernel_tables
    n = prototype_kernels.BLOCK
    forest = torch.tensor([0.0193, 0.036, 0.023, 0.231, 0.115])  # B02, B03, B04, B08, B11 of a conifer stand
    cloud = torch.tensor([0.631, 0.638, 0.636, 0.769, 0.666])  # (the spectra of test_models_builtin)
    alone = forest[None, :, None, None].expand(1, len(forest), 1, n).contiguous()
    mixed = alone.clone()
    mixed[0, :, 0, 1::2] = cloud[:, None]
    # The open-water feature is a neighbourhood mean: give the forest pixels of both the same value.
    water_alone = model.net._open_water(alone)
    water_mixed = model.net._open_water(mixed)
    water_mixed[0, 0, 0::2] = water_alone[0, 0, 0::2]
    f_alone = model.net._features(alone)
    f_mixed = model.net._features(mixed)
    f_mixed[0, 5, 0::2] = f_alone[0, 5, 0::2]
    scores = torch.matmul(model.net.affine, f_alone[0])
    far = (scores - scores.max(dim=0).values <= prototype_kernels.WEIGHT_CUTOFF).all(dim=1)
    assert far.any()  # some prototypes are skipped in the forest-only block ...
    scores_mixed = torch.matmul(model.net.affine, f_mixed[0])
    assert (scores_mixed - scores_mixed.max(dim=0).values > prototype_kernels.WEIGHT_CUTOFF)[far].any()  # ... not here
    p_alone = prototype_kernels.mixture_probabilities(alone, water_alone, tables, 1)[:, :, 0]
    p_mixed = prototype_kernels.mixture_probabilities(mixed, water_mixed, tables, 1)[:, :, 0]
    assert torch.equal(p_alone[0, :, 0::2], p_mixed[0, :, 0::2])
    reference = torch.softmax(scores.double(), dim=0)  # the exact mixture, no cutoff
    exact = model.net.targets.double() @ reference
    assert torch.allclose(p_alone[0].double(), exact, atol=1e-6, rtol=0)


def test_the_kernel_refuses_a_model_whose_features_are_not_the_ones_it_computes(model):
    """The kernel computes the features itself: a model listing others (or another order) is refused, not scored
    with the wrong columns."""
    from s2seg.core.models.builtin import _FEATURES, _REFLECTANCE_FLOOR

    swapped = (_FEATURES[1], _FEATURES[0], *_FEATURES[2:])
    with pytest.raises(ValueError, match="features"):
        prototype_kernels.MixtureTables(model.net.affine, model.net.targets, swapped, _REFLECTANCE_FLOOR)
    assert prototype_kernels.MixtureTables(model.net.affine, model.net.targets, _FEATURES, _REFLECTANCE_FLOOR).floor > 0


@pytest.mark.parametrize("radius", [1, 2, 3, 7, 15])
def test_the_compiled_box_mean_adds_each_window_in_order(radius):
    """The box sums add five terms per sweep (and the rest one by one): still each window's terms in order, one
    float32 addition at a time, then one division, so the same bits as the plain running order."""
    g = torch.Generator().manual_seed(radius)
    x = torch.rand((2, 41, 67), generator=g) * torch.rand((2, 41, 67), generator=g)
    k = 2 * radius + 1
    h, w = x.shape[1:]
    padded = torch.nn.functional.pad(x[:, None], (radius,) * 4, mode="replicate")[:, 0]
    rows = padded[:, :, 0:w].clone()
    for t in range(1, k):
        rows = rows + padded[:, :, t:t + w]
    cols = rows[:, 0:h].clone()
    for t in range(1, k):
        cols = cols + rows[:, t:t + h]
    expected = cols / torch.tensor(float(k * k))
    assert torch.equal(prototype_kernels.box_mean(x, radius).view(torch.int32), expected.view(torch.int32))
