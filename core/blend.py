"""Seamless mosaicking of overlapping patch predictions (DESIGN §3).

Every patch is weighted by the separable window ``W = w ⊗ w`` with
``w(t) = sin(π (t + ½) / P)`` sampled at pixel centres, and the blended
probability is ``Σᵢ Pᵢ Wᵢ / Σᵢ Wᵢ``. Because patches sit on the global grid of
stride ``S = P / 2``, each pixel sees exactly two patches per axis, so the
window normalisation is separable too. Nothing here loops over patches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .grid import Chunk


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


def blend_patch_level(grid: torch.Tensor, chunk: Chunk, patch_size: int, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Blend patch-level predictions ``grid (ny, nx, C)`` into probabilities ``(C, h, w)``.

    Separable form of ``A_y · G_c · A_xᵀ``: ``A`` has two non-zeros per row, so
    each product is two gathers and a weighted sum. ``rows`` (global, within the
    chunk) restricts the output to a strip to bound memory.
    """
    row0, row1 = rows or (chunk.row0, chunk.row1)
    device = grid.device
    ax = axis_weights(chunk.col0, chunk.col1, chunk.kx0, patch_size, device)
    ay = axis_weights(row0, row1, chunk.ky0, patch_size, device)
    g = grid.permute(2, 0, 1)  # (C, ny, nx)
    along_x = g[:, :, ax.first] * ax.w_first + g[:, :, ax.second] * ax.w_second  # (C, ny, w)
    return along_x[:, ay.first, :] * ay.w_first[:, None] + along_x[:, ay.second, :] * ay.w_second[:, None]


def blend_dense(grid: torch.Tensor, chunk: Chunk, patch_size: int) -> torch.Tensor:
    """Blend dense predictions ``grid (ny, nx, C, P, P)`` into probabilities ``(C, h, w)``.

    Overlap-add in four parity groups: patches with the same (ky mod 2, kx mod 2)
    tile the plane without overlap, so each group is one reshape and one add.
    """
    ny, nx, c, p, _ = grid.shape
    stride = patch_size // 2
    device = grid.device
    w = window_1d(patch_size, device)
    window = w[:, None] * w[None, :]
    canvas = torch.zeros((c, (ny + 1) * stride, (nx + 1) * stride), dtype=grid.dtype, device=device)
    for a in (0, 1):
        for b in (0, 1):
            group = grid[a::2, b::2]
            gy, gx = group.shape[:2]
            if gy == 0 or gx == 0:
                continue
            tiles = (group * window).permute(2, 0, 3, 1, 4).reshape(c, gy * p, gx * p)
            canvas[:, a * stride: a * stride + gy * p, b * stride: b * stride + gx * p] += tiles
    top = chunk.row0 - chunk.ky0 * stride
    left = chunk.col0 - chunk.kx0 * stride
    numerator = canvas[:, top: top + chunk.height, left: left + chunk.width]
    wy = _window_sum(chunk.row0, chunk.row1, patch_size, w)
    wx = _window_sum(chunk.col0, chunk.col1, patch_size, w)
    return numerator / (wy[:, None] * wx[None, :])


def _window_sum(start: int, stop: int, patch_size: int, w: torch.Tensor) -> torch.Tensor:
    """Σ of the 1-D window over the two patches covering each pixel (the separable ΣW)."""
    stride = patch_size // 2
    pixels = torch.arange(start, stop, device=w.device)
    offset = pixels - torch.div(pixels, stride, rounding_mode="floor") * stride
    return w[offset] + w[offset + stride]
