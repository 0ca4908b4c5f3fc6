"""Issue 23, inference overhead: thread budgets per stage (read from the process's cores at run time)
and the one-pass normalisation of the model input."""
import numpy as np
import pytest
import torch

from s2seg.core import config
from s2seg.core.config import ThreadBudget
from s2seg.core.feed import Normaliser
from s2seg.core.models.card import ModelCard
from s2seg.core.nomenclature import BIGEARTHNET19_COLOURS, BIGEARTHNET19_NAMES
from s2seg.core.reader import ChunkReader
from s2seg.core.sentinel2 import discover


@pytest.fixture
def one_core(monkeypatch):
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(config.os, "cpu_count", lambda: 1)


def test_budget_gives_the_model_every_core_and_the_reader_at_most_one_thread_per_core():
    assert ThreadBudget.for_machine(4, cores=2) == ThreadBudget(model=2, read=2)
    assert ThreadBudget.for_machine(4, cores=16) == ThreadBudget(model=16, read=4)
    assert ThreadBudget.for_machine(8, cores=2, remote=True).read == 8  # network-bound: threads kept
    assert ThreadBudget.for_machine(1, cores=1) == ThreadBudget(model=1, read=1)


def test_budget_reads_the_cores_at_each_call(one_core):
    assert ThreadBudget.for_machine(4) == ThreadBudget(model=1, read=1)


def test_reader_decodes_local_bands_with_one_thread_per_core(one_core, small_tile):
    bandset = discover(small_tile)
    with ChunkReader(bandset, ("B02", "B03", "B04", "B08"), "test", threads=4) as reader:
        assert reader._pool._max_workers == 1


def test_map_on_cores_keeps_order_caps_threads_and_reraises_the_first_error(apparent_cores):
    import threading

    apparent_cores(3)
    seen: set[str] = set()

    def square(i: int) -> int:
        seen.add(threading.current_thread().name)
        return i * i

    assert config.map_on_cores(square, range(20), "t") == [i * i for i in range(20)]
    assert 1 <= len(seen) <= 3 and all(name.startswith("t") for name in seen)
    seen.clear()
    config.map_on_cores(square, range(20), "t", limit=1)
    assert len(seen) == 1
    assert config.map_on_cores(square, [], "t") == []

    def fail_on_odd(i: int) -> int:
        if i % 2:
            raise ValueError(f"item {i}")
        return i

    with pytest.raises(ValueError, match="item 1$"):
        config.map_on_cores(fail_on_odd, range(6), "t")


def test_torch_pool_is_capped_to_the_process_cores(one_core, monkeypatch):
    from s2seg.core.inferer import cap_torch_threads

    calls = []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    cap_torch_threads(ThreadBudget.for_machine(1).model)
    assert calls == [1]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    cap_torch_threads(4)  # never raised
    assert calls == [1]


def test_onnx_session_uses_the_budget(one_core):
    pytest.importorskip("onnxruntime")
    from s2seg.core.errors import S2SegError
    from s2seg.core.models import load_model, resolve_card

    try:
        card = resolve_card("s2-cloud-l1c")
    except S2SegError as exc:
        pytest.skip(str(exc))
    model = load_model(card, torch.device("cpu"))
    options = model.session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize("stats", [False, True], ids=["scaled", "standardised"])
def test_one_pass_normalisation_equals_the_formula(small_tile, stats):
    """((DN + offset) · scale − mean) / std, folded into one multiply-add, within float32 rounding."""
    bandset = discover(small_tile)
    bands = ("B02", "B04", "B08", "B11")
    extra = dict(mean=(0.1, 0.2, 0.3, 0.25), std=(0.05, 0.07, 0.11, 0.09)) if stats else {}
    card = ModelCard(name="norm-test", format="builtin", bands=bands, patch_size=20, class_names=BIGEARTHNET19_NAMES[:3],
                     class_colours=BIGEARTHNET19_COLOURS[:3], input_scale="reflectance", **extra)
    raw = torch.from_numpy(np.random.default_rng(0).integers(0, 20000, (3, 4, 20, 20)).astype(np.int32))
    offset = np.array([bandset.offset(b) for b in bands], np.float64)[None, :, None, None]
    expected = (raw.numpy().astype(np.float64) + offset) * card.scale_factor
    if stats:
        expected = (expected - np.array(card.mean)[None, :, None, None]) / np.array(card.std)[None, :, None, None]
    got = Normaliser(card, bandset, torch.device("cpu"))(raw)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_cpu_batch_holds_as_many_pixels_as_sixteen_120px_patches():
    """A 256² dense network gets 3 patches a batch on the CPU (its activations grow with the batch); small
    patches keep 16; accelerators are unchanged."""
    from s2seg.core.config import EngineConfig

    assert EngineConfig.default_batch_size("cpu", 120) == EngineConfig.CPU_BATCH_SIZE == 16
    assert EngineConfig.default_batch_size("cpu", 256) == 3
    assert EngineConfig.default_batch_size("cpu", 60) == 16
    assert EngineConfig.default_batch_size("cpu", 1024) == 2
    assert EngineConfig.default_batch_size("cuda", 256) == 56
