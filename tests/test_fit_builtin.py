"""The fitting harness of the built-in model's table (benchmarks/fit_builtin.py): it must fit the engine's model."""
from __future__ import annotations

from pathlib import Path

import rasterio
import torch

from s2seg.benchmarks.fit_builtin import Table, engine_inputs
from s2seg.core.models.builtin import SpectralPrototypeNet


def test_the_table_is_the_engine_model_before_any_step():
    """Unfitted, the harness's probabilities are the shipped model's: what it fits is what the engine runs."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand((1, 4, 40, 40), generator=g) * 0.5
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


def test_engine_inputs_are_what_the_model_sees(small_tile: Path, tmp_path: Path):
    """The recorded batches, fed to the built-in model, give the class raster the engine wrote."""
    from s2seg.core.config import EngineConfig
    from s2seg.core.pipeline import segment

    batches = engine_inputs(small_tile)
    assert len(batches) == 1 and batches[0].shape == (1, 4, 240, 240)
    classes = SpectralPrototypeNet().probabilities(batches[0])[0].argmax(dim=0)
    result = segment(small_tile, tmp_path / "run", "builtin", EngineConfig(overwrite=True))
    with rasterio.open(result.products["class"]) as src:
        written = torch.from_numpy(src.read(1).astype("int64"))
    assert (classes == written).float().mean() > 0.999
