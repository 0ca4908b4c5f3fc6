"""The chunk writer's per-class statistics (chunkwriter.strip_statistics): the compiled pass and the torch steps
give the same bits, over the valid pixels only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from s2seg.core import kernels
from s2seg.core.chunkwriter import strip_statistics
from s2seg.core.uncertainty import CLASS_NODATA, LOW_GAP, confidence


@pytest.fixture
def strip():
    generator = torch.Generator().manual_seed(7)
    probs = torch.softmax(3 * torch.randn(6, 90, 130, generator=generator), dim=0)
    valid = torch.rand(90, 130, generator=generator) > 0.2
    valid[:, :10] = False  # a nodata edge
    return confidence(probs, valid), valid


def test_statistics_count_the_valid_pixels_of_each_class(strip):
    conf, valid = strip
    stats = strip_statistics(conf, valid, 6)
    classes = conf.classes[valid].long()
    assert (conf.classes[~valid] == CLASS_NODATA).all()
    for c in range(6):
        mine = classes == c
        assert stats[0, c] == int(mine.sum())
        assert stats[1, c] == pytest.approx(float(conf.maxprob[valid][mine].double().sum()), rel=1e-12)
        assert stats[2, c] == int((conf.gap[valid][mine] < LOW_GAP).sum())
    assert stats[0].sum() == int(valid.sum())


@pytest.mark.skipif(not kernels.enabled(), reason="numba not installed or switched off")
def test_the_compiled_statistics_are_the_torch_bits(strip, monkeypatch):
    conf, valid = strip
    compiled = strip_statistics(conf, valid, 6)
    monkeypatch.setenv("S2SEG_NO_NUMBA", "1")
    assert not kernels.enabled()
    reference = strip_statistics(conf, valid, 6)
    assert compiled.dtype == reference.dtype == torch.float64
    assert np.array_equal(compiled.numpy().view(np.uint64), reference.numpy().view(np.uint64))
