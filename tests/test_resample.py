"""Moving between the 10 m grid and a coarser model grid."""
import numpy as np
import pytest
import torch

from s2seg.core.grid import model_chunk, plan
from s2seg.core import kernels
from s2seg.core.resample import block_any, block_mean, nearest_block_means, to_10m


def test_block_mean_averages_valid_pixels_only():
    values = np.arange(36, dtype=np.uint16).reshape(6, 6)
    valid = np.ones((6, 6), dtype=bool)
    valid[0, 0] = False  # one invalid pixel in the first block
    valid[3:, 3:] = False  # a whole block invalid
    means, any_valid = block_mean(values, valid, 3)
    assert means.dtype == np.float32 and means.shape == (2, 2)
    assert means[0, 0] == pytest.approx((values[:3, :3].sum() - values[0, 0]) / 8)
    assert means[0, 1] == pytest.approx(values[:3, 3:].mean())
    assert means[1, 1] == 0 and any_valid.tolist() == [[True, True], [True, False]]


@pytest.mark.parametrize("factor", [2, 3, 6])
def test_block_mean_of_integers_gives_the_bytes_of_the_plain_reduction(factor):
    """The strided block sums of DN (integers) equal numpy's reduction over the block axes bit for bit."""
    rng = np.random.default_rng(factor)
    values = rng.integers(0, 65536, (12 * factor, 10 * factor), dtype=np.uint16)
    valid = rng.random(values.shape) > 0.2
    valid[:factor, :factor] = False  # a block with no valid pixel
    means, any_valid = block_mean(values, valid, factor)
    shape = (12, factor, 10, factor)
    sums = np.where(valid, values, 0).astype(np.float32).reshape(shape).sum(axis=(1, 3), dtype=np.float32)
    counts = valid.reshape(shape).sum(axis=(1, 3), dtype=np.int32)
    expected = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    assert means.tobytes() == expected.tobytes() and np.array_equal(any_valid, counts > 0) and not any_valid[0, 0]


@pytest.mark.skipif(not kernels.enabled(), reason="the compiled kernels are off (numba missing or S2SEG_NO_NUMBA=1)")
@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
@pytest.mark.parametrize("factor", [2, 3, 6])
def test_nearest_block_means_gives_the_bytes_of_sampling_then_block_mean(factor, dtype):
    """The compiled pass from native pixels to the model's equals sampling the 10 m values (repeated and
    reflected native indices, as a 20 m band and a halo make them) then block_mean, bit for bit, with the
    same 10 m validity; a block without nodata gives the same means untracked."""
    rng = np.random.default_rng(factor)
    block = rng.integers(1, np.iinfo(dtype).max, (40, 50), dtype=dtype)
    row_index = np.concatenate([np.arange(9, -1, -1), np.arange(40), np.arange(39, 29, -1)])[: 10 * factor]
    col_index = np.repeat(np.arange(50), 2)[: 8 * factor]  # a coarser band: each native column twice
    plain = np.empty((10, 8), np.float32)
    nearest_block_means(block, row_index, col_index, factor, plain, None)
    values = block[np.ix_(row_index, col_index)]
    assert plain.tobytes() == block_mean(values, values != 0, factor)[0].tobytes()

    block[rng.random(block.shape) < 0.3] = 0
    block[row_index[:factor, None], col_index[None, :factor]] = 0  # a model pixel without any valid sample
    means, valid = np.empty((10, 8), np.float32), np.empty((10 * factor, 8 * factor), bool)
    nearest_block_means(block, row_index, col_index, factor, means, valid)
    values = block[np.ix_(row_index, col_index)]
    expected, any_valid = block_mean(values, values != 0, factor)
    assert means.tobytes() == expected.tobytes() and means[0, 0] == 0 and not any_valid[0, 0]
    assert np.array_equal(valid, values != 0)


def test_nearest_block_means_refuses_what_it_cannot_sum_exactly():
    if not kernels.enabled():
        pytest.skip("the compiled kernels are off")
    out = np.empty((2, 2), np.float32)
    with pytest.raises(ValueError, match="not exact"):
        nearest_block_means(np.ones((6, 6), np.float32), np.arange(6), np.arange(6), 3, out, None)
    with pytest.raises(ValueError, match="do not fill"):
        nearest_block_means(np.ones((6, 6), np.uint16), np.arange(5), np.arange(6), 3, out, None)


@pytest.mark.parametrize("factor", [2, 3, 6])
def test_block_any_is_any_over_each_block(factor):
    rng = np.random.default_rng(factor)
    values = rng.random((7 * factor, 5 * factor)) < 0.02
    values[:factor, :factor] = False
    assert np.array_equal(block_any(values, factor), values.reshape(7, factor, 5, factor).any(axis=(1, 3)))


def test_block_mean_refuses_ragged_regions():
    with pytest.raises(ValueError, match=r"a 5 × 6 region does not split into 3 × 3 blocks"):
        block_mean(np.zeros((5, 6)), np.ones((5, 6), bool), 3)


@pytest.mark.parametrize("factor", [2, 3, 6])
def test_to_10m_reproduces_linear_fields_and_keeps_sums(factor):
    """Bilinear interpolation is exact on a linear field, and a convex combination: class sums stay 1."""
    grid = plan(360, 360, 20, 120 if factor < 6 else 360, factor)
    chunk = grid.chunks[-1]
    window = model_chunk(chunk, factor)
    rows = torch.arange(window.row0, window.row1, dtype=torch.float64)[:, None]
    cols = torch.arange(window.col0, window.col1, dtype=torch.float64)[None, :]
    # Model pixel centre (r, c) in 10 m coordinates: (r + ½)·f; a field linear in those coordinates.
    field = (0.3 * (rows + 0.5) * factor + 0.7 * (cols + 0.5) * factor).float()
    probs = torch.stack([field / 1000, 1 - field / 1000])
    out = to_10m(probs, window, factor, (chunk.row0, chunk.row1), (chunk.col0, chunk.col1))
    y = torch.arange(chunk.row0, chunk.row1, dtype=torch.float64)[:, None] + 0.5
    x = torch.arange(chunk.col0, chunk.col1, dtype=torch.float64)[None, :] + 0.5
    np.testing.assert_allclose(out[0].numpy() * 1000, (0.3 * y + 0.7 * x).numpy(), rtol=1e-5)
    np.testing.assert_allclose(out.sum(0).numpy(), 1, atol=1e-6)


def test_to_10m_needs_the_surrounding_model_pixels():
    chunk = plan(360, 360, 20, 120, 3).chunks[4]
    window = model_chunk(chunk, 3)
    probs = torch.zeros((2, window.row1 - window.row0, window.col1 - window.col0))
    with pytest.raises(ValueError, match="does not surround"):
        to_10m(probs[:, 1:], window, 3, (chunk.row0, chunk.row1), (chunk.col0, chunk.col1))
