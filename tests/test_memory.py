import platform
import threading
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from s2seg.core import memory
from s2seg.core.memory import MIN_CACHE_BYTES, cache_budget, gdal_cache_limit, release_freed_memory
from s2seg.core.pipeline import segment

MB = 2**20
glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="malloc_trim is glibc's")


@pytest.fixture()
def large_cache():
    """GDAL's cache at a known size, larger than the budgets used here; put back afterwards."""
    before = gdal.GetCacheMax()
    gdal.SetCacheMax(900 * MB)
    yield 900 * MB
    gdal.SetCacheMax(before)


def test_budget_is_inputs_plus_outputs_with_a_floor():
    assert cache_budget(300 * MB, 40 * MB) == 340 * MB
    assert cache_budget(1 * MB, 1 * MB) == MIN_CACHE_BYTES


def test_cache_is_lowered_while_a_run_lasts_and_put_back(large_cache):
    with gdal_cache_limit(200 * MB) as limit:
        assert limit == 200 * MB
        assert gdal.GetCacheMax() == 200 * MB
    assert gdal.GetCacheMax() == large_cache


def test_runs_at_once_share_the_sum_of_their_budgets_never_above_the_original(large_cache):
    with gdal_cache_limit(200 * MB):
        with gdal_cache_limit(300 * MB) as limit:
            assert limit == gdal.GetCacheMax() == 500 * MB
            with gdal_cache_limit(800 * MB) as capped:
                assert capped == gdal.GetCacheMax() == large_cache
            assert gdal.GetCacheMax() == 500 * MB
        assert gdal.GetCacheMax() == 200 * MB
    assert gdal.GetCacheMax() == large_cache


def test_runs_on_other_threads_restore_the_original_when_the_last_ends(large_cache):
    inside = threading.Barrier(3)
    seen = []

    def run(budget):
        with gdal_cache_limit(budget):
            inside.wait()  # both runs are in progress
            seen.append(gdal.GetCacheMax())
            inside.wait()

    threads = [threading.Thread(target=run, args=(b,)) for b in (100 * MB, 150 * MB)]
    for t in threads:
        t.start()
    inside.wait()
    inside.wait()
    for t in threads:
        t.join()
    assert seen == [250 * MB, 250 * MB]
    assert gdal.GetCacheMax() == large_cache


def test_a_cache_too_small_to_work_with_is_raised_to_the_budget(large_cache):
    gdal.SetCacheMax(0)  # what GDAL makes of GDAL_CACHEMAX set to an empty string
    with gdal_cache_limit(100 * MB) as limit:
        assert limit == gdal.GetCacheMax() == 100 * MB
    assert gdal.GetCacheMax() == 0


def test_a_cache_size_the_user_chose_is_left_alone(large_cache):
    gdal.SetConfigOption("GDAL_CACHEMAX", "700")
    try:
        with gdal_cache_limit(100 * MB) as limit:
            assert limit is None
            assert gdal.GetCacheMax() == large_cache
    finally:
        gdal.SetConfigOption("GDAL_CACHEMAX", None)


def test_an_error_inside_the_run_still_restores_the_cache(large_cache):
    with pytest.raises(RuntimeError):
        with gdal_cache_limit(100 * MB):
            raise RuntimeError("boom")
    assert gdal.GetCacheMax() == large_cache
    assert memory._budgets == {}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@glibc
def test_freed_heap_pages_go_back_to_the_os():
    release_freed_memory()
    # 220 MB in buffers below glibc's lowest mmap threshold (so on the heap); every tenth stays
    # alive, so the freed ones are holes glibc keeps (it gives back the top of the heap only).
    buffers = [np.ones(96 * 1024 // 8) for _ in range(2400)]
    kept = buffers[::10]
    held = _rss_mb()
    del buffers
    before = _rss_mb()
    assert release_freed_memory() is True
    after = _rss_mb()
    assert held - before < 50, "the test's premise: glibc kept the freed pages"
    assert before - after > 150
    del kept


def test_segment_runs_under_the_budget_and_restores_the_cache(small_tile, tmp_path, large_cache):
    seen, messages = set(), []
    segment(small_tile, tmp_path / "out", progress=lambda f, m: seen.add(gdal.GetCacheMax()), log=messages.append)
    assert gdal.GetCacheMax() == large_cache
    budgets = [m for m in messages if m.startswith("GDAL block cache:")]
    assert len(budgets) == 1
    limit = int(budgets[0].split(":")[1].split()[0]) * MB
    assert MIN_CACHE_BYTES <= limit < large_cache
    assert seen - {large_cache} and max(seen - {large_cache}) <= limit + MB


def test_loading_an_onnx_model_hands_the_graph_parsing_heap_back(tmp_path, monkeypatch):
    """onnxruntime leaves the freed heap of parsing and optimising the graph on the loading thread, which the
    run's stage threads never reuse (about 110 MB for the 40 MB cloud U-Net): load() hands it back, after
    the smoke test."""
    pytest.importorskip("onnxruntime")
    import torch
    from doubles import SEGMENTOR_META, export, segmentor

    from s2seg.core.models import onnx_model

    path = export(segmentor(), tmp_path / "seg.onnx", SEGMENTOR_META)
    calls = []
    smoke = onnx_model.smoke_test
    monkeypatch.setattr(onnx_model, "smoke_test", lambda model: (smoke(model), calls.append("smoke")))
    monkeypatch.setattr(onnx_model, "release_freed_memory", lambda: calls.append("release") or True)
    onnx_model.load(onnx_model.card_from_file(path), torch.device("cpu"))
    assert calls == ["smoke", "release"]
