"""Between the tile's 10 m grid and a coarser model grid (a model pixel = ``f × f`` 10 m pixels).

Down: each model pixel is the mean of the valid 10 m pixels of its block (area
averaging, as a GIS "average" warp does), so nodata never drags values down.
Up: probabilities are interpolated bilinearly at the 10 m pixel centres; a convex
combination of probability vectors is one, so the confidence products stay
well defined, and class edges follow the interpolated probabilities instead of
showing the model's blocks.
"""
from __future__ import annotations

import numpy as np
import torch

from . import kernels
from .grid import Chunk


def block_mean(values: np.ndarray, valid: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of the valid pixels of each ``factor × factor`` block of ``values (h, w)``.

    ``h`` and ``w`` must be multiples of ``factor``. Returns float32 means (0 where a
    block holds no valid pixel) and the blocks that hold at least one.
    """
    h, w = values.shape
    if h % factor or w % factor:
        raise ValueError(f"a {h} × {w} region does not split into {factor} × {factor} blocks")
    shape = (h // factor, factor, w // factor, factor)
    masked = np.where(valid, values, 0)
    if exact_block_sums(values.dtype, factor):
        # Integers (nearest-sampled DN): float32 sums of the block are exact in any order, so the
        # strided adds below give the bytes of the reduction over axes (1, 3), 3–4× faster.
        sums = _block_sum(masked, factor, np.float32)
    else:
        sums = masked.astype(np.float32, copy=False).reshape(shape).sum(axis=(1, 3), dtype=np.float32)
    counts = _block_sum(valid, factor, np.int32)
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return means, counts > 0


def exact_block_sums(dtype: np.dtype, factor: int) -> bool:
    """Do float32 sums of ``factor × factor`` values of ``dtype`` hold every sum exactly (integers only)?"""
    return np.issubdtype(dtype, np.integer) and factor * factor * np.iinfo(dtype).max < 2**24


def nearest_block_means(block: np.ndarray, row_index: np.ndarray, col_index: np.ndarray, factor: int,
                        out: np.ndarray, valid: np.ndarray | None) -> None:
    """``out[:] = block_mean(v, v != 0, factor)[0]`` for ``v = block[np.ix_(row_index, col_index)]`` (the 10 m
    values nearest sampling makes) in one compiled pass that never makes ``v``.

    ``block`` holds integer digital numbers (0 = nodata) for which :func:`exact_block_sums` holds;
    ``row_index``/``col_index`` give the native pixel of each 10 m row/column (``factor`` × ``out``'s
    shape). ``valid``: None where ``block`` holds no 0 (the caller checked: every sample is then valid,
    nothing is counted), else a ``(len(row_index), len(col_index))`` bool array that receives the 10 m
    validity. The means are :func:`block_mean`'s bytes: both sum integers exactly and divide the sums
    by the counts in float64. Compiled only: callers check :func:`.kernels.enabled` first.
    """
    if not kernels.enabled():
        raise RuntimeError("nearest_block_means needs the compiled kernels (numba)")
    if not exact_block_sums(block.dtype, factor):
        raise ValueError(f"{block.dtype} sums of {factor} × {factor} blocks are not exact in float32")
    h, w = out.shape
    if len(row_index) != h * factor or len(col_index) != w * factor:
        raise ValueError(f"{len(row_index)} × {len(col_index)} samples do not fill {h} × {w} blocks of {factor}")
    track = valid is not None
    _nearest_block_means(block, np.ascontiguousarray(row_index, dtype=np.int64), np.ascontiguousarray(col_index, dtype=np.int64),
                         factor, out, valid if track else np.empty((0, 0), dtype=bool), track)


@kernels.njit()
def _nearest_block_means(block, row_index, col_index, factor, out, valid, track):  # pragma: no cover - compiled
    # Hand-written (no library samples and block-averages in one pass). Nodata is 0, so the plain sum of a
    # block's samples is the sum of its valid ones.
    if not track:
        _all_valid_block_means(block, row_index, col_index, factor, out)
        return
    h, w = out.shape
    sums = np.zeros(w, dtype=np.int64)
    counts = np.zeros(w, dtype=np.int64)
    for y_model in range(h):
        sums[:] = 0
        counts[:] = 0
        for i in range(factor):
            y = y_model * factor + i
            row = block[row_index[y]]
            for x_model in range(w):
                total = 0
                count = 0
                for j in range(factor):
                    x = x_model * factor + j
                    value = row[col_index[x]]
                    total += value
                    count += value != 0
                    valid[y, x] = value != 0
                sums[x_model] += total
                counts[x_model] += count
        for x_model in range(w):
            out[y_model, x_model] = sums[x_model] / counts[x_model] if counts[x_model] > 0 else 0.0


@kernels.njit()
def _all_valid_block_means(block, row_index, col_index, factor, out):  # pragma: no cover - compiled
    # Every sample valid: each native row's sums over the model columns are made once, however many 10 m
    # rows sample it (a 20 m band's rows twice, the reflected halo's again), and added into their model
    # rows. The partial sums are integers below 2**24 (exact_block_sums), so ``out`` holds them exactly in
    # float32 whatever the order, and the division by the count is done in float64, as block_mean does.
    h, w = out.shape
    out[:] = 0
    row_sums = np.empty(w, dtype=np.float32)
    order = np.argsort(row_index, kind="mergesort")
    native = -1
    for y in order:
        if row_index[y] != native:
            native = row_index[y]
            row = block[native]
            if factor == 3:  # 30 m models: unrolled, the loop vectorises (the demo crop's 6 bands: 22 → 15 ms)
                for x_model in range(w):
                    x = 3 * x_model
                    row_sums[x_model] = (np.int64(row[col_index[x]]) + np.int64(row[col_index[x + 1]])
                                         + np.int64(row[col_index[x + 2]]))
            else:
                for x_model in range(w):
                    total = 0
                    for j in range(factor):
                        total += row[col_index[x_model * factor + j]]
                    row_sums[x_model] = total
        target = out[y // factor]
        for x_model in range(w):
            target[x_model] += row_sums[x_model]
    count = factor * factor
    for y_model in range(h):
        for x_model in range(w):
            out[y_model, x_model] = np.float64(out[y_model, x_model]) / count


def block_any(values: np.ndarray, factor: int) -> np.ndarray:
    """``values (h, w)`` bool → is any of each ``factor × factor`` block True (``h``, ``w`` multiples of
    ``factor``)? By :func:`_block_sum`'s strided adds, which are ORs on booleans: numpy's ``any`` over the small
    block axes took 15–35 ms for a 2304 × 3072 mask."""
    return _block_sum(values, factor, np.bool_)


def _block_sum(values: np.ndarray, factor: int, dtype: type) -> np.ndarray:
    """Sums of ``factor × factor`` blocks by ``factor`` strided adds per axis (numpy reduces over small
    non-contiguous axes slowly); exact only where ``dtype`` holds every partial sum exactly."""
    cols = values[:, 0::factor].astype(dtype)
    for k in range(1, factor):
        cols += values[:, k::factor]
    rows = cols[0::factor].copy()
    for k in range(1, factor):
        rows += cols[k::factor]
    return rows


def _axis(start: int, stop: int, first: int, factor: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For 10 m pixels ``start … stop-1``: the lower model pixel (relative to ``first``) and the
    weight of the upper one. The centre of 10 m pixel ``y`` is at ``(y + ½) / f − ½`` in model
    pixel-centre coordinates."""
    position = (torch.arange(start, stop, dtype=torch.float64, device=device) + 0.5) / factor - 0.5 - first
    lower = torch.floor(position)
    return lower.long(), (position - lower).float()


def to_10m(probs: torch.Tensor, window: Chunk, factor: int, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    """Bilinear interpolation of model-grid ``probs (C, h, w)`` onto 10 m rows/cols (global).

    ``probs`` covers the model pixels ``window.row0 … window.row1-1`` ×
    ``window.col0 … window.col1-1`` (a :func:`.grid.model_chunk`), which must include
    one model pixel beyond the requested 10 m region on each side. Separable: along
    rows (two model rows per output row), then along columns.
    """
    device = probs.device
    r_lo, r_w = _axis(rows[0], rows[1], window.row0, factor, device)
    c_lo, c_w = _axis(cols[0], cols[1], window.col0, factor, device)
    if int(r_lo.min()) < 0 or int(r_lo.max()) + 1 >= probs.shape[1] or int(c_lo.min()) < 0 or int(c_lo.max()) + 1 >= probs.shape[2]:
        raise ValueError(f"model window {window} does not surround 10 m rows {rows} × cols {cols}")
    r_w = r_w.view(1, -1, 1)
    along_rows = probs[:, r_lo] * (1 - r_w) + probs[:, r_lo + 1] * r_w  # (C, rows, w)
    c_w = c_w.view(1, 1, -1)
    return along_rows[:, :, c_lo] * (1 - c_w) + along_rows[:, :, c_lo + 1] * c_w
