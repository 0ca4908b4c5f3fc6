"""Device choice (auto → CUDA, MPS, CPU), out-of-memory recovery (halve the batch, retry the
same patches) and the --half option, all checked on the CPU."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from s2seg.core.cli import _parser
from s2seg.core.config import EngineConfig
from s2seg.core.errors import ConfigError, DeviceUnavailable, ModelError
from s2seg.core.models.base import pick_device
from s2seg.core.pipeline import segment
from s2seg.core.sample import write_sample_tile
from doubles import SpectralPatchModel

FLOATS = ("maxprob", "entropy", "gap")


class OutOfMemoryModel(SpectralPatchModel):
    """Raises torch's CUDA out-of-memory error for batches larger than ``limit`` patches."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.failures: list[int] = []
        self.done = 0  # patches predicted successfully

    def predict(self, batch):
        if batch.shape[0] > self.limit:
            self.failures.append(batch.shape[0])
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.done += batch.shape[0]
        return super().predict(batch)


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    return write_sample_tile(tmp_path_factory.mktemp("tile"), size=360, seed=3, level="L2A", layout="safe", nodata_corner=True)


def read(path):
    with rasterio.open(path) as ds:
        return ds.read()


def test_out_of_memory_halves_the_batch_and_retries_the_same_patches(tile, tmp_path):
    reference_model = SpectralPatchModel()
    reference = segment(tile, tmp_path / "ref", model=reference_model, config=EngineConfig(chunk_size=120, batch_size=4))
    model = OutOfMemoryModel(limit=5)
    logs: list[str] = []
    result = segment(tile, tmp_path / "oom", model=model, config=EngineConfig(chunk_size=120, batch_size=16), log=logs.append)
    assert model.failures == [16, 8]  # halved twice, then kept for the rest of the run (9 chunks)
    assert model.done == reference_model.patches  # every patch exactly once: none skipped, none duplicated
    assert result.batch_size_final == 4 and reference.batch_size_final == 4
    assert any("out of memory on cpu with a batch of 16 patches: retrying with 8" in m for m in logs)
    assert any("finished with a batch of 4 patches (started with 16)" in m for m in logs)
    report = json.loads(result.report.read_text())
    assert report["batch_size_final"] == 4 and report["config"]["batch_size"] == 16
    assert np.array_equal(read(result.products["class"]), read(reference.products["class"]))
    for key in FLOATS:
        np.testing.assert_array_equal(read(result.products[key]), read(reference.products[key]))


def test_out_of_memory_with_a_batch_of_one_is_a_model_error(tile, tmp_path):
    model = OutOfMemoryModel(limit=0)
    with pytest.raises(ModelError, match=r"model 'patch-test' ran out of memory on cpu .* even with a batch of 1 patch: "
                                         r"CUDA out of memory"):
        segment(tile, tmp_path / "out", model=model, config=EngineConfig(chunk_size=120, batch_size=4))
    assert model.failures == [4, 2, 1]


@pytest.mark.parametrize(("cuda", "mps", "expected"), [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert pick_device("auto").type == expected
    assert pick_device("cpu").type == "cpu"


def test_unavailable_mps_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match=r"device 'mps' was requested but torch has no usable Apple-silicon GPU"):
        pick_device("mps")


def test_config_and_cli_accept_mps_and_half():
    assert EngineConfig(device="mps", half=True).half is True
    assert EngineConfig().half is False
    with pytest.raises(ConfigError, match=r"half must be True or False, got 'yes'"):
        EngineConfig(half="yes")
    args = _parser().parse_args(["segment", "tile", "out", "--device", "mps", "--half"])
    assert (args.device, args.half) == ("mps", True)
    assert _parser().parse_args(["segment", "tile", "out"]).half is False


def test_half_is_ignored_on_cpu_with_a_warning(tile, tmp_path):
    logs: list[str] = []
    half = segment(tile, tmp_path / "half", model=SpectralPatchModel(), config=EngineConfig(chunk_size=360, half=True),
                   log=logs.append)
    full = segment(tile, tmp_path / "full", model=SpectralPatchModel(), config=EngineConfig(chunk_size=360))
    assert any("warning: half precision (--half) runs on CUDA only; ignored on cpu" in m for m in logs)
    for key in ("class", *FLOATS):
        np.testing.assert_array_equal(read(half.products[key]), read(full.products[key]))
