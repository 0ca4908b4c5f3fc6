import math

import torch

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
