"""Per-pixel class and confidence products from blended probabilities, in one pass (DESIGN §4).

On a CPU the products come from one fused kernel (numba, when installed): a pass
over the class planes of each row keeps max, argmax, runner-up, ``T = Σp`` and
``Σ p ln p`` in registers, with a vectorisable polynomial ``ln`` (relative error
< 1e-7). Entropy of ``q = p / T`` is ``log₂ T − (Σ p log₂ p) / T``, so no
normalised copy is made. Rows are split over :func:`kernel_threads` threads (the
kernel releases the GIL; half the usable cores: in the pipeline the other half runs
the model), started by each call and joined before it returns: no worker outlives
the call that needs it. Without numba, and on a GPU, the same quantities
come from a few torch reductions per block of rows. Rows with no valid pixel are
skipped (nodata costs nothing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import kernels
from .buffers import empty
from .config import usable_cores

CLASS_NODATA = 255
LOW_GAP = 0.1  # a top-1/top-2 gap below this means "near a decision boundary"
BLOCK_PIXELS = 1 << 15  # torch path: pixels per block, so a block's class planes stay in cache
PARALLEL_MIN_PIXELS = 1 << 17  # below this, one thread is quicker than handing rows out


@dataclass
class Confidence:
    """Products of one window; float products are NaN and class is 255 where not valid."""

    classes: torch.Tensor  # uint8 (h, w)
    maxprob: torch.Tensor  # float32
    entropy: torch.Tensor  # float32, bits, 0 … log2 C
    gap: torch.Tensor  # float32, top-1 − top-2


def confidence(probs: torch.Tensor, valid: torch.Tensor) -> Confidence:
    """``probs (C, h, w)`` → class, max probability, entropy of p/Σp in bits, top-1/top-2 gap."""
    c, h, w = probs.shape
    if probs.device.type == "cpu" and probs.dtype == torch.float32 and h * w and _kernel() is not None:
        return _confidence_fused(probs, valid)
    return _confidence_torch(probs, valid)


# ------------------------------------------------------------------ fused CPU kernels (numba)
# The fused patch-level blend + confidence kernel lives here too, beside the row pieces it is built
# from: numba's on-disk cache is invalidated by changes to the kernel's own file only, so a kernel
# calling compiled pieces of another module could keep running stale machine code after an edit.

_njit = kernels.njit(kernels.FASTMATH_APPROX)


@_njit
def _reset(top1, top2, arg, total, plogp):  # pragma: no cover - compiled by numba
    for x in range(top1.shape[0]):
        top1[x] = -np.inf
        top2[x] = -np.inf
        arg[x] = 0
        total[x] = np.float32(0.0)
        plogp[x] = np.float32(0.0)


@_njit
def _accumulate(buf, mant, top1, top2, arg, total, plogp, c):  # pragma: no cover - compiled by numba
    """Fold class ``c``'s probabilities ``buf`` (≥ 0) of one row into the running products."""
    w = buf.shape[0]
    ln2 = np.float32(0.6931471805599453)
    sqrt2 = np.float32(1.4142135)
    one, half = np.float32(1.0), np.float32(0.5)
    bits = buf.view(np.uint32)
    for x in range(w):
        mant[x] = (bits[x] & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000)
    m_f = mant.view(np.float32)
    ci = np.int32(c)
    for x in range(w):
        # ln v = e ln 2 + ln m, m in [1/√2, √2): 2 atanh((m − 1)/(m + 1)) to t⁹ (|t| < 0.172: error < 4e-8).
        v = buf[x]
        e = np.float32(np.int32(bits[x] >> np.uint32(23)) - np.int32(127))
        m = m_f[x]
        big = np.float32(m > sqrt2)
        m = m * (one - half * big)
        e = e + big
        t = (m - one) / (m + one)
        t2 = t * t
        ln_v = np.float32(2.0) * t * (one + t2 * (np.float32(1 / 3) + t2 * (np.float32(1 / 5) + t2 * (np.float32(1 / 7) + t2 * np.float32(1 / 9))))) + e * ln2
        plogp[x] += v * ln_v  # v = 0 gives 0 · (−88) = 0: 0 log 0 = 0
        total[x] += v
        best = top1[x]
        win = v > best
        lo = best if win else v
        arg[x] = ci if win else arg[x]
        top2[x] = lo if lo > top2[x] else top2[x]
        top1[x] = v if win else best


@_njit
def _finish(y, valid, top1, top2, arg, total, plogp, n_classes, classes, maxprob, entropy, gap):  # pragma: no cover
    """Write row ``y`` of the products (nodata where not valid)."""
    _finish_pixels(valid[y], top1, top2, arg, total, plogp, n_classes, classes[y], maxprob[y], entropy[y], gap[y])


