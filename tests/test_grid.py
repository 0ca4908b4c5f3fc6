import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from s2seg.core.errors import ConfigError
from s2seg.core.grid import block_size, chunk_unit, choose_chunk_size, model_chunk, plan, reflect_indices


def test_chunk_unit_is_lcm_of_band_scale_and_stride():
    assert chunk_unit(120) == 60
    assert chunk_unit(64) == 96  # lcm(6, 32)
    assert chunk_unit(20) == 30


def test_choose_chunk_size_never_above_preferred_and_capped_by_tile():
    # multiples of lcm(60, 16) = 240 when possible, so output blocks never straddle chunks
    assert choose_chunk_size(2520, 120, 10980, 10980) == 2400
    assert choose_chunk_size(2500, 120, 10980, 10980) == 2400
    assert choose_chunk_size(200, 120, 10980, 10980) == 180  # below 240: a multiple of the chunk unit
    assert choose_chunk_size(2520, 120, 300, 250) == 300
    assert choose_chunk_size(10, 120, 10980, 10980) == 60


def test_block_size_divides_the_chunk_size_when_it_can():
    assert block_size(2400) == 480 and block_size(1440) == 480 and block_size(240) == 240
    assert block_size(2496) == 416  # 64 px patches: 2496 = 6 × 416
    # no multiple of 16 (≥ 64) divides them: the block whose edges meet the chunk edges most often
    assert block_size(60) == 48 and block_size(2520) == 336  # every 240 px / 5040 px


@pytest.mark.parametrize("bad", [0, -60, 100])
def test_plan_rejects_bad_chunk_sizes_with_the_nearest_valid(bad):
    with pytest.raises(ConfigError, match="multiple of 60"):
        plan(600, 600, 120, bad)


def test_a_tile_smaller_than_one_patch_is_planned_like_any_other():
    """A 100 px crop under 120 px patches (stride 60): every pixel still under the two patches y // 60 - 1
    and y // 60 per axis; the patches reach past the crop (read by reflection). Refused before."""
    grid = plan(100, 600, 120, 60)
    assert len(grid.chunks) == 2 * 10 and grid.n_patches == 3 * 11
    first, last = grid.chunks[0], grid.chunks[-1]
    assert (first.ky0, first.ky1, first.input_rows) == (-1, 1, (-60, 120))
    assert (last.row0, last.row1, last.ky0, last.ky1, last.input_rows) == (60, 100, 0, 2, (0, 180))
    whole = plan(100, 100, 120, 120).chunks[0]
    assert (whole.row1, whole.ky0, whole.ky1, whole.input_rows) == (100, -1, 2, (-60, 180))


@pytest.mark.parametrize(("height", "width"), [(0, 600), (600, 0), (-6, 6)])
def test_plan_rejects_a_tile_without_pixels(height, width):
    with pytest.raises(ConfigError, match=rf"the tile must have at least one pixel, got {width} × {height} px"):
        plan(height, width, 120, 60)


def test_coarse_model_grid_computes_the_patches_of_one_model_pixel_beyond_each_chunk_edge():
    """A 30 m model with 256 px patches: stride 384 px at 10 m, chunk unit lcm(6, 384) = 384."""
    assert chunk_unit(256 * 3) == 384
    grid = plan(10980, 10980, 256, 4992, factor=3)
    assert grid.stride == 384 and grid.margin == 1 and len(grid.chunks) == 9
    first, second = grid.chunks[0], grid.chunks[1]
    assert (first.ky0, first.ky1, first.kx0, first.kx1) == (-2, 14, -2, 14)
    assert (second.kx0, second.kx1) == (11, 27)  # 4992 / 384 = 13: patches 12 … 25, and 11, 26 beyond
    assert first.input_rows == (-768, 5760)
    window = model_chunk(second, 3)
    assert (window.row0, window.row1, window.col0, window.col1, window.stride) == (-1, 1665, 1663, 3329, 128)
    assert model_chunk(first, 1) is first
    # A 720 px crop under 768 px patches (256 at 30 m): refused before; now 2 × 2 chunks of 384 px or one of 768.
    small = plan(720, 720, 256, 384, factor=3)
    assert len(small.chunks) == 4 and small.chunks[-1].row1 == 720
    # The last chunk's pixel beyond the tile is model pixel ⌈720 / 3⌉ = 240, under patches 0 and 1: no patch 2.
    assert (small.chunks[0].ky0, small.chunks[0].ky1, small.chunks[-1].ky0, small.chunks[-1].ky1) == (-2, 2, -1, 2)
    assert len(plan(720, 720, 256, 768, factor=3).chunks) == 1


def test_reflect_indices_symmetric():
    assert reflect_indices(-3, 8, 5).tolist() == [2, 1, 0, 0, 1, 2, 3, 4, 4, 3, 2]


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 700), width=st.integers(1, 700), half=st.sampled_from([6, 10, 30, 60]),
       units_a=st.integers(1, 6), units_b=st.integers(1, 6))
def test_chunks_tile_exactly_once_and_pixels_see_the_same_patches(height, width, half, units_a, units_b):
    patch = 2 * half  # tiles smaller than one patch included
    unit = chunk_unit(patch)
    coverage_by_size = []
    for size in (units_a * unit, units_b * unit):
        grid = plan(height, width, patch, size)
        count = np.zeros((height, width), dtype=int)
        patches_y = np.zeros(height, dtype=object)
        for c in grid.chunks:
            count[c.row0:c.row1, c.col0:c.col1] += 1
            # every chunk edge lies on the 60 m grid (6 px) and on the patch grid
            for edge in (c.row0, c.col0):
                assert edge % 6 == 0 and edge % half == 0
            # rows of the input region: exactly the patches covering the output rows
            rows = np.arange(c.row0, c.row1)
            assert (rows // half - 1 >= c.ky0).all() and (rows // half < c.ky1).all()
            assert c.input_rows[0] <= c.row0 - half and c.input_rows[1] >= c.row1 + half - 1
        assert (count == 1).all()
        coverage_by_size.append(grid.n_patches)
    assert coverage_by_size[0] == coverage_by_size[1]
