"""The built-in model on single spectra: right where the spectrum is clear, honest where it is not."""
from __future__ import annotations

import pytest
import torch

from s2seg.core.models.builtin import BuiltinModel, box_mean
from s2seg.core.models.builtin_card import BUILTIN_CARD
from s2seg.core.nomenclature import BIGEARTHNET19_NAMES, LABEL_GROUPS, group_of

from doubles import needs_numba

#: Reflectances (B02 blue, B03 green, B04 red, B08 NIR, B11 SWIR) of real BigEarthNet pixels (k-means centres of
#: the evaluation patches, docs/models.md; B02 is the median of the 50 pixels of the 60 patches and the demo scene
#: nearest in the other four bands), and the group the model must give them.
CLEAR = {
    "conifer forest, Austria June": ((0.0193, 0.036, 0.023, 0.231, 0.115), "forest"),
    "meadow, Ireland June": ((0.0299, 0.076, 0.031, 0.583, 0.202), "agriculture"),
    "bare field, Austria June": ((0.110, 0.168, 0.198, 0.336, 0.361), "agriculture"),
    "alpine lake, Austria June": ((0.0727, 0.090, 0.060, 0.050, 0.040), "water"),
    # Median of BEN v1 patch S2A_MSIL2A_20170613T101031_39_24 (open sea, labelled water): dark and flat to the
    # SWIR, so its MNDWI is low; the hand-set table called it coastal wetland (79 % of the patch).
    "calm dark sea, Finland June": ((0.0217, 0.0235, 0.0205, 0.0181, 0.0167), "water"),
}
#: Snow (Finland, November and February) and a cumulus over Austria: no land cover can be seen.
OPEN_SNOW = [(0.185, 0.154, 0.143, 0.203, 0.023), (0.463, 0.423, 0.422, 0.508, 0.058), (0.780, 0.761, 0.789, 0.855, 0.067)]
CLOUD = [(0.276, 0.308, 0.307, 0.488, 0.372), (0.631, 0.638, 0.636, 0.769, 0.666)]


def probabilities(spectra: list[tuple[float, ...]]) -> torch.Tensor:
    """``(n, 19)``: each spectrum as a uniform 40 × 40 px image (the open-water context is its own)."""
    model = BuiltinModel(BUILTIN_CARD, torch.device("cpu"))
    x = torch.tensor(spectra, dtype=torch.float32)[:, :, None, None].expand(-1, -1, 40, 40).contiguous()
    return model.predict(x)[:, :, 20, 20]


def group_probabilities(p: torch.Tensor) -> dict[str, torch.Tensor]:
    return {g: sum(p[:, BIGEARTHNET19_NAMES.index(n)] for n in names) for g, names in LABEL_GROUPS.items()}


@pytest.mark.parametrize("name", CLEAR)
def test_clear_spectra_get_their_group(name):
    spectrum, group = CLEAR[name]
    p = probabilities([spectrum])
    assert group_of(BIGEARTHNET19_NAMES[int(p.argmax())]) == group
    assert group_probabilities(p)[group].item() > 0.6


def test_snow_is_neither_water_nor_confident():
    """Snow has the MNDWI of water (it is the NDSI): the seed model called it water at maxprob 0.9."""
    p = probabilities(OPEN_SNOW)
    groups = group_probabilities(p)
    assert (groups["water"] < 0.15).all() and (groups["wetland"] < 0.15).all()
    assert (p.max(dim=1).values < 0.35).all()


def test_clouds_say_nothing_about_the_ground():
    p = probabilities(CLOUD)
    assert (p.max(dim=1).values < 0.15).all()
    entropy = -(p * p.clamp_min(1e-12).log2()).sum(dim=1)
    assert (entropy > 3.5).all()  # log2(19) = 4.25 is no idea at all


def test_probabilities_are_a_distribution():
    p = probabilities([s for s, _ in CLEAR.values()] + OPEN_SNOW + CLOUD)
    assert ((p >= 0) & (p <= 1)).all()
    torch.testing.assert_close(p.sum(dim=1), torch.ones(len(p)))


def test_box_mean_depends_only_on_the_window():
    """What the card's receptive field promises: the same pixels around a pixel, the same mean, bit for bit."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand((1, 90, 100), generator=g)
    whole = box_mean(x, 15)
    part = box_mean(x[:, 20:80, 25:90], 15)
    assert torch.equal(whole[:, 35:65, 40:75], part[:, 15:45, 15:50])
    assert torch.allclose(whole[0, 45, 50], x[0, 30:61, 35:66].mean())


# --- the compiled CPU kernels (speed): the same probabilities as the torch steps ----------------------------

def _sample_chunk(seed: int = 3) -> torch.Tensor:
    """A 200² crop of a real-format sample tile, normalised as the engine feeds it (land, water, nodata edge)."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from s2seg.core.feed import Normaliser
    from s2seg.core.reader import ChunkReader
    from s2seg.core.sample import write_sample_tile
    from s2seg.core.sentinel2 import discover

    with tempfile.TemporaryDirectory() as folder:
        tile = write_sample_tile(Path(folder), size=200, seed=seed, level="L2A", layout="safe", nodata_corner=True)
        bandset = discover(tile)
        card = BUILTIN_CARD
        with ChunkReader(bandset, card.bands, card.name, card.resampling) as reader:
            pixels = reader.read((0, 200), (0, 200))
        return Normaliser(card, bandset, torch.device("cpu"))(torch.from_numpy(pixels.data[None].astype(np.float32)))


