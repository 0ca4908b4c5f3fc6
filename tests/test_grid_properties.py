"""Property tests of the grid planner (hypothesis): for random tile sizes, patch sizes and chunk sizes

* the chunks tile the output exactly once, and every chunk window lies on the 10, 20 and 60 m
  pixel grids and on the patch grid;
* every output pixel is covered by the same set of global patches whatever the chunk size, and a
  chunk computes no patch that misses its window and reads every pixel its patches need;
* the automatic chunk size fits the GeoTIFF block grid, and journal points never split a block.
"""
from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings, strategies as st

from s2seg.core.grid import aligned_unit, block_size, choose_chunk_size, chunk_unit, journal_points, plan

HALVES = st.sampled_from([6, 8, 10, 15, 16, 30, 32, 48, 60])  # patch stride S = P / 2


@st.composite
def tiles_and_chunks(draw, n_sizes=2):
    half = draw(HALVES)
    patch = 2 * half
    height = draw(st.integers(1, 720))  # tiles smaller than one patch included
    width = draw(st.integers(1, 720))
    unit = chunk_unit(patch)
    sizes = [draw(st.integers(1, max(1, 720 // unit) + 1)) * unit for _ in range(n_sizes)]
    return height, width, patch, sizes


def patches_covering(pixel: int, stride: int, patch: int, k0: int, k1: int) -> frozenset[int]:
    return frozenset(k for k in range(k0, k1) if k * stride <= pixel < k * stride + patch)


@settings(max_examples=120, deadline=None)
@given(tiles_and_chunks())
def test_chunks_tile_the_output_once_on_every_band_grid(case):
    height, width, patch, sizes = case
    stride = patch // 2
    for size in sizes:
        grid = plan(height, width, patch, size)
        count = np.zeros((height, width), dtype=np.int32)
        for chunk in grid.chunks:
            count[chunk.row0:chunk.row1, chunk.col0:chunk.col1] += 1
            for start, stop, extent in ((chunk.row0, chunk.row1, height), (chunk.col0, chunk.col1, width)):
                for scale in (1, 2, 6):  # 10, 20, 60 m pixels, in 10 m pixels
                    assert start % scale == 0 and (stop % scale == 0 or stop == extent)
                assert start % stride == 0  # on the patch grid
        assert (count == 1).all()
        assert [c.index for c in grid.chunks] == list(range(len(grid.chunks)))


@settings(max_examples=120, deadline=None)
@given(tiles_and_chunks())
def test_every_pixel_sees_the_same_patches_whatever_the_chunk_size(case):
    height, width, patch, sizes = case
    stride = patch // 2
    seen: list[dict[tuple[str, int], frozenset[int]]] = []
    for size in sizes:
        grid = plan(height, width, patch, size)
        cover: dict[tuple[str, int], frozenset[int]] = {}
        for chunk in grid.chunks:
            for axis, (start, stop, k0, k1, (read0, read1)) in {
                "row": (chunk.row0, chunk.row1, chunk.ky0, chunk.ky1, chunk.input_rows),
                "col": (chunk.col0, chunk.col1, chunk.kx0, chunk.kx1, chunk.input_cols),
            }.items():
                for k in range(k0, k1):
                    # no wasted patch: each one touches the chunk's window …
                    assert k * stride < stop and k * stride + patch > start
                    # … and lies inside the region read for the chunk (halo included)
                    assert read0 <= k * stride and k * stride + patch <= read1
                for pixel in range(start, stop):
                    patches = patches_covering(pixel, stride, patch, k0, k1)
                    assert patches == {pixel // stride - 1, pixel // stride}  # the two global patches, always
                    cover[(axis, pixel)] = patches
        seen.append(cover)
    # patches are products of a row range and a column range, so per-axis equality is per-pixel equality
    assert seen[0] == seen[1]


@settings(max_examples=200, deadline=None)
@given(preferred=st.integers(1, 12000), half=HALVES, height=st.integers(1, 11000), width=st.integers(1, 11000))
def test_automatic_chunk_size_is_on_the_unit_and_on_the_block_grid(preferred, half, height, width):
    patch = 2 * half
    unit = chunk_unit(patch)
    size = choose_chunk_size(preferred, patch, height, width)
    whole = math.ceil(max(height, width) / unit) * unit
    assert size % unit == 0 and unit <= size <= max(preferred, unit)
    assert size <= whole
    if preferred >= aligned_unit(patch) and size < whole:
        assert size % aligned_unit(patch) == 0
        assert size % block_size(size) == 0  # blocks never straddle chunks
    plan(height, width, patch, size)  # always a valid plan


@settings(max_examples=300, deadline=None)
@given(chunk=st.integers(1, 200).map(lambda k: 6 * k))
def test_block_size_is_a_legal_tiff_block_that_divides_the_chunk_when_it_can(chunk):
    block = block_size(chunk)
    assert block % 16 == 0 and 16 <= block <= 512
    if any(chunk % b == 0 for b in range(64, 513, 16)):
        assert chunk % block == 0


@settings(max_examples=120, deadline=None)
@given(tiles_and_chunks(n_sizes=1))
def test_journal_points_never_split_a_block(case):
    height, width, patch, (size,) = case
    grid = plan(height, width, patch, size)
    block = block_size(size)
    points = journal_points(grid, block)
    assert len(grid.chunks) - 1 in points
    if size % block == 0:
        assert points == frozenset(range(len(grid.chunks)))
    written = np.zeros((height, width), dtype=bool)
    for chunk in grid.chunks:
        written[chunk.row0:chunk.row1, chunk.col0:chunk.col1] = True
        if chunk.index in points:
            for r in range(0, height, block):
                for c in range(0, width, block):
                    cell = written[r:r + block, c:c + block]
                    assert cell.all() or not cell.any(), f"block at {r}, {c} split after chunk {chunk.index}"
