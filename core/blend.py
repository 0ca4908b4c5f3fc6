"""Seamless mosaicking of overlapping patch predictions (DESIGN §3).

Every patch is weighted by the separable window ``W = w ⊗ w`` with
``w(t) = sin(π (t + ½) / P)`` sampled at pixel centres, and the blended
probability is ``Σᵢ Pᵢ Wᵢ / Σᵢ Wᵢ``. Because patches sit on the global grid of
stride ``S = P / 2``, each pixel sees exactly two patches per axis, so the
window normalisation is separable too, and periodic: it is folded into the
weights beforehand. No Python loop runs over patches or pixels (the CPU kernels
are compiled with numba when it is installed; torch operations otherwise).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from . import kernels
from .buffers import empty
from .grid import Chunk
from .uncertainty import Confidence, blend_rows_confidence, confidence, dense_blend_confidence


def window_1d(patch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``sin(π (t + ½) / P)`` for t = 0 … P−1: largest at the centre, never zero at the edge."""
    t = torch.arange(patch_size, dtype=torch.float64, device=device)
    return torch.sin(math.pi * (t + 0.5) / patch_size).float()


@dataclass(frozen=True)
class AxisWeights:
    """For each output pixel along one axis: its two covering patches (chunk-relative) and their
    window weights, normalised so the pair sums to 1."""

    first: torch.Tensor  # patch index y // S - 1, relative to the chunk's first patch
    second: torch.Tensor  # patch index y // S
    w_first: torch.Tensor
    w_second: torch.Tensor


def axis_weights(start: int, stop: int, first_patch: int, patch_size: int, device: torch.device | str = "cpu") -> AxisWeights:
    """Weights for global pixels ``start … stop-1`` along one axis."""
    stride = patch_size // 2
    w = window_1d(patch_size, device)
    pixels = torch.arange(start, stop, device=device)
    second = torch.div(pixels, stride, rounding_mode="floor")
    first = second - 1
    w_first = w[pixels - first * stride]
    w_second = w[pixels - second * stride]
    total = w_first + w_second
    return AxisWeights(first - first_patch, second - first_patch, w_first / total, w_second / total)


def _axis_matrix(start: int, stop: int, first_patch: int, n_patches: int, patch_size: int, device: torch.device | str) -> torch.Tensor:
    """``A (stop - start, n_patches)``: row ``i`` holds the normalised window weights of pixel ``start + i``
    on its two covering patches (columns relative to ``first_patch``), zeros elsewhere."""
    ax = axis_weights(start, stop, first_patch, patch_size, device)
    rows = torch.arange(stop - start, device=device)
    matrix = torch.zeros((stop - start, n_patches), dtype=torch.float32, device=device)
    matrix[rows, ax.first] = ax.w_first
    matrix[rows, ax.second] = ax.w_second
    return matrix


@functools.lru_cache(maxsize=4)
def _axis_matrix_t(start: int, stop: int, first_patch: int, n_patches: int, patch_size: int, device: str) -> torch.Tensor:
    """``Aᵀ`` of :func:`_axis_matrix`, contiguous; the strips of a chunk share it (read-only)."""
    return _axis_matrix(start, stop, first_patch, n_patches, patch_size, device).T.contiguous()


