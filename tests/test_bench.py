"""Smoke test of the benchmark harness (`s2seg bench`) on a tiny tile: every section runs, every ratio is
computed, the three blending implementations agree. No timing assertions: seconds are machine noise."""
import math

import numpy as np
import pytest
import torch

from s2seg.core import bench
from s2seg.core.blend import blend_patch_level
from s2seg.core.grid import plan
from s2seg.core.uncertainty import confidence

pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    out = bench.bench(360, quick=True, heavy_arch="test_resnet", rss_sizes=(), work_dir=work)
    return out, out.markdown()


def test_run_bench_prints_the_table_and_writes_the_docs(tmp_path, monkeypatch, capsys):
    fake = bench.BenchResult(machine={"date": "today", "cpu": "cpu", "cores": 2, "memory_gb": 1.0, "device": "cpu",
                                      "load_start": "0", "s2seg": "0", "python": "3", "torch": "2", "torch_threads": 1,
                                      "numpy": "1", "rasterio": "1", "gdal": "3", "monai": "1", "run": "fake"})
    fake.sections.append(bench.Section("Pipeline against its floors", ["a", "b"], [["1", "2"]]))
    fake.targets.append(bench.Target("t", "1×", "≤ 2×", True))
    monkeypatch.setattr(bench, "bench", lambda *a, **k: fake)
    docs = tmp_path / "docs" / "benchmarks.md"
    assert bench.run_bench(360, docs=docs, log=lambda m: None) == 0
    assert "Pipeline against its floors" in capsys.readouterr().out
    text = docs.read_text(encoding="utf-8")
    assert "| t | 1× | ≤ 2× | yes |" in text and "GDAL 3" in text and "How to read this" in text


def test_every_ratio_is_computed(result):
    out, _ = result
    for key in ("pipeline_over_floor_builtin", "pipeline_over_floor_heavy", "blend_seed_over_ours_patch",
                "blend_seed_over_ours_dense", "blend_monai_over_ours_patch", "blend_monai_over_ours_dense",
                "half_nodata_over_full"):
        assert key in out.ratios and math.isfinite(out.ratios[key]) and out.ratios[key] > 0, key
    for key in ("builtin_io_floor", "builtin_compute_floor", "heavy_compute_floor", "builtin_pipeline"):
        assert out.seconds[key] > 0, key


def test_blending_implementations_agree(result):
    out, _ = result
    for kind in ("patch", "dense"):
        assert out.agreement[f"{kind}_vs_seed"] <= bench.AGREEMENT_TOL
        assert out.agreement[f"{kind}_vs_monai"] <= bench.AGREEMENT_TOL
        assert out.agreement[f"{kind}_class_mismatch_seed"] == 0.0
        assert out.agreement[f"{kind}_class_mismatch_monai"] == 0.0


def test_report_has_every_section_and_target(result):
    out, markdown = result
    for title in ("Targets", "Pipeline against its floors", "I/O floor detail", "Blending + confidence",
                  "Nodata patches cost nothing", "Output encoding"):
        assert f"## {title}" in markdown, title
    assert "GDAL" in markdown and "torch" in markdown and "date:" in markdown
    names = [t.name for t in out.targets]
    assert any("seed loop" in n for n in names) and any("MONAI" in n for n in names)
    assert all(t.met in (True, False, None) for t in out.targets)