@_njit
def _finish_pixels(valid, top1, top2, arg, total, plogp, n_classes, classes, maxprob, entropy, gap):  # pragma: no cover
    """Write the products of pixels ``0 … len(valid)-1`` from their running values (nodata where not valid): one
    row of an image, or one block of a model's pixels (:func:`.models.prototype_kernels.mixture_confidence`)."""
    ln2 = np.float32(0.6931471805599453)
    log2c = np.float32(math.log2(max(n_classes, 1)))
    tiny = np.float32(1.1754944e-38)
    nan = np.float32(np.nan)
    n = valid.shape[0]
    for x in range(n):
        if valid[x]:
            t_x = max(total[x], tiny)
            h_x = (np.float32(math.log(t_x)) - plogp[x] / t_x) / ln2
            entropy[x] = min(max(h_x, np.float32(0.0)), log2c)
            maxprob[x] = top1[x]
            gap[x] = top1[x] - top2[x] if n_classes >= 2 else top1[x]
        else:
            maxprob[x] = nan
            entropy[x] = nan
            gap[x] = nan
    # Class ids in a loop of their own: with the uint8 store inside the loop above, numba 0.68.0 (numpy 2.5,
    # a 16-core Xeon) wrote 8 bytes past the row (measured; the next row's first pixels, or past the array) —
    # rows split over threads then lost their first 8 class ids.
    for x in range(n):
        classes[x] = np.uint8(arg[x]) if valid[x] else np.uint8(255)


@_njit
def _row_has_data(valid, y):  # pragma: no cover - compiled by numba
    for x in range(valid.shape[1]):
        if valid[y, x]:
            return True
    return False


@_njit
def _row_buffers(w):  # pragma: no cover - compiled by numba
    """One row's scratch: values, mantissas, top-1, top-2, Σp, Σp ln p, argmax (``w`` each)."""
    f32 = np.float32
    return (np.empty(w, f32), np.empty(w, np.uint32), np.empty(w, f32), np.empty(w, f32), np.empty(w, f32),
            np.empty(w, f32), np.empty(w, np.int32))


@_njit
def _confidence_rows(p, valid, classes, maxprob, entropy, gap, r0, r1):  # pragma: no cover - compiled by numba
    """Rows ``r0 … r1-1`` of the products of ``p (C, h, w)`` float32."""
    n_classes, _, w = p.shape
    buf, mant, top1, top2, total, plogp, arg = _row_buffers(w)
    for y in range(r0, r1):
        if _row_has_data(valid, y):  # rows without a valid pixel cost nothing
            _reset(top1, top2, arg, total, plogp)
            for c in range(n_classes):
                for x in range(w):
                    buf[x] = max(p[c, y, x], np.float32(0.0))
                _accumulate(buf, mant, top1, top2, arg, total, plogp, c)
        _finish(y, valid, top1, top2, arg, total, plogp, n_classes, classes, maxprob, entropy, gap)


@_njit
def _blend_confidence_rows(rows, first, second, w_first, w_second, valid, classes, maxprob, entropy, gap, r0, r1):  # pragma: no cover
    """Rows ``r0 … r1-1`` of the products of the patch-level blend ``p[c, y] = w_first[y] · rows[c, first[y]] +
    w_second[y] · rows[c, second[y]]`` (``rows = G · A_xᵀ``, (C, ky, w)), without materialising ``p``."""
    n_classes, _, w = rows.shape
    buf, mant, top1, top2, total, plogp, arg = _row_buffers(w)
    for y in range(r0, r1):
        if _row_has_data(valid, y):
            _reset(top1, top2, arg, total, plogp)
            a, b = w_first[y], w_second[y]
            for c in range(n_classes):
                r1_ = rows[c, first[y]]
                r2_ = rows[c, second[y]]
                for x in range(w):
                    buf[x] = max(a * r1_[x] + b * r2_[x], np.float32(0.0))
                _accumulate(buf, mant, top1, top2, arg, total, plogp, c)
        _finish(y, valid, top1, top2, arg, total, plogp, n_classes, classes, maxprob, entropy, gap)


#: Output rows the dense fused kernel blends together: each (patch, class) is then read as one contiguous
#: run of up to ``DENSE_BAND_ROWS × P`` values (row by row, runs of P values at 1 MB strides left it waiting
#: on memory: 0.20 s for 1440² × 19 classes, 0.10 s with bands of 16), and the band's scratch stays in L2.
DENSE_BAND_ROWS = 16


