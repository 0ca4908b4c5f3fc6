"""Mergers: one interface whatever the output kind; the writer's strips equal the whole chunk's blend."""
import pytest
import torch

from s2seg.core.blend import blend_patch_level
from s2seg.core.grid import plan
from s2seg.core.merger import DenseMerger, PatchMerger, merger_for
from s2seg.core.models.card import ModelCard
from s2seg.core.nomenclature import BIGEARTHNET19_COLOURS, BIGEARTHNET19_NAMES
from s2seg.core.uncertainty import confidence


def card(kind, resolution=10):
    return ModelCard(name=f"{kind}-test", format="builtin", bands=("B02", "B04"), patch_size=32,
                     class_names=BIGEARTHNET19_NAMES[:3], class_colours=BIGEARTHNET19_COLOURS[:3], output_kind=kind,
                     resolution=resolution)


@pytest.mark.parametrize("kind", ["patch", "dense"])
def test_strips_with_and_without_probabilities_agree_for_each_output_kind(kind):
    c = card(kind)
    chunk = plan(192, 192, c.patch_size, 96, c.pixel_factor).chunks[3]
    torch.manual_seed(0)
    mergers = [merger_for(chunk, c, torch.device("cpu"), write_probs) for write_probs in (True, False)]
    assert isinstance(mergers[0], PatchMerger if kind == "patch" else DenseMerger)
    ky, kx = torch.meshgrid(torch.arange(chunk.n_patches_y), torch.arange(chunk.n_patches_x), indexing="ij")
    shape = (ky.numel(), 3) if kind == "patch" else (ky.numel(), 3, 32, 32)
    outputs = torch.softmax(torch.randn(shape) * 3, dim=1)
    for merger in mergers:
        merger.add(ky.reshape(-1), kx.reshape(-1), outputs)
    with_probs, without = (m.result() for m in mergers)
    valid = torch.ones((40, chunk.width), dtype=torch.bool)
    rows = (chunk.row0 + 10, chunk.row0 + 50)
    probs, conf = with_probs.strip(rows, valid)
    none, conf2 = without.strip(rows, valid)
    assert none is None and probs.shape == (3, 40, chunk.width)
    assert torch.equal(conf.classes, conf2.classes)
    assert torch.allclose(conf.maxprob, conf2.maxprob, atol=1e-6)
    if kind == "patch":  # the strip is the same rows of the whole chunk's blend
        whole = blend_patch_level(mergers[0].grid, chunk, c.patch_size)
        assert torch.allclose(probs, whole[:, 10:50], atol=1e-6)
        assert torch.equal(confidence(whole[:, 10:50], valid).classes, conf.classes)