def test_seed_reference_matches_the_blend_formula():
    """The seed-style reference itself against a direct evaluation at a few pixels."""
    p, c = 120, 3
    chunk = plan(720, 720, p, 240).chunks[4]
    rng = np.random.default_rng(0)
    grid = rng.random((chunk.n_patches_y, chunk.n_patches_x, c)).astype(np.float32)
    valid = np.ones((chunk.height, chunk.width), dtype=bool)
    seed = bench.seed_blend_confidence(grid, chunk, p, valid)
    s = p // 2
    w = np.sin(np.pi * (np.arange(p) + 0.5) / p)
    for y, x in ((0, 0), (17, 200), (239, 239)):
        gy, gx = chunk.row0 + y, chunk.col0 + x
        num, den = np.zeros(c), 0.0
        for ky in (gy // s - 1, gy // s):
            for kx in (gx // s - 1, gx // s):
                weight = w[gy - ky * s] * w[gx - kx * s]
                num += weight * grid[ky - chunk.ky0, kx - chunk.kx0]
                den += weight
        np.testing.assert_allclose(seed["probs"][:, y, x], num / den, rtol=1e-5)


@pytest.mark.parametrize("classes", [1, 2, 19])
def test_fused_and_torch_confidence_agree(monkeypatch, classes):
    """The numba kernel (when installed) and the torch path give the same products, nodata included."""
    torch.manual_seed(classes)
    probs = torch.softmax(torch.randn(classes, 37, 301) * 3, dim=0)
    probs[:, 5, 7] = 0.0  # all-zero pixel: entropy 0, not NaN
    valid = torch.rand(37, 301) > 0.1
    valid[10:14] = False  # whole rows of nodata are skipped
    fused = confidence(probs, valid)
    monkeypatch.setenv("S2SEG_NO_NUMBA", "1")
    plain = confidence(probs, valid)
    assert torch.equal(fused.classes, plain.classes)
    for key in ("maxprob", "entropy", "gap"):
        a, b = getattr(fused, key), getattr(plain, key)
        assert torch.equal(torch.isnan(a), torch.isnan(b)), key
        torch.testing.assert_close(a[~torch.isnan(a)], b[~torch.isnan(b)], atol=2e-6, rtol=0)


def test_fused_and_matrix_patch_blend_agree(monkeypatch):
    chunk = plan(960, 960, 120, 480).chunks[1]
    grid = torch.rand(chunk.n_patches_y, chunk.n_patches_x, 5)
    fused = blend_patch_level(grid, chunk, 120, rows=(chunk.row0 + 30, chunk.row0 + 400))
    monkeypatch.setenv("S2SEG_NO_NUMBA", "1")
    plain = blend_patch_level(grid, chunk, 120, rows=(chunk.row0 + 30, chunk.row0 + 400))
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=0)


@pytest.mark.parametrize("numba_off", [False, True])
def test_dense_canvas_equals_blend_dense(monkeypatch, numba_off):
    """Blending batch by batch into a canvas (skipping some patches) equals blend_dense of the grid."""
    from s2seg.core.blend import DenseCanvas, blend_dense

    if numba_off:
        monkeypatch.setenv("S2SEG_NO_NUMBA", "1")
    chunk = plan(720, 720, 24, 240).chunks[4]
    torch.manual_seed(0)
    grid = torch.rand(chunk.n_patches_y, chunk.n_patches_x, 3, 24, 24)
    grid[2:5, 3:9] = 0.0  # skipped patches (nodata) contribute nothing either way
    todo = torch.nonzero(grid.flatten(2).amax(dim=2) > 0)
    canvas = DenseCanvas(chunk, 24, 3)
    for batch in todo.split(7):
        canvas.add(batch[:, 0], batch[:, 1], grid[batch[:, 0], batch[:, 1]])
    torch.testing.assert_close(canvas.result(), blend_dense(grid, chunk, 24), atol=1e-6, rtol=0)


def test_fused_patch_blend_confidence_equals_the_two_calls():
    from s2seg.core.blend import blend_patch_level_confidence

    chunk = plan(960, 960, 120, 480).chunks[3]
    torch.manual_seed(1)
    grid = torch.sigmoid(torch.randn(chunk.n_patches_y, chunk.n_patches_x, 19) * 2)
    valid = torch.rand(chunk.height, chunk.width) > 0.05
    valid[:40] = False
    rows = (chunk.row0 + 20, chunk.row0 + 300)
    strip_valid = valid[20:300]
    fused = blend_patch_level_confidence(grid, chunk, 120, strip_valid, rows=rows)
    plain = confidence(blend_patch_level(grid, chunk, 120, rows=rows), strip_valid)
    assert torch.equal(fused.classes, plain.classes)
    for key in ("maxprob", "entropy", "gap"):
        a, b = getattr(fused, key), getattr(plain, key)
        assert torch.equal(torch.isnan(a), torch.isnan(b)), key
        torch.testing.assert_close(a[~torch.isnan(a)], b[~torch.isnan(b)], atol=2e-6, rtol=0)
