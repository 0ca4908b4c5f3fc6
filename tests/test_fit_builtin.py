"""The fitting harness of the built-in model's table (benchmarks/fit_builtin.py): it must fit the engine's model."""
from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
import torch

from s2seg.benchmarks.fit_builtin import (FROZEN_ROWS, HAND_SET, HAND_SET_LATER, LAND_BLUE_RED_CEILING, Data, Table,
                                          engine_inputs, hand_set_table)
from s2seg.core.models.builtin import SpectralPrototypeNet
from s2seg.core.models.builtin_card import BUILTIN_CARD


def test_the_table_is_the_engine_model_before_any_step():
    """Unfitted, the harness's probabilities are the shipped model's: what it fits is what the engine runs."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand((1, len(BUILTIN_CARD.bands), 40, 40), generator=g) * 0.5
    net = SpectralPrototypeNet()
    features = net._features(x)[0, :-1]  # (F, pixels)
    expected = net.probabilities(x)[0].flatten(1).T  # (pixels, C)
    with torch.no_grad():
        got = Table().probabilities(features)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_fitted_rows_move_and_frozen_rows_do_not():
    table = Table()
    with torch.no_grad():
        table.shift.fill_(1.0)
        table.dprior.fill_(1.0)
    moved = (table.centres() != table.centres0).any(dim=1)
    assert torch.equal(moved, table.free)  # snow and cloud rows stay where physics put them
    assert torch.equal(table.priors() != table.prior0, table.free)
    assert not moved[list(FROZEN_ROWS)].any()


def _land_rows() -> torch.Tensor:
    """The one-class rows whose class is not water (the ones the blue-red ceiling bounds)."""
    from s2seg.core.models import builtin
    from s2seg.core.nomenclature import group_of

    return torch.tensor([isinstance(t, str) and group_of(t) != "water" for t, _, _ in builtin._PROTOTYPES])


def test_no_land_row_is_fitted_bluer_than_the_ceiling():
    """However far a step pushes them, land rows stay at most as blue (relative to red) as measured land
    surfaces; water rows and the spreads are not bounded."""
    from s2seg.core.models import builtin

    blue_red = builtin._FEATURES.index("blue_red")
    table = Table()
    with torch.no_grad():
        table.shift.fill_(10.0)  # 10 feature scales up: 2.0 in the blue-red ratio
    centres = table.centres()[:, blue_red]
    land = _land_rows()
    assert land.sum() >= 20 and (land & table.free).any()
    assert (centres[land] <= LAND_BLUE_RED_CEILING).all()
    water = table.free & ~land
    assert (centres[water] > 1.0).all()


def test_the_fit_starts_from_the_hand_set_table():
    """Every fit starts where no patch was seen: the hand-set rows on their features, and each feature added
    since at the row's responsibility-weighted mean over the fitted pixels (here all alike: that value; the
    blue-red ratio, 0.3, is above the land rows' ceiling, so they start at the ceiling)."""
    from s2seg.core.models import builtin

    pixel = torch.tensor([0.6, -0.4, -0.2, 0.05, 0.3, 0.0] + [0.3] * (len(builtin._FEATURES) - 6))
    data = Data(pixel[None, :, None].expand(1, -1, 50), torch.ones((1, 6), dtype=torch.bool), [],
                pixel[:, None].expand(-1, 20))
    table = hand_set_table(data, torch.tensor([True]))
    assert table.centres0.shape == (len(builtin._PROTOTYPES), len(builtin._FEATURES))
    torch.testing.assert_close(table.centres0[:, :6], torch.tensor([c for c, _ in HAND_SET]))
    expected = pixel[6:].expand(len(HAND_SET), -1).clone()
    for row, values in HAND_SET_LATER.items():
        expected[row, : len(values)] = torch.tensor(values)
    blue_red = builtin._FEATURES.index("blue_red") - 6
    expected[_land_rows(), blue_red] = expected[_land_rows(), blue_red].clamp_max(LAND_BLUE_RED_CEILING)
    torch.testing.assert_close(table.centres0[:, 6:], expected)
    torch.testing.assert_close(table.prior0, torch.tensor([p for _, p in HAND_SET]))


def test_engine_inputs_are_what_the_model_sees(small_tile: Path, tmp_path: Path):
    """The recorded batches, fed to the built-in model, give the class raster the engine wrote."""
    from s2seg.core.config import EngineConfig
    from s2seg.core.pipeline import segment

    batches = engine_inputs(small_tile)
    assert len(batches) == 1 and batches[0].shape == (1, len(BUILTIN_CARD.bands), 240, 240)
    classes = SpectralPrototypeNet().probabilities(batches[0])[0].argmax(dim=0)
    result = segment(small_tile, tmp_path / "run", "builtin", EngineConfig(overwrite=True))
    with rasterio.open(result.products["class"]) as src:
        written = torch.from_numpy(src.read(1).astype("int64"))
    assert (classes == written).float().mean() > 0.999


def test_scores_under_a_mask_leave_out_masked_pixels_and_masked_patches():
    """``fit_builtin --mask``: the same table scored on the pixels the evaluation's mask leaves, with its 5 % rule."""
    from s2seg.benchmarks.evaluate import MIN_VALID_SHARE, summary
    from s2seg.benchmarks.evaluation_data import EvalPatch
    from s2seg.benchmarks.fit_builtin import Data, patch_scores
    from s2seg.core import mask as mask_

    table = Table()
    g = torch.Generator().manual_seed(0)
    features = table.centres0[torch.randint(len(table.centres0), (2, 100), generator=g)].transpose(1, 2)  # (2, F, 100)
    patches = [EvalPatch(name, Path("."), "test", "X", "summer", "L2A", False, ("Mixed forest",)) for name in "ab"]
    data = Data(features, torch.ones((2, 1), dtype=torch.bool), patches, features[0])
    codes = torch.full((2, 100), int(mask_.CLEAR))
    codes[0, :30] = int(mask_.SNOW)
    codes[0, 30:40] = int(mask_.MASK_NODATA)
    codes[1, int(MIN_VALID_SHARE * 100) - 1:] = int(mask_.CLOUD)
    chosen = torch.ones(2, dtype=torch.bool)
    alone, masked = patch_scores(table, data, chosen), patch_scores(table, data, chosen, codes)
    assert [s.valid for s in alone] == [100, 100] and not any(s.masked for s in alone)
    assert masked[0].valid == 60 and masked[0].pixels == 90 and masked[0].masked_share == pytest.approx(1 / 3)
    kept = Data(features[:1, :, 40:], data.truth[:1], patches[:1], features[0])
    assert masked[0].shares == patch_scores(table, kept, torch.ones(1, dtype=torch.bool))[0].shares
    assert masked[1].masked and summary(masked)["patches"] == 1