def blend_patch_level(grid: torch.Tensor, chunk: Chunk, patch_size: int, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Blend patch-level predictions ``grid (ny, nx, C)`` into probabilities ``(C, h, w)``.

    ``P_c = A_y · G_c · A_xᵀ`` with ``A`` holding each pixel's two normalised window
    weights (DESIGN §3). The x product is small (patch rows × width); the y product
    has two non-zeros per output row, so each output row is ``a₁ X[i₁] + a₂ X[i₂]``
    of two rows of ``X = G · A_xᵀ``: on a CPU one fused pass writes the output once
    (numba), elsewhere a matrix product. ``rows`` (global, within the chunk)
    restricts the output to a strip to bound memory; only the patch rows that
    touch the strip take part.
    """
    row0, row1 = rows or (chunk.row0, chunk.row1)
    along_x, first_row = _along_x(grid, chunk, patch_size, row0, row1)
    return _mix_rows(along_x, first_row, row0, row1, patch_size)


def blend_patch_level_confidence(grid: torch.Tensor, chunk: Chunk, patch_size: int, valid: torch.Tensor,
                                 rows: tuple[int, int] | None = None) -> Confidence:
    """``confidence(blend_patch_level(grid, chunk, patch_size, rows), valid)`` without materialising the
    ``(C, h, w)`` probabilities: on a CPU with numba one fused pass per output row blends the two covering
    patch rows and folds every class into the products (about twice as fast as the two calls, and no
    C × rows × width buffer). For a pipeline that does not write per-class probabilities."""
    row0, row1 = rows or (chunk.row0, chunk.row1)
    along_x, first_row = _along_x(grid, chunk, patch_size, row0, row1)
    ay = axis_weights(row0, row1, first_row, patch_size, grid.device)
    fused = blend_rows_confidence(along_x, ay.first, ay.second, ay.w_first, ay.w_second, valid)
    if fused is not None:
        return fused
    return confidence(_mix_rows(along_x, first_row, row0, row1, patch_size), valid)


def _along_x(grid: torch.Tensor, chunk: Chunk, patch_size: int, row0: int, row1: int) -> tuple[torch.Tensor, int]:
    """``X = G · A_xᵀ`` for the patch rows that touch global rows ``row0 … row1-1``: ``(C, ky, w)``, and the
    global index of its first patch row."""
    stride = patch_size // 2
    ny, nx, c = grid.shape
    # Patch rows covering the strip (chunk-relative): y // S - 1 … (row1 - 1) // S.
    k0 = max(row0 // stride - 1 - chunk.ky0, 0)
    k1 = min((row1 - 1) // stride + 1 - chunk.ky0, ny)
    a_x_t = _axis_matrix_t(chunk.col0, chunk.col1, chunk.kx0, nx, patch_size, str(grid.device))  # (nx, w), cached per chunk
    g = grid[k0:k1].to(torch.float32).permute(2, 0, 1).reshape(c * (k1 - k0), nx)  # (C·ky, nx)
    return torch.mm(g, a_x_t).view(c, k1 - k0, chunk.width), chunk.ky0 + k0  # one 2-D product


def _mix_rows(along_x: torch.Tensor, first_row: int, row0: int, row1: int, patch_size: int) -> torch.Tensor:
    """The y product: output row ``y`` = its two normalised window weights × its two covering rows of ``X``."""
    c, ky, width = along_x.shape
    device = along_x.device
    out = empty((c, row1 - row0, width), device=device)
    kernel = _rows_kernel() if device.type == "cpu" else None
    if kernel is not None:
        ay = axis_weights(row0, row1, first_row, patch_size, device)
        kernel(out.numpy(), along_x.contiguous().numpy(), ay.first.to(torch.int64).numpy(), ay.second.to(torch.int64).numpy(),
               ay.w_first.numpy(), ay.w_second.numpy())
        return out
    a_y = _axis_matrix(row0, row1, first_row, ky, patch_size, device)  # (h, ky)
    return torch.matmul(a_y, along_x, out=out)  # (C, h, w)


@kernels.njit()
def _two_row_mix(out, rows, first, second, w_first, w_second):  # pragma: no cover - compiled by numba
    """``out[c, y] = w_first[y] · rows[c, first[y]] + w_second[y] · rows[c, second[y]]``."""
    n_classes, height, width = out.shape
    for c in range(n_classes):
        for y in range(height):
            r1 = rows[c, first[y]]
            r2 = rows[c, second[y]]
            a = w_first[y]
            b = w_second[y]
            o = out[c, y]
            for x in range(width):
                o[x] = a * r1[x] + b * r2[x]


def _rows_kernel():
    """numba-compiled :func:`_two_row_mix`, or None (see :func:`.kernels.enabled`)."""
    return _two_row_mix if kernels.enabled() else None


def normalised_window_1d(patch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``w(t) / (w(t mod S) + w(t mod S + S))``: the window divided by the sum of the two windows that
    cover the same pixel (S = P/2, so that sum depends on ``t mod S`` only). Blending with ``n ⊗ n``
    therefore needs no division afterwards: every pixel's weights already sum to 1."""
    stride = patch_size // 2
    t = torch.arange(patch_size, dtype=torch.float64, device=device)
    w = torch.sin(math.pi * (t + 0.5) / patch_size)
    o = t.remainder(stride)
    total = torch.sin(math.pi * (o + 0.5) / patch_size) + torch.sin(math.pi * (o + stride + 0.5) / patch_size)
    return (w / total).float()


def blend_dense(grid: torch.Tensor, chunk: Chunk, patch_size: int) -> torch.Tensor:
    """Blend dense predictions ``grid (ny, nx, C, P, P)`` into probabilities ``(C, h, w)``.

    Overlap-add in four parity groups: patches with the same (ky mod 2, kx mod 2)
    tile the plane without overlap, so each group is one strided multiply-add of
    the group, viewed as (C, gy, P, gx, P), into the canvas. The window is
    normalised beforehand (:func:`normalised_window_1d`), so the canvas is the
    result: no division pass, no temporary copy of the grid. The returned tensor
    is a view of the canvas (not contiguous).
    """
    ny, nx, c, p, _ = grid.shape
    stride = patch_size // 2
    device = grid.device
    n = normalised_window_1d(patch_size, device)
    window = (n[:, None] * n[None, :]).to(grid.dtype)[:, None, :]  # (P, 1, P) → broadcasts over (C, gy, P, gx, P)
    height, width = (ny + 1) * stride, (nx + 1) * stride
    canvas = empty((c, height, width), dtype=grid.dtype, device=device).zero_()
    for a in (0, 1):
        for b in (0, 1):
            group = grid[a::2, b::2]
            gy, gx = group.shape[:2]
            if gy == 0 or gx == 0:
                continue
            target = canvas[:, a * stride: a * stride + gy * p, b * stride: b * stride + gx * p].unflatten(1, (gy, p)).unflatten(3, (gx, p))
            target.addcmul_(group.permute(2, 0, 3, 1, 4), window)
    top = chunk.row0 - chunk.ky0 * stride
    left = chunk.col0 - chunk.kx0 * stride
    return canvas[:, top: top + chunk.height, left: left + chunk.width]


def dense_window(patch_size: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The dense blend's ``(P, P)`` weights ``n ⊗ n`` (:func:`normalised_window_1d`), as every dense path uses them."""
    n = normalised_window_1d(patch_size, device).to(dtype)
    return n[:, None] * n[None, :]


def blend_dense_confidence(grid: torch.Tensor, chunk: Chunk, patch_size: int, valid: torch.Tensor,
                           rows: tuple[int, int] | None = None) -> Confidence:
    """``confidence`` of the dense blend of ``grid (ny, nx, C, P, P)`` over global rows ``rows`` (default: the
    chunk's), without a canvas: on a CPU with numba one pass per output row sums its (up to four) covering
    patch rows in raster order and folds every class into the products, so each patch output is read once
    (a canvas is written four times and read again). Equal to :class:`DenseCanvas` fed the whole grid in
    raster order, then :func:`.uncertainty.confidence` (same float32 operations in the same order)."""
    row0, row1 = rows or (chunk.row0, chunk.row1)
    stride = patch_size // 2
    top, left = chunk.row0 - chunk.ky0 * stride, chunk.col0 - chunk.kx0 * stride
    window = dense_window(patch_size, grid.device, torch.float32)
    fused = dense_blend_confidence(grid, window, top, left, stride, valid, row0 - chunk.row0)
    if fused is not None:
        return fused
    return confidence(blend_dense(grid, chunk, patch_size)[:, row0 - chunk.row0: row1 - chunk.row0], valid)


class DenseCanvas:
    """Overlap-add of dense predictions batch by batch, for a pipeline that blends as it infers.

    Holds ``(C, (ny + 1)·S, (nx + 1)·S)`` instead of the ``(ny, nx, C, P, P)`` grid that
    :func:`blend_dense` takes: four times less memory per chunk in flight, and patches
    that are never added (nodata) cost nothing. ``add`` takes the chunk-relative patch
    indices of a batch and its outputs ``(n, C, P, P)``; :meth:`result` is the same as
    ``blend_dense`` of the full grid (within float rounding).
    """

    def __init__(self, chunk: Chunk, patch_size: int, num_classes: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.chunk, self.patch_size = chunk, patch_size
        self.stride = patch_size // 2
        self.window = dense_window(patch_size, device, dtype)
        height, width = (chunk.n_patches_y + 1) * self.stride, (chunk.n_patches_x + 1) * self.stride
        self.canvas = empty((num_classes, height, width), dtype=dtype, device=device).zero_()

    def add(self, ky: torch.Tensor, kx: torch.Tensor, probs: torch.Tensor) -> None:
        """Add patches ``(ky[i], kx[i])`` (chunk-relative) with outputs ``probs[i]`` (C, P, P)."""
        ky = torch.as_tensor(ky, device=self.canvas.device).long()
        kx = torch.as_tensor(kx, device=self.canvas.device).long()
        kernel = _add_kernel() if self.canvas.device.type == "cpu" else None
        if kernel is not None:  # compiled loop over the batch: each patch is one pass over its P × P block
            kernel(self.canvas.numpy(), probs.detach().to(self.canvas.dtype).contiguous().numpy(), ky.numpy(), kx.numpy(),
                   self.window.numpy(), self.stride)
            return
        # Elsewhere: one scatter-add of every pixel of the batch (duplicates accumulate).
        c, height, width = self.canvas.shape
        p = self.patch_size
        offsets = (torch.arange(p, device=ky.device)[:, None] * width + torch.arange(p, device=ky.device)[None, :]).view(-1)
        index = ((ky * self.stride * width + kx * self.stride)[:, None] + offsets[None, :]).view(-1)
        values = (probs.to(self.canvas.dtype) * self.window).permute(1, 0, 2, 3).reshape(c, -1)
        self.canvas.view(c, -1).index_add_(1, index, values)

    def result(self) -> torch.Tensor:
        """Blended probabilities ``(C, h, w)`` of the chunk's output window (a view of the canvas)."""
        chunk, s = self.chunk, self.stride
        top, left = chunk.row0 - chunk.ky0 * s, chunk.col0 - chunk.kx0 * s
        return self.canvas[:, top: top + chunk.height, left: left + chunk.width]


@kernels.njit()
def _add_patches(canvas, probs, ky, kx, window, stride):  # pragma: no cover - compiled by numba
    n, n_classes, p, _ = probs.shape
    for i in range(n):
        y0 = ky[i] * stride
        x0 = kx[i] * stride
        for c in range(n_classes):
            for ty in range(p):
                row = canvas[c, y0 + ty, x0: x0 + p]  # a slice, so that the loop indexes from 0 and vectorises
                src = probs[i, c, ty]
                wrow = window[ty]
                for tx in range(p):
                    row[tx] += src[tx] * wrow[tx]


def _add_kernel():
    """numba-compiled :func:`_add_patches`, or None (see :func:`.kernels.enabled`)."""
    return _add_patches if kernels.enabled() else None
