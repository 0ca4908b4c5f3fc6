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


def test_rows_split_over_threads_give_the_single_thread_products(monkeypatch):
    """The CPU path splits rows over threads on machines with 4+ cores (never on a 2-core CI machine)."""
    from s2seg.core import uncertainty

    probs = torch.softmax(torch.randn(19, 512, 1320, generator=torch.Generator().manual_seed(1)) * 3, 0)[:, :, 60:1260]
    valid = torch.ones((512, 1200), dtype=torch.bool)
    valid[:, :40] = False
    monkeypatch.setattr(uncertainty, "THREADS", 1)
    single = confidence(probs, valid)
    monkeypatch.setattr(uncertainty, "THREADS", 8)
    split = confidence(probs, valid)
    reference = uncertainty._confidence_torch(probs, valid)
    for out in (single, split):
        assert torch.equal(out.classes, reference.classes)
        torch.testing.assert_close(out.maxprob, reference.maxprob, equal_nan=True)
        torch.testing.assert_close(out.entropy, reference.entropy, equal_nan=True, atol=1e-5, rtol=1e-5)
