"""Chunk sizing and the global patch grid.

Patches of size ``P`` start at ``k * S`` (``S = P / 2``) for ``k = -1 … (n - 1) // S``,
anchored to the tile, not to the chunk. Every 10 m pixel ``y`` is therefore
covered by exactly the two patches ``y // S - 1`` and ``y // S`` along each axis,
whatever the chunk size, and a chunk computes all patches touching its output
window from a halo of ``S`` pixels (reflected outside the tile). That is what
makes the outputs independent of the chunk size. A tile (or crop) smaller than one patch
is planned the same way: its patches reach past the tile on both sides, all reflected.

A model whose pixel is ``f × f`` 10 m pixels (``f = resolution / 10``, e.g. 3 for a
30 m model) has the same grid in its own pixels: patches of ``P`` model pixels at
stride ``S' = P / 2`` model pixels, i.e. ``P·f`` and ``S = S'·f`` 10 m pixels. Its blended
output is interpolated back to 10 m bilinearly, and that needs the blended value of one
model pixel beyond each edge of the chunk (:func:`model_chunk`, :attr:`GridPlan.margin`).

**Patch count.** A chunk computes exactly the patches its model pixels need, no more: model
pixel ``m`` is blended from patches ``m // S' − 1`` and ``m // S'``, so a chunk of 10 m rows
``[r0, r1)`` whose model window is rows ``a … b`` (``a = r0``, ``b = r1 − 1`` when ``f = 1``;
``a = r0 // f − 1``, ``b = ⌈r1 / f⌉`` otherwise) computes patch rows
``a // S' − 1 … b // S'`` (:func:`patch_range`), and the same along columns. Per axis that is
``b // S' − a // S' + 2`` patches: ``⌈n / S⌉ + 1`` for ``f = 1`` on ``n`` rows starting on the
grid. For a coarse model the pixel beyond a chunk edge that lies on the patch grid (every
interior chunk edge, and the tile's first row and column) needs one more patch row than the
chunk's own pixels; at the tile's far edge it needs one only when ``⌈n / f⌉`` is a multiple of
``S'``. The patch range is a pure function of the chunk's edges on the global grid, so the
outputs remain independent of the chunk size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .bands import RESOLUTION_LCM
from .errors import ConfigError


@dataclass(frozen=True)
class Chunk:
    """One output window of the tile and the range of global patches that cover it."""

    index: int
    row0: int
    row1: int
    col0: int
    col1: int
    #: global patch indices [ky0, ky1) × [kx0, kx1)
    ky0: int
    ky1: int
    kx0: int
    kx1: int
    #: patch stride in 10 m pixels
    stride: int

    @property
    def height(self) -> int:
        return self.row1 - self.row0

    @property
    def width(self) -> int:
        return self.col1 - self.col0

    @property
    def n_patches_y(self) -> int:
        return self.ky1 - self.ky0

    @property
    def n_patches_x(self) -> int:
        return self.kx1 - self.kx0

    @property
    def input_rows(self) -> tuple[int, int]:
        """10 m rows read for this chunk (may extend beyond the tile: reflected)."""
        return self.ky0 * self.stride, (self.ky1 + 1) * self.stride

    @property
    def input_cols(self) -> tuple[int, int]:
        return self.kx0 * self.stride, (self.kx1 + 1) * self.stride


@dataclass(frozen=True)
class GridPlan:
    """How a tile of ``height × width`` 10 m pixels is cut into chunks and patches."""

    height: int
    width: int
    #: patch edge in model pixels
    patch_size: int
    chunk_size: int
    chunks: tuple[Chunk, ...]
    #: 10 m pixels per model pixel along each axis
    factor: int = 1
    #: ``(row0, col0, height, width)`` of the tile written (an area of interest, :func:`plan_window`);
    #: None: the whole tile. Chunks keep tile coordinates (the patch grid is the tile's).
    window: tuple[int, int, int, int] | None = None

    @property
    def output_window(self) -> tuple[int, int, int, int]:
        """``(row0, col0, height, width)`` of the products in tile pixels."""
        return self.window or (0, 0, self.height, self.width)

    @property
    def stride(self) -> int:
        """Patch stride in 10 m pixels."""
        return self.patch_size // 2 * self.factor

    @property
    def margin(self) -> int:
        """Model pixels beyond each side of a chunk whose blended values the chunk computes (the
        neighbours bilinear back-projection to 10 m needs; see the module docstring)."""
        return 1 if self.factor > 1 else 0

    @property
    def n_patches(self) -> int:
        """Distinct global patches a whole-tile run computes (before skipping nodata ones)."""
        k0, k1 = patch_range(0, self.height, self.stride, self.factor)
        j0, j1 = patch_range(0, self.width, self.stride, self.factor)
        return (k1 - k0) * (j1 - j0)


#: GeoTIFF tile edges must be multiples of 16 pixels.
TIFF_BLOCK_MULTIPLE = 16
#: Largest output GeoTIFF block edge (pixels).
MAX_BLOCK = 512
#: Smallest block accepted when it divides the chunk size (smaller blocks compress poorly).
MIN_ALIGNED_BLOCK = 64


def chunk_unit(footprint: int) -> int:
    """Chunk sizes are multiples of lcm(6, stride): edges on every band's pixel grid and on the patch grid
    (and so on the model's pixel grid). ``footprint`` is the patch edge in 10 m pixels."""
    return math.lcm(RESOLUTION_LCM, footprint // 2)


def aligned_unit(footprint: int) -> int:
    """lcm(chunk unit, 16): chunk sizes that are multiples of this can be cut into whole GeoTIFF blocks."""
    return math.lcm(chunk_unit(footprint), TIFF_BLOCK_MULTIPLE)


def choose_chunk_size(preferred: int, footprint: int, height: int, width: int) -> int:
    """The chunk size used when the user gives none.

    The largest multiple of :func:`aligned_unit` not above ``preferred`` (so that
    output blocks never straddle two chunks: every block is written once, whole,
    and every chunk is journaled as soon as it is written — see :func:`block_size`
    and :func:`journal_points`); when
    ``preferred`` is below that unit, the largest multiple of :func:`chunk_unit`
    not above it; at least one chunk unit; and no larger than needed to cover
    the tile in one chunk.
    """
    unit = chunk_unit(footprint)
    aligned = aligned_unit(footprint)
    whole = math.ceil(max(height, width) / unit) * unit
    if preferred >= aligned:
        size = (preferred // aligned) * aligned
        while size > aligned and size % block_size(size):  # e.g. 4656 = 97 × 48: only 48 px blocks divide it
            size -= aligned
    else:
        size = max(unit, (preferred // unit) * unit)
    return min(size, whole)


def block_size(chunk_size: int) -> int:
    """Output GeoTIFF block edge (a multiple of 16, at most :data:`MAX_BLOCK`) for a chunk size.

    The largest such block that divides the chunk size, when it is at least
    :data:`MIN_ALIGNED_BLOCK`: chunks then cover whole blocks, every block is written
    once, and every chunk can be journaled as soon as it is written (see
    :func:`journal_points`). Otherwise (a chunk size chosen by hand, e.g. 60 or 2520)
    blocks straddle chunks; the block is then chosen so that block and chunk edges
    meet as often as possible (smallest lcm, then the largest block), because chunks
    can only be journaled where they do.
    """
    aligned = [b for b in range(MIN_ALIGNED_BLOCK, MAX_BLOCK + 1, TIFF_BLOCK_MULTIPLE) if chunk_size % b == 0]
    if aligned:
        return aligned[-1]
    top = min(MAX_BLOCK, max(TIFF_BLOCK_MULTIPLE, chunk_size // TIFF_BLOCK_MULTIPLE * TIFF_BLOCK_MULTIPLE))
    bottom = 128 if top >= 128 else TIFF_BLOCK_MULTIPLE
    candidates = range(bottom, top + 1, TIFF_BLOCK_MULTIPLE)
    return min(candidates, key=lambda b: (math.lcm(b, chunk_size), -b))


def journal_points(grid: "GridPlan", block: int) -> frozenset[int]:
    """Indices of the chunks after which the chunks written so far may be journaled.

    Chunks are written in index (row-major) order, so the written chunks always form a
    staircase: whole chunk rows, then the start of one row. A chunk is a journal
    point when that staircase's edges all lie on block edges (or on the tile edge):
    every block is then either entirely written or not touched at all, so the
    journaled part of a file is complete on disk and no later chunk — in this run or
    in a resumed one — ever writes into its blocks again (a rewrite in place of a
    block shared with a journaled chunk could be torn by a crash). With a block size
    that divides the chunk size every chunk is a journal point.
    """
    points = set()
    oy, ox, height, width = grid.output_window  # block edges are the products', not the tile's
    for chunk in grid.chunks:
        last = chunk.index == len(grid.chunks) - 1
        row_end = chunk.col1 - ox == width
        bottom_ok = (chunk.row1 - oy) % block == 0 or chunk.row1 - oy == height
        if last or (row_end and bottom_ok) or (
                not row_end and (chunk.row0 - oy) % block == 0 and (chunk.col1 - ox) % block == 0 and bottom_ok):
            points.add(chunk.index)
    return frozenset(points)


def plan(height: int, width: int, patch_size: int, chunk_size: int, factor: int = 1) -> GridPlan:
    """Cut the tile into chunks of ``chunk_size`` 10 m pixels (a multiple of :func:`chunk_unit`);
    ``patch_size`` is in model pixels of ``factor × factor`` 10 m pixels."""
    if patch_size < 2 or patch_size % 2:
        raise ConfigError(f"patch size must be an even number of pixels, got {patch_size}")
    if factor < 1:
        raise ConfigError(f"the model pixel must be at least one 10 m pixel, got a factor of {factor}")
    if height < 1 or width < 1:
        raise ConfigError(f"the tile must have at least one pixel, got {width} × {height} px")
    footprint = patch_size * factor
    # A tile smaller than one patch needs nothing special: the grid still puts every pixel under two
    # patches per axis, and the reader fills whatever they cover beyond the tile by reflection.
    _check_chunk_size(chunk_size, footprint)
    stride = footprint // 2
    chunks = []
    for row0 in range(0, height, chunk_size):
        row1 = min(row0 + chunk_size, height)
        for col0 in range(0, width, chunk_size):
            col1 = min(col0 + chunk_size, width)
            chunks.append(_chunk(len(chunks), row0, row1, col0, col1, stride, factor))
    return GridPlan(height, width, patch_size, chunk_size, tuple(chunks), factor)


def plan_window(height: int, width: int, patch_size: int, chunk_size: int, window: tuple[int, int, int, int],
                factor: int = 1) -> GridPlan:
    """:func:`plan` restricted to ``window`` = ``(row0, col0, height, width)`` of the tile: only the
    chunks of that window are planned, cut at multiples of ``chunk_size`` from its corner (so that
    output blocks, which start there, do not straddle chunks), in tile coordinates, with the tile's
    global patches. Every pixel of the window therefore gets what a whole-tile run computes."""
    whole = plan(height, width, patch_size, chunk_size, factor)  # validates the sizes
    row0, col0, h, w = window
    if h < 1 or w < 1 or row0 < 0 or col0 < 0 or row0 + h > height or col0 + w > width:
        raise ConfigError(f"window rows {row0}–{row0 + h}, cols {col0}–{col0 + w} is not inside the "
                          f"{width} × {height} px tile")
    stride = whole.stride
    chunks = []
    for r0 in range(row0, row0 + h, chunk_size):
        r1 = min(r0 + chunk_size, row0 + h)
        for c0 in range(col0, col0 + w, chunk_size):
            c1 = min(c0 + chunk_size, col0 + w)
            chunks.append(_chunk(len(chunks), r0, r1, c0, c1, stride, factor))
    return GridPlan(height, width, patch_size, chunk_size, tuple(chunks), factor, window=(row0, col0, h, w))


def model_span(start: int, stop: int, factor: int) -> tuple[int, int]:
    """First and last model pixel (inclusive) whose blended values 10 m pixels ``[start, stop)`` need:
    themselves for ``factor == 1``, else one model pixel beyond each side (bilinear back-projection)."""
    if factor == 1:
        return start, stop - 1
    return start // factor - 1, -(-stop // factor)


def patch_range(start: int, stop: int, stride: int, factor: int = 1) -> tuple[int, int]:
    """Global patch indices ``[k0, k1)`` along one axis that 10 m pixels ``[start, stop)`` need (``stride`` in
    10 m pixels): every patch covering a model pixel of :func:`model_span`, and no other."""
    first, last = model_span(start, stop, factor)
    s = stride // factor  # in model pixels
    return first // s - 1, last // s + 1


def _chunk(index: int, row0: int, row1: int, col0: int, col1: int, stride: int, factor: int) -> Chunk:
    """The chunk of output window rows [row0, row1) × cols [col0, col1) and the global patches it needs."""
    ky0, ky1 = patch_range(row0, row1, stride, factor)
    kx0, kx1 = patch_range(col0, col1, stride, factor)
    return Chunk(index=index, row0=row0, row1=row1, col0=col0, col1=col1, ky0=ky0, ky1=ky1, kx0=kx0, kx1=kx1,
                 stride=stride)


def _check_chunk_size(chunk_size: int, footprint: int) -> None:
    unit = chunk_unit(footprint)
    if chunk_size <= 0 or chunk_size % unit:
        lower = max(unit, (chunk_size // unit) * unit)
        raise ConfigError(
            f"chunk size {chunk_size} must be a positive multiple of {unit} (lcm of the 60 m band scale 6 and "
            f"the patch stride {footprint // 2}); nearest valid: {lower} or {lower + unit}"
        )


def model_chunk(chunk: Chunk, factor: int) -> Chunk:
    """``chunk`` in model pixels, for a model whose pixel is ``factor × factor`` 10 m pixels.

    Same patches; the output window grows by one model pixel on each side (the
    neighbours that bilinear interpolation back to 10 m needs at the chunk's edges;
    see :func:`.resample.to_10m`). With ``factor == 1`` it is ``chunk`` itself.
    """
    if factor == 1:
        return chunk
    (r0, r1), (c0, c1) = model_span(chunk.row0, chunk.row1, factor), model_span(chunk.col0, chunk.col1, factor)
    return Chunk(
        index=chunk.index,
        row0=r0, row1=r1 + 1, col0=c0, col1=c1 + 1,
        ky0=chunk.ky0, ky1=chunk.ky1, kx0=chunk.kx0, kx1=chunk.kx1,
        stride=chunk.stride // factor,
    )


def reflect_indices(start: int, stop: int, n: int) -> "np.ndarray":
    """Global indices ``start … stop-1`` folded into ``0 … n-1`` by symmetric reflection at the edges."""
    import numpy as np

    idx = np.arange(start, stop)
    period = 2 * n
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - 1 - idx, idx)


@dataclass(frozen=True)
class OnePassChunk(Chunk):
    """A chunk of a one-pass model (a card with a ``receptive_field``): no patches; the model sees the
    output window plus a halo of the receptive field on each side, clipped to the tile, once."""

    #: 10 m rows and columns read for this chunk: the window grown by the halo, inside the tile
    in_rows: tuple[int, int] = (0, 0)
    in_cols: tuple[int, int] = (0, 0)

    @property
    def input_rows(self) -> tuple[int, int]:
        return self.in_rows

    @property
    def input_cols(self) -> tuple[int, int]:
        return self.in_cols


def plan_one_pass(height: int, width: int, chunk_size: int, halo: int, footprint: int,
                  window: tuple[int, int, int, int] | None = None) -> GridPlan:
    """Cut the tile into chunks for a per-pixel / fully convolutional model whose output at a pixel depends
    on the pixels within ``halo`` 10 m pixels (its receptive field's radius).

    Every chunk is read with that halo, clipped to the tile (so at the tile's edges the model sees the
    same image edge as in one pass over the whole tile), and each pixel is computed once: the outputs
    equal those of one pass over the whole tile, whatever the chunk size. Chunk sizes follow the same
    rule as :func:`plan` for the card's patch ``footprint``, so ``--chunk-size`` means the same for
    every model. ``window`` = ``(row0, col0, height, width)`` restricts the chunks to an area of
    interest, as in :func:`plan_window` (the halo still reaches outside it, within the tile).
    """
    if height < 1 or width < 1:
        raise ConfigError(f"the tile must have at least one pixel, got {width} × {height} px")
    if halo < 0:
        raise ConfigError(f"the halo must be at least 0 pixels, got {halo}")
    _check_chunk_size(chunk_size, footprint)
    top, left, rows, cols = window or (0, 0, height, width)
    if rows < 1 or cols < 1 or top < 0 or left < 0 or top + rows > height or left + cols > width:
        raise ConfigError(f"window rows {top}–{top + rows}, cols {left}–{left + cols} is not inside the "
                          f"{width} × {height} px tile")
    chunks = []
    for row0 in range(top, top + rows, chunk_size):
        row1 = min(row0 + chunk_size, top + rows)
        for col0 in range(left, left + cols, chunk_size):
            col1 = min(col0 + chunk_size, left + cols)
            chunks.append(OnePassChunk(
                index=len(chunks), row0=row0, row1=row1, col0=col0, col1=col1, ky0=0, ky1=1, kx0=0, kx1=1, stride=1,
                in_rows=(max(0, row0 - halo), min(height, row1 + halo)),
                in_cols=(max(0, col0 - halo), min(width, col1 + halo))))
    return GridPlan(height, width, 2, chunk_size, tuple(chunks), window=window)