@_njit
def _dense_confidence_rows(grid, window, top, left, stride, valid, classes, maxprob, entropy, gap, r0, r1):  # pragma: no cover
    """Rows ``r0 … r1-1`` of the products of the dense overlap-add of ``grid (ny, nx, C, P, P)`` weighted by
    ``window (P, P)`` (normalised: the weights of a pixel sum to 1), output row ``y`` being canvas row
    ``top + y`` and column ``x`` canvas column ``left + x``, without a canvas. Each pixel sums its covering
    patches in raster order from 0, as :class:`.blend.DenseCanvas` adds batches in raster order (same
    float32 results), and each patch output is read once."""
    ny, nx, n_classes, p, _ = grid.shape
    w = valid.shape[1]
    band = DENSE_BAND_ROWS
    f32 = np.float32
    buf = np.empty((band, w), f32)
    mant = np.empty(w, np.uint32)
    top1, top2 = np.empty((band, w), f32), np.empty((band, w), f32)
    total, plogp = np.empty((band, w), f32), np.empty((band, w), f32)
    arg = np.empty((band, w), np.int32)
    has_data = np.empty(band, np.bool_)
    kx_first = max(left // stride - 1, 0)
    kx_last = min((left + w - 1) // stride, nx - 1)
    y0 = r0
    while y0 < r1:
        k = (top + y0) // stride
        # The band ends where the rows' covering patch rows change (a multiple of the stride).
        y1 = min(r1, y0 + band, (k + 1) * stride - top)
        n = y1 - y0
        any_data = False
        for b in range(n):
            has_data[b] = _row_has_data(valid, y0 + b)
            any_data = any_data or has_data[b]
            _reset(top1[b], top2[b], arg[b], total[b], plogp[b])
        if any_data:
            for c in range(n_classes):
                buf[:n] = f32(0.0)
                for ky in range(max(k - 1, 0), min(k, ny - 1) + 1):
                    ty0 = top + y0 - ky * stride
                    for kx in range(kx_first, kx_last + 1):
                        x0 = kx * stride - left  # the patch's first column, output coordinates
                        a = max(x0, 0)
                        e = min(x0 + p, w)
                        src = grid[ky, kx, c]
                        for b in range(n):
                            # Slices, so that the loop below indexes from 0 (it vectorises; x - x0 did not).
                            s_row = src[ty0 + b, a - x0: e - x0]
                            w_row = window[ty0 + b, a - x0: e - x0]
                            o_row = buf[b, a:e]
                            for t in range(e - a):
                                o_row[t] += s_row[t] * w_row[t]
                for b in range(n):
                    if has_data[b]:
                        o_row = buf[b]
                        for x in range(w):
                            o_row[x] = max(o_row[x], f32(0.0))
                        _accumulate(o_row, mant, top1[b], top2[b], arg[b], total[b], plogp[b], c)
        for b in range(n):
            _finish(y0 + b, valid, top1[b], top2[b], arg[b], total[b], plogp[b], n_classes, classes, maxprob, entropy, gap)
        y0 = y1


def _kernel():
    """The compiled confidence kernel, or None (see :func:`.kernels.enabled`)."""
    return _confidence_rows if kernels.enabled() else None


def kernel_threads() -> int:
    """Threads a fused CPU kernel call splits its rows over: half the usable cores (the writer stage,
    which runs these kernels, shares the machine with the model), at least one."""
    return max(1, usable_cores() // 2)


def _run_rows(kernel: Callable[..., None], h: int, w: int, *args: object) -> None:
    """``kernel(*args, r0, r1)`` over rows ``0 … h-1``, split over :func:`kernel_threads` threads when worth it
    (:func:`.kernels.run_shares`). Starting and joining the workers costs 0.1 ms for one and 0.5 ms for seven
    (measured on a 2-core VM), against 16–30 ms of kernel work per 512 × 2520 strip."""
    threads = max(1, min(kernel_threads(), h))
    if threads == 1 or h * w < PARALLEL_MIN_PIXELS:
        kernel(*args, 0, h)
        return
    bounds = [int(b) for b in np.linspace(0, h, threads + 1).astype(int)]
    kernels.run_shares(kernel, args, bounds, "s2seg-confidence")


def new_products(h: int, w: int) -> tuple[Confidence, tuple[np.ndarray, ...]]:
    """Uninitialised products of an ``h × w`` window and their numpy views, for the fused kernels to fill
    (large ones on huge pages: see :func:`.buffers.empty`)."""
    out = Confidence(classes=empty((h, w), torch.uint8), maxprob=empty((h, w)), entropy=empty((h, w)), gap=empty((h, w)))
    return out, (out.classes.numpy(), out.maxprob.numpy(), out.entropy.numpy(), out.gap.numpy())


def blend_rows_confidence(rows: torch.Tensor, first: torch.Tensor, second: torch.Tensor, w_first: torch.Tensor,
                          w_second: torch.Tensor, valid: torch.Tensor) -> Confidence | None:
    """Products of ``p[:, y] = w_first[y] · rows[:, first[y]] + w_second[y] · rows[:, second[y]]`` in one fused
    pass (CPU, numba); None when the fused kernel is not available (the caller blends, then calls
    :func:`confidence`). The patch-level blend (:func:`.blend.blend_patch_level_confidence`) uses it."""
    if not kernels.enabled() or rows.device.type != "cpu":
        return None
    h, w = valid.shape
    out, arrays = new_products(h, w)
    valid_np = np.ascontiguousarray(valid.cpu().numpy(), dtype=bool)
    _run_rows(_blend_confidence_rows, h, w, rows.to(torch.float32).contiguous().numpy(), first.to(torch.int64).numpy(),
              second.to(torch.int64).numpy(), w_first.to(torch.float32).numpy(), w_second.to(torch.float32).numpy(),
              valid_np, *arrays)
    return out


def dense_blend_confidence(grid: torch.Tensor, window: torch.Tensor, top: int, left: int, stride: int,
                           valid: torch.Tensor, row0: int = 0) -> Confidence | None:
    """Products of the dense overlap-add of ``grid (ny, nx, C, P, P)`` (normalised window ``(P, P)``) over
    output rows ``row0 … row0 + h - 1`` (``h, w = valid.shape``; output ``(y, x)`` is canvas pixel
    ``(top + y, left + x)``) in one fused pass (CPU, numba), reading every patch output once and making no
    canvas; None when the fused kernel is not available. :func:`.blend.blend_dense_confidence` calls it."""
    if not kernels.enabled() or grid.device.type != "cpu":
        return None
    h, w = valid.shape
    out, arrays = new_products(h, w)
    valid_np = np.ascontiguousarray(valid.cpu().numpy(), dtype=bool)
    _run_rows(_dense_confidence_rows, h, w, grid.to(torch.float32).contiguous().numpy(),
              window.to(torch.float32).contiguous().numpy(), top + row0, left, stride, valid_np, *arrays)
    return out


def _confidence_fused(probs: torch.Tensor, valid: torch.Tensor) -> Confidence:
    c, h, w = probs.shape
    p = probs.detach()
    if p.stride(2) != 1:
        p = p.contiguous()
    out, arrays = new_products(h, w)
    valid_np = np.ascontiguousarray(valid.cpu().numpy(), dtype=bool)
    _run_rows(_confidence_rows, h, w, p.numpy(), valid_np, *arrays)
    return out


# ------------------------------------------------------------------ torch path (GPU, or no numba)

def _confidence_torch(probs: torch.Tensor, valid: torch.Tensor) -> Confidence:
    c, h, w = probs.shape
    device, dtype = probs.device, probs.dtype
    out = Confidence(
        classes=torch.full((h, w), CLASS_NODATA, dtype=torch.uint8, device=device),
        maxprob=torch.full((h, w), math.nan, dtype=dtype, device=device),
        entropy=torch.full((h, w), math.nan, dtype=dtype, device=device),
        gap=torch.full((h, w), math.nan, dtype=dtype, device=device),
    )
    if h == 0 or w == 0:
        return out
    # On a GPU one block is best (no cache to fit, launches cost); on a CPU blocks of whole rows.
    rows = h if device.type != "cpu" else max(1, min(h, BLOCK_PIXELS // w))
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        block_valid = valid[r0:r1]
        if not bool(block_valid.any()):
            continue  # nodata costs nothing: the block keeps its nodata values
        _block(probs[:, r0:r1], block_valid, out, r0, r1)
    return out


def _block(p: torch.Tensor, valid: torch.Tensor, out: Confidence, r0: int, r1: int) -> None:
    c = p.shape[0]
    tiny = torch.finfo(p.dtype).tiny
    if c >= 2:
        maxprob, classes = p.max(dim=0)
        runner_up = p.scatter(0, classes[None], -math.inf).amax(dim=0)
        gap = maxprob - runner_up
    else:
        maxprob, classes = p[0], torch.zeros_like(p[0], dtype=torch.long)
        gap = maxprob.clone()
    # Sigmoid (multi-label) outputs need not sum to 1: entropy is taken of q = p / Σp,
    # H = −Σ q log₂ q = log₂ T − (Σ p log₂ p) / T with T = Σp (0 · log 0 = 0: p is clamped to tiny).
    total = p.sum(dim=0).clamp_min(tiny)
    p_log_p = p.clamp_min(tiny).log_().mul_(p).sum(dim=0)
    entropy = total.log().sub_(p_log_p.div_(total)).div_(math.log(2.0)).clamp_(0.0, math.log2(max(c, 1)))
    invalid = ~valid
    out.classes[r0:r1] = classes.to(torch.uint8).masked_fill_(invalid, CLASS_NODATA)
    out.maxprob[r0:r1] = maxprob.masked_fill(invalid, math.nan)
    out.entropy[r0:r1] = entropy.masked_fill_(invalid, math.nan)
    out.gap[r0:r1] = gap.masked_fill_(invalid, math.nan)