@needs_numba
def test_compiled_kernels_give_the_torch_probabilities(monkeypatch):
    x = _sample_chunk()
    model = BuiltinModel(BUILTIN_CARD, torch.device("cpu"))
    compiled = model.predict(x)
    monkeypatch.setenv("S2SEG_NO_NUMBA", "1")
    reference = model.predict(x)
    assert compiled.shape == reference.shape == (1, len(BIGEARTHNET19_NAMES), 200, 200)
    torch.testing.assert_close(compiled, reference, rtol=0, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    water = torch.rand((2, 70, 90), generator=g)
    monkeypatch.delenv("S2SEG_NO_NUMBA")
    compiled_box = box_mean(water, 15)
    monkeypatch.setenv("S2SEG_NO_NUMBA", "1")
    torch.testing.assert_close(compiled_box, box_mean(water, 15), rtol=0, atol=1e-6)


@needs_numba
def test_compiled_probabilities_depend_only_on_the_window_and_not_on_threads(monkeypatch):
    """The receptive field's promise through the compiled path: a crop gives the whole image's bits beyond the
    radius, wherever its pixels fall in the kernel's blocks, and splitting the pixels over threads changes nothing."""
    from s2seg.core.models import prototype_kernels

    x = _sample_chunk(seed=4)
    model = BuiltinModel(BUILTIN_CARD, torch.device("cpu"))
    whole = model.predict(x)
    r = BUILTIN_CARD.receptive_field
    part = model.predict(x[:, :, 13:187, 29:171].contiguous())  # 174 × 142: pixels shift in the 256-pixel blocks
    assert torch.equal(whole[:, :, 13 + r: 187 - r, 29 + r: 171 - r], part[:, :, r: -r, r: -r])
    open_water = model.net._open_water(x)
    monkeypatch.setattr(prototype_kernels, "PARALLEL_MIN_PIXELS", 1000)  # 40,000 px: split them
    one = prototype_kernels.mixture_probabilities(x, open_water, model.net.kernel_tables, 1)
    three = prototype_kernels.mixture_probabilities(x, open_water, model.net.kernel_tables, 3)
    assert torch.equal(one, three)


def _kernel_and_torch_features(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The features of ``x`` as the compiled pass makes them (block by block, from the bands and the open-water
    mean) and as :meth:`SpectralPrototypeNet.features` does (the torch steps)."""
    from s2seg.core.models import prototype_kernels

    net = BuiltinModel(BUILTIN_CARD, torch.device("cpu")).net
    with torch.inference_mode():
        return prototype_kernels.features(x, net._open_water(x), net.kernel_tables), net.features(x)


def _assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))


@needs_numba
def test_compiled_features_are_the_models_bit_for_bit(real_patches):
    """The compiled pass computes the features itself: the same bits as the model's torch steps, on the six real
    BigEarthNet patches (forest, fields, water, snow) and on a sample chunk with a nodata corner (reflectances below
    the floor)."""
    import numpy as np

    from s2seg.core.feed import Normaliser
    from s2seg.core.reader import ChunkReader
    from s2seg.core.sentinel2 import discover

    card = BUILTIN_CARD
    for patch in real_patches:
        bandset = discover(patch.folder)
        with ChunkReader(bandset, card.bands, card.name, card.resampling) as reader:
            pixels = reader.read((0, bandset.height), (0, bandset.width))
        x = Normaliser(card, bandset, torch.device("cpu"))(torch.from_numpy(pixels.data[None].astype(np.float32)))
        _assert_same_bits(*_kernel_and_torch_features(x))
    x = _sample_chunk()
    assert (x < 1e-4).any()  # nodata: below the floor
    _assert_same_bits(*_kernel_and_torch_features(x))


@needs_numba
def test_compiled_features_keep_the_floor_and_non_finite_values():
    """Reflectances below the floor (zero, negative: the L2A offset makes some), tiny, saturated and non-finite:
    the same bits as the torch steps where finite, NaN where they give NaN (the non-finite check sees it)."""
    values = torch.tensor([0.0, -0.05, 1e-6, 1e-4, 0.00011, 0.3, 1.6, float("nan"), float("inf")])
    g = torch.Generator().manual_seed(1)
    x = values[torch.randint(len(values), (1, 5, 37, 29), generator=g)]  # every band meets every value
    compiled, reference = _kernel_and_torch_features(x)
    assert torch.equal(compiled.isnan(), reference.isnan()) and reference.isnan().any()
    finite = ~reference.isnan()
    _assert_same_bits(compiled[finite], reference[finite])
