import math

import pytest

import torch

from s2seg.core import kernels
from s2seg.core.uncertainty import CLASS_NODATA, confidence


def test_uniform_probabilities_give_max_entropy_and_zero_gap():
    c = 19
    p = torch.full((c, 4, 5), 1.0 / c)
    out = confidence(p, torch.ones(4, 5, dtype=torch.bool))
    torch.testing.assert_close(out.entropy, torch.full((4, 5), math.log2(c)))
    torch.testing.assert_close(out.gap, torch.zeros(4, 5))
    torch.testing.assert_close(out.maxprob, torch.full((4, 5), 1.0 / c))


def test_one_hot_gives_zero_entropy_full_gap_and_the_class():
    p = torch.zeros(5, 2, 2)
    p[3] = 1.0
    out = confidence(p, torch.ones(2, 2, dtype=torch.bool))
    assert (out.classes == 3).all() and out.classes.dtype == torch.uint8
    torch.testing.assert_close(out.entropy, torch.zeros(2, 2))
    torch.testing.assert_close(out.gap, torch.ones(2, 2))


def test_known_values_and_sigmoid_outputs_are_renormalised_for_entropy():
    p = torch.tensor([0.8, 0.4, 0.0]).view(3, 1, 1)  # multi-label: sums to 1.2
    out = confidence(p, torch.ones(1, 1, dtype=torch.bool))
    q = torch.tensor([2 / 3, 1 / 3])
    assert math.isclose(float(out.entropy), float(-(q * torch.log2(q)).sum()), rel_tol=1e-6)
    assert math.isclose(float(out.gap), 0.4, rel_tol=1e-6)
    assert math.isclose(float(out.maxprob), 0.8, rel_tol=1e-6)
    assert int(out.classes) == 0


def test_nodata_pixels_get_nodata_in_every_product():
    p = torch.rand(4, 3, 3)
    valid = torch.ones(3, 3, dtype=torch.bool)
    valid[1, 2] = False
    out = confidence(p, valid)
    assert int(out.classes[1, 2]) == CLASS_NODATA
    for product in (out.maxprob, out.entropy, out.gap):
        assert torch.isnan(product[1, 2]) and torch.isfinite(product[valid]).all()
    assert (out.entropy[valid] >= 0).all() and (out.entropy[valid] <= 2.0 + 1e-6).all()


GUARD = {"uint8": 77, "float32": 7.0}


def _guarded(h, w):
    """Product rows (h, w) with one guard row after them, filled with markers."""
    import numpy as np

    return [np.full((h + 1, w), GUARD[dtype], dtype) for dtype in ("uint8", "float32", "float32", "float32")]


def _guard_untouched(products, h):
    return all((a[h] == GUARD[a.dtype.name]).all() for a in products)


@pytest.mark.skipif(not kernels.enabled(), reason="needs numba")
@pytest.mark.parametrize("width", [120, 1200, 1201])
def test_compiled_kernels_write_inside_their_rows_only(width):
    """Each kernel call writes rows r0 … r1-1 and nothing else: threads write neighbouring row
    ranges of the same arrays. (Seen on a 16-core Xeon with numba 0.68.0: a uint8 store inside the
    per-pixel loop wrote 8 bytes past the row, so every thread's first 8 class ids were lost.)"""
    import numpy as np

    from s2seg.core import uncertainty

    h = 8
    probs = torch.softmax(torch.randn(5, h, width, generator=torch.Generator().manual_seed(0)) * 3, 0).numpy()
    valid = np.ones((h, width), dtype=bool)
    products = _guarded(h, width)
    uncertainty._confidence_rows(probs, valid, *(a[:h] for a in products), 0, h)
    assert _guard_untouched(products, h)
    assert (products[0][:h] < 5).all()
    rows = np.ascontiguousarray(probs[:, :2])  # the fused patch-level blend: two source rows mixed per output row
    first, second = np.zeros(h, np.int64), np.ones(h, np.int64)
    weights = np.full(h, 0.5, np.float32)
    products = _guarded(h, width)
    uncertainty._blend_confidence_rows(rows, first, second, weights, weights, valid, *(a[:h] for a in products), 0, h)
    assert _guard_untouched(products, h)


def _strip():
    """A 512-row strip of a 1200-px wide chunk (19 classes, non-contiguous view, a nodata edge)."""
    probs = torch.softmax(torch.randn(19, 512, 1320, generator=torch.Generator().manual_seed(1)) * 3, 0)[:, :, 60:1260]
    valid = torch.ones((512, 1200), dtype=torch.bool)
    valid[:, :40] = False
    return probs, valid


def test_rows_split_over_threads_give_the_single_thread_products(apparent_cores):
    """The CPU path splits rows over half the usable cores (none on a 2-core machine, 8 on a 16-core one)."""
    from s2seg.core import uncertainty

    probs, valid = _strip()
    apparent_cores(2)
    single = confidence(probs, valid)
    apparent_cores(16)
    split = confidence(probs, valid)
    reference = uncertainty._confidence_torch(probs, valid)
    for out in (single, split):
        assert torch.equal(out.classes, reference.classes)
        torch.testing.assert_close(out.maxprob, reference.maxprob, equal_nan=True)
        torch.testing.assert_close(out.entropy, reference.entropy, equal_nan=True, atol=1e-5, rtol=1e-5)


