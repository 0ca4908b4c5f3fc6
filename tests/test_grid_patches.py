"""The patch count is the minimum the global grid needs (issue 23): every chunk computes exactly the
patches covering the model pixels it blends (its own, plus one beyond each edge for a coarse model's
bilinear back-projection), whatever the chunk size, the factor, or a window that is off the grid."""
import numpy as np
from hypothesis import given, settings, strategies as st

from s2seg.core.grid import chunk_unit, model_chunk, patch_range, plan, plan_window


def needed(first: int, last: int, s: int) -> set[int]:
    """Brute force: patches ``m // s − 1`` and ``m // s`` of every model pixel ``m`` in ``first … last``."""
    return {k for m in range(first, last + 1) for k in (m // s - 1, m // s)}


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 900), half=st.sampled_from([6, 30, 60, 128]), factor=st.sampled_from([1, 2, 3, 6]),
       units=st.integers(1, 5), offset=st.integers(0, 200))
def test_every_chunk_computes_exactly_the_patches_its_model_pixels_need(n, half, factor, units, offset):
    patch = 2 * half
    size = units * chunk_unit(patch * factor)
    grid = plan_window(n + offset + 7, n + offset + 7, patch, size, (offset, offset, n, n), factor)
    for c in grid.chunks:
        window = model_chunk(c, factor)
        assert set(range(c.ky0, c.ky1)) == needed(window.row0, window.row1 - 1, half)
        assert set(range(c.kx0, c.kx1)) == needed(window.col0, window.col1 - 1, half)


def test_patch_counts_of_the_issue_crop():
    """The 1536 × 768 px crop under the 256 px, 30 m cloud U-Net (512 × 256 model pixels): 35 patches
    when it is a whole tile (the model pixel beyond the tile's edge needs a reflected patch ring: 5 × 7);
    a 1000 × 1000 tile: 333.3 model pixels, the pixel beyond its far edge (334) is under patches 1 and 2
    only, so 5 per axis, one fewer than the earlier fixed margin's 6."""
    assert plan(768, 1536, 256, 1536, factor=3).n_patches == 5 * 7
    whole = plan(1000, 1000, 256, 1152, factor=3)
    assert (whole.chunks[0].ky0, whole.chunks[0].ky1) == (-2, 3) and whole.n_patches == 25
    assert patch_range(0, 1000, 384, 3) == (-2, 3)
    # 10 m models: ⌈n / S⌉ + 1 per axis (a 240² tile of 120 px patches: 5 × 5), unchanged.
    assert plan(240, 240, 120, 240).n_patches == 25


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 1500), factor=st.sampled_from([1, 3]), a=st.integers(1, 4), b=st.integers(1, 4))
def test_computed_patches_do_not_depend_on_the_chunk_size(n, factor, a, b):
    """The union of the chunks' patches is the same set for two chunk sizes (and equals n_patches)."""
    unit = chunk_unit(256 * factor)
    sets = []
    for size in (a * unit, b * unit):
        grid = plan(n, n, 256, size, factor=factor)
        covered = np.zeros((grid.n_patches,), bool)  # sized by the formula: an overflow raises
        k0 = patch_range(0, n, grid.stride, factor)[0]
        side = patch_range(0, n, grid.stride, factor)[1] - k0
        keys = set()
        for c in grid.chunks:
            for ky in range(c.ky0, c.ky1):
                for kx in range(c.kx0, c.kx1):
                    covered[(ky - k0) * side + (kx - k0)] = True
                    keys.add((ky, kx))
        assert covered.all()
        sets.append(keys)
    assert sets[0] == sets[1]
