"""Blending against a direct, slow implementation of P = Σ PᵢWᵢ / Σ Wᵢ."""
import math

import numpy as np
import pytest
import torch

from s2seg.core.blend import blend_dense, blend_patch_level, window_1d
from s2seg.core.grid import plan


def reference(height, width, patch, values_at):
    """Loop over every global patch; values_at(ky, kx) gives its (C, P, P) prediction."""
    s = patch // 2
    w = np.sin(np.pi * (np.arange(patch) + 0.5) / patch)
    window = np.outer(w, w)
    num = None
    den = np.zeros((height + 2 * patch, width + 2 * patch))
    for ky in range(-1, (height - 1) // s + 1):
        for kx in range(-1, (width - 1) // s + 1):
            v = values_at(ky, kx)
            if num is None:
                num = np.zeros((v.shape[0],) + den.shape)
            y, x = (ky + 1) * s, (kx + 1) * s  # shifted so patch -1 starts at 0
            num[:, y:y + patch, x:x + patch] += v * window
            den[y:y + patch, x:x + patch] += window
    return (num / den)[:, s:s + height, s:s + width]


def test_window_is_positive_and_peaks_in_the_middle():
    w = window_1d(120)
    assert (w > 0).all() and w[0] == w[-1] and torch.argmax(w) in (59, 60)
    assert math.isclose(float(w[0]), math.sin(math.pi * 0.5 / 120), rel_tol=1e-6)


def _patch_values(c, seed=0):
    rng = np.random.default_rng(seed)
    table = {}

    def at(ky, kx):
        if (ky, kx) not in table:
            table[ky, kx] = rng.random(c)
        return table[ky, kx]
    return at


def test_patch_level_blend_matches_reference_for_any_chunking():
    height, width, patch, c = 130, 100, 20, 3
    at = _patch_values(c)
    expected = reference(height, width, patch, lambda ky, kx: np.broadcast_to(at(ky, kx)[:, None, None], (c, patch, patch)))
    for chunk_size in (30, 60, 150):
        out = np.full((c, height, width), np.nan)
        for chunk in plan(height, width, patch, chunk_size).chunks:
            grid = torch.tensor(np.array([[at(ky, kx) for kx in range(chunk.kx0, chunk.kx1)] for ky in range(chunk.ky0, chunk.ky1)]), dtype=torch.float32)
            out[:, chunk.row0:chunk.row1, chunk.col0:chunk.col1] = blend_patch_level(grid, chunk, patch).numpy()
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_patch_level_strips_equal_whole_chunk():
    chunk = plan(120, 120, 20, 120).chunks[0]
    grid = torch.rand(chunk.n_patches_y, chunk.n_patches_x, 4)
    whole = blend_patch_level(grid, chunk, 20)
    strip = blend_patch_level(grid, chunk, 20, rows=(40, 70))
    torch.testing.assert_close(strip, whole[:, 40:70])


def test_dense_blend_matches_reference_for_any_chunking():
    height, width, patch, c = 70, 95, 12, 2
    rng = np.random.default_rng(1)
    table = {}

    def at(ky, kx):
        if (ky, kx) not in table:
            table[ky, kx] = rng.random((c, patch, patch))
        return table[ky, kx]
    expected = reference(height, width, patch, at)
    for chunk_size in (6, 30, 96):
        out = np.full((c, height, width), np.nan)
        for chunk in plan(height, width, patch, chunk_size).chunks:
            grid = torch.tensor(np.array([[at(ky, kx) for kx in range(chunk.kx0, chunk.kx1)] for ky in range(chunk.ky0, chunk.ky1)]), dtype=torch.float32)
            out[:, chunk.row0:chunk.row1, chunk.col0:chunk.col1] = blend_dense(grid, chunk, patch).numpy()
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_constant_predictions_blend_to_the_same_constant():
    chunk = plan(240, 240, 120, 240).chunks[0]
    grid = torch.full((chunk.n_patches_y, chunk.n_patches_x, 2, 120, 120), 0.25)
    torch.testing.assert_close(blend_dense(grid, chunk, 120), torch.full((2, 240, 240), 0.25))


def test_cpu_kernels_are_compiled_when_numba_is_there(monkeypatch):
    """A kernel left uncompiled still gives right results, only 100× slower: check they are numba dispatchers."""
    from s2seg.core import blend, kernels, uncertainty

    monkeypatch.delenv("S2SEG_NO_NUMBA", raising=False)
    if kernels.numba is None:
        pytest.skip("numba is not installed")
    for kernel in (blend._rows_kernel(), blend._add_kernel(), uncertainty._kernel(), uncertainty._blend_confidence_rows,
                   uncertainty._dense_confidence_rows):
        assert isinstance(kernel, kernels.numba.core.registry.CPUDispatcher), kernel
    monkeypatch.setenv("S2SEG_NO_NUMBA", "1")
    assert blend._rows_kernel() is None and blend._add_kernel() is None and uncertainty._kernel() is None


def _canvas_products(grid, chunk, patch, valid, rows, batch=5):
    """The pipeline's dense path: batches in raster order into a DenseCanvas, then confidence of the rows."""
    from s2seg.core.blend import DenseCanvas
    from s2seg.core.uncertainty import confidence

    ny, nx, c = grid.shape[:3]
    ky, kx = (k.reshape(-1) for k in torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij"))
    canvas = DenseCanvas(chunk, patch, c)
    flat = grid.reshape(ny * nx, c, patch, patch)
    for i in range(0, ny * nx, batch):
        canvas.add(ky[i:i + batch], kx[i:i + batch], flat[i:i + batch])
    r0, r1 = rows[0] - chunk.row0, rows[1] - chunk.row0
    return confidence(canvas.result()[:, r0:r1], valid[r0:r1])


def _dense_case(height=500, width=470, patch=24, chunk_size=240, classes=5, seed=3):
    gen = torch.Generator().manual_seed(seed)
    for chunk in plan(height, width, patch, chunk_size).chunks:
        grid = torch.rand((chunk.n_patches_y, chunk.n_patches_x, classes, patch, patch), generator=gen)
        grid /= grid.sum(dim=2, keepdim=True)
        valid = torch.rand((chunk.height, chunk.width), generator=gen) > 0.1
        valid[: chunk.height // 5] = False  # whole nodata rows, and a band that is half nodata
        yield chunk, grid, valid


@pytest.mark.parametrize("cores", [1, 4, 16])
def test_fused_dense_blend_confidence_is_the_canvas_path_bit_for_bit(apparent_cores, monkeypatch, cores):
    """One pass over the held grid (blend_dense_confidence, rows split over threads) writes the same bytes as
    the pipeline's path (DenseCanvas fed in raster order, then confidence), on edge and interior chunks,
    in strips that cut the kernel's row bands, whatever the core count."""
    from s2seg.core import kernels
    from s2seg.core.blend import blend_dense_confidence

    monkeypatch.delenv("S2SEG_NO_NUMBA", raising=False)
    if not kernels.enabled():
        pytest.skip("numba is not installed")
    apparent_cores(cores)
    for chunk, grid, valid in _dense_case(height=700, width=650, chunk_size=480):
        for rows in ((chunk.row0, chunk.row1), (chunk.row0 + 37, min(chunk.row0 + 290, chunk.row1))):
            fused = blend_dense_confidence(grid, chunk, 24, valid[rows[0] - chunk.row0: rows[1] - chunk.row0], rows=rows)
            expected = _canvas_products(grid, chunk, 24, valid, rows)
            for key in ("classes", "maxprob", "entropy", "gap"):
                a, b = getattr(fused, key).numpy(), getattr(expected, key).numpy()
                assert a.tobytes() == b.tobytes(), (chunk, rows, key)


def test_fused_dense_blend_confidence_without_numba_agrees(monkeypatch):
    """The torch fallback (blend_dense, then confidence) gives the compiled pass's products within float rounding."""
    from s2seg.core import kernels
    from s2seg.core.blend import blend_dense_confidence

    if kernels.numba is None:
        pytest.skip("numba is not installed")
    for chunk, grid, valid in _dense_case(height=200, width=170, chunk_size=96):
        rows = (chunk.row0 + 5, chunk.row1)
        strip_valid = valid[5:]
        monkeypatch.delenv("S2SEG_NO_NUMBA", raising=False)
        fused = blend_dense_confidence(grid, chunk, 24, strip_valid, rows=rows)
        monkeypatch.setenv("S2SEG_NO_NUMBA", "1")
        plain = blend_dense_confidence(grid, chunk, 24, strip_valid, rows=rows)
        assert torch.equal(fused.classes[fused.gap > 1e-5], plain.classes[fused.gap > 1e-5])
        for key in ("maxprob", "entropy", "gap"):
            torch.testing.assert_close(getattr(fused, key), getattr(plain, key), atol=1e-5, rtol=0, equal_nan=True)