def _s2seg_threads():
    import threading

    return {t for t in threading.enumerate() if t.name.startswith("s2seg-")}


def _spy_on_thread_starts(monkeypatch):
    """The list every thread started from now on is appended to (other tests' leftovers do not count)."""
    import threading

    started = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self), start(self))[1])
    return started


def _confidence_workers(started):
    return [t for t in started if t.name.startswith("s2seg-confidence")]


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 0), (16, 7)])
def test_threaded_kernels_start_their_workers_per_call_and_join_them(cores, workers, apparent_cores, monkeypatch):
    """Half the usable cores split the rows (the calling thread takes one share); every worker is
    started by the call and has ended when it returns, for both fused kernels."""
    from s2seg.core import uncertainty
    from s2seg.core.blend import blend_patch_level, blend_patch_level_confidence
    from s2seg.core.grid import plan

    if not kernels.enabled():
        pytest.skip("needs numba: the torch path runs on the calling thread")
    apparent_cores(cores)
    started = _spy_on_thread_starts(monkeypatch)
    probs, valid = _strip()
    out = confidence(probs, valid)
    assert len(_confidence_workers(started)) == workers
    assert not [t.name for t in started if t.is_alive() and t.name.startswith("s2seg-")]
    assert torch.equal(out.classes, uncertainty._confidence_torch(probs, valid).classes)

    chunk = plan(600, 1200, 120, 1200).chunks[0]
    grid = torch.softmax(torch.randn(chunk.n_patches_y, chunk.n_patches_x, 19, generator=torch.Generator().manual_seed(2)), -1)
    started.clear()
    fused = blend_patch_level_confidence(grid, chunk, 120, valid, rows=(0, 512))
    assert len(_confidence_workers(started)) == workers
    assert not [t.name for t in started if t.is_alive() and t.name.startswith("s2seg-")]
    two_pass = confidence(blend_patch_level(grid, chunk, 120, rows=(0, 512)), valid)
    assert torch.equal(fused.classes, two_pass.classes)
    torch.testing.assert_close(fused.maxprob, two_pass.maxprob, equal_nan=True)


def test_a_16_core_machine_keeps_no_confidence_workers_after_the_call():
    """Regression: the thread count was read at import and a process-wide pool kept its 8 workers
    (``s2seg-confidence_*``) alive for good, so on a 16-core machine every later "no s2seg thread is
    left" check failed. Fresh interpreter: the cores are faked before s2seg is imported."""
    import subprocess
    import sys

    code = (
        "import os, threading\n"
        "os.cpu_count = lambda: 16\n"
        "os.sched_getaffinity = lambda pid: set(range(16))\n"
        "import torch\n"
        "from s2seg.core.uncertainty import confidence\n"
        "p = torch.softmax(torch.randn(19, 512, 1200), 0)\n"
        "confidence(p, torch.ones(512, 1200, dtype=torch.bool))\n"
        "print(sorted(t.name for t in threading.enumerate() if t.name.startswith('s2seg-')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("write_probs", [False, True], ids=["fused-blend", "blend-then-confidence"])
def test_a_run_gives_the_same_products_with_1_2_and_16_cores_and_leaves_no_thread(write_probs, small_tile, tmp_path,
                                                                                   apparent_cores, monkeypatch):
    """A small real run (patch-level model, 240² tile) as if on 1, 2 and 16 cores: identical products, the
    confidence rows really split over workers with 16, and no ``s2seg-*`` thread alive afterwards."""
    import numpy as np
    import rasterio
    from doubles import SpectralPatchModel

    from s2seg.core import uncertainty
    from s2seg.core.config import EngineConfig
    from s2seg.core.pipeline import segment

    if not kernels.enabled():
        pytest.skip("needs numba: the torch path runs on the calling thread")
    monkeypatch.setattr(uncertainty, "PARALLEL_MIN_PIXELS", 1)  # split even this tile's 120-row strips
    before = _s2seg_threads()
    started = _spy_on_thread_starts(monkeypatch)
    products = {}
    for cores in (1, 2, 16):
        apparent_cores(cores)
        started.clear()
        result = segment(small_tile, tmp_path / str(cores), model=SpectralPatchModel(),
                         config=EngineConfig(chunk_size=120, write_probs=write_probs))
        workers = _confidence_workers(started)
        assert (len(workers) > 0) == (cores == 16), workers
        assert not [t.name for t in started if t.is_alive() and t.name.startswith("s2seg-")] and _s2seg_threads() <= before
        products[cores] = {}
        for key in ("class", "maxprob", "entropy", "gap"):
            with rasterio.open(result.products[key]) as ds:
                products[cores][key] = ds.read()
    for cores in (2, 16):
        for key, values in products[1].items():
            assert np.array_equal(products[cores][key], values, equal_nan=True), (cores, key)
