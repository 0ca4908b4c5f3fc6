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


def _one_pass_merger(write_probs):
    from s2seg.core.grid import plan_one_pass
    from s2seg.core.merger import OnePassMerger

    c = card("dense")
    chunk = plan_one_pass(300, 300, 96, 7, c.footprint).chunks[4]  # an inner chunk: halo on every side
    return OnePassMerger(chunk, c, torch.device("cpu"), write_probs), chunk


@pytest.mark.parametrize("write_probs, pieces", [(True, "probabilities"), (False, "probabilities"), (False, "products")])
def test_one_pass_strips_equal_the_confidence_of_the_whole_chunk(write_probs, pieces):
    """The model's row pieces, as the inferer hands them over (views into larger outputs, or the products a
    ConfidenceModel made of them), give the writer the confidence of the whole chunk's probabilities under the
    writer's own mask, which may hide more than the input's (a cloud mask, an area of interest)."""
    merger, chunk = _one_pass_merger(write_probs)
    torch.manual_seed(1)
    probs = torch.softmax(torch.randn((3, chunk.height, chunk.width)) * 3, dim=0)
    input_valid = torch.rand((chunk.height, chunk.width)) > 0.1
    for first, end in ((0, 40), (40, 41), (41, chunk.height)):  # odd heights: pieces need not match the strips
        output = torch.zeros((1, 3, end - first + 14, chunk.width + 14))
        output[0, :, 7:-7, 7:-7] = probs[:, first:end]
        if pieces == "products":
            merger.add_confidence(first, confidence(output[0, :, 7:-7, 7:-7], input_valid[first:end]))
        else:
            merger.add_rows(first, output[0, :, 7:-7, 7:-7], input_valid[first:end])
    result = merger.result()
    strips = list(result.strips())
    assert strips[0][0] == chunk.row0 and strips[-1][1] == chunk.row1
    assert all(a < b and b == c for (a, b), (c, _) in zip(strips, strips[1:]))
    writer_valid = input_valid & (torch.rand(input_valid.shape) > 0.3)
    expected = confidence(probs, writer_valid)
    for r0, r1 in strips + [(chunk.row0 + 30, chunk.row0 + 50)]:  # the last across pieces (joined, not a view)
        got_probs, conf = result.strip((r0, r1), writer_valid[r0 - chunk.row0: r1 - chunk.row0])
        assert (got_probs is not None) == write_probs
        for key in ("classes", "maxprob", "entropy", "gap"):
            torch.testing.assert_close(getattr(conf, key), getattr(expected, key)[r0 - chunk.row0: r1 - chunk.row0],
                                       equal_nan=True, rtol=0, atol=0)


def test_one_pass_merger_copies_no_probabilities():
    """With probabilities written, each strip is a view of the model's output (no chunk-sized copy); without,
    no probability is held at all, only the 13 bytes a pixel of confidence products."""
    merger, chunk = _one_pass_merger(True)
    output = torch.softmax(torch.randn((1, 3, chunk.height + 14, chunk.width + 14)), dim=1)
    merger.add_rows(0, output[0, :, 7:-7, 7:-7], torch.ones((chunk.height, chunk.width), dtype=torch.bool))
    result = merger.result()
    (r0, r1), = result.strips()
    probs, _ = result.strip((r0, r1), torch.ones((r1 - r0, chunk.width), dtype=torch.bool))
    assert probs.untyped_storage().data_ptr() == output.untyped_storage().data_ptr()
    merger, chunk = _one_pass_merger(False)
    merger.add_rows(0, output[0, :, 7:-7, 7:-7], torch.ones((chunk.height, chunk.width), dtype=torch.bool))
    held = merger.result().tensors()
    assert sum(t.numel() * t.element_size() for t in held) == 13 * chunk.height * chunk.width
