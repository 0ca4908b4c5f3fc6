"""Smoke test of the benchmark harness (`make bench`, :mod:`s2seg.benchmarks.bench`) on a tiny tile: every section runs, every ratio is
computed, the three blending implementations agree. No timing assertions: seconds are machine noise."""
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from s2seg.benchmarks import bench
from s2seg.core.blend import blend_patch_level
from s2seg.core.grid import plan
from s2seg.core.uncertainty import confidence

from doubles import needs_numba

pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    out = bench.bench(360, quick=True, heavy_arch="test_resnet", rss_sizes=(), peer_scene=None, startup=False, work_dir=work)
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


def test_generated_page_points_at_the_one_copy_of_the_notes(result):
    """The prose lives in docs/benchmark-notes.md only: no Python string, no copy in the generated page."""
    from conftest import REPO_ROOT

    _, markdown = result
    notes = REPO_ROOT / "docs" / "benchmark-notes.md"
    assert "[benchmark-notes.md](benchmark-notes.md)" in markdown
    assert "Profile of the built-in pipeline" in notes.read_text(encoding="utf-8")
    assert "Profile of the built-in pipeline" not in markdown
    assert "Profile of the built-in pipeline" not in (REPO_ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")


def test_engine_internals_are_reached_only_through_engine_parts():
    """Private engine names (``_x``) appear in benchmarks/engine_parts.py and nowhere else in benchmarks/."""
    import ast

    from conftest import REPO_ROOT

    offenders = []
    for path in sorted((REPO_ROOT / "benchmarks").glob("*.py")):
        if path.name == "engine_parts.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("s2seg.core"):
                offenders += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
            if isinstance(node, ast.ImportFrom) and node.module == "s2seg.core" and any(a.name == "pipeline" for a in node.names):
                offenders.append(f"{path.name}: imports the pipeline module")
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and isinstance(node.value, ast.Name) and node.value.id in ("pipeline", "writer", "_run"):
                offenders.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not offenders, offenders


def test_plugin_zip_leaves_the_benchmarks_out(tmp_path):
    """The harness is repository-only: neither benchmarks/ nor the old core/bench.py ship in the plugin zip,
    and nothing the plugin ships imports it."""
    import re
    import subprocess
    import zipfile

    from conftest import REPO_ROOT

    target = tmp_path / "s2seg.zip"
    proc = subprocess.run(["bash", str(REPO_ROOT / "tools" / "package.sh"), "-q", "-o", str(target)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = zipfile.ZipFile(target).namelist()
    assert "s2seg/core/cli.py" in names
    assert not [n for n in names if n.startswith("s2seg/benchmarks/") or n == "s2seg/core/bench.py"]
    shipped = [n for n in names if n.endswith(".py")]
    imports = re.compile(r"s2seg\.benchmarks|from \.+benchmarks|import benchmarks")
    importing = [n for n in shipped if imports.search(zipfile.ZipFile(target).read(n).decode("utf-8", "replace"))]
    assert not importing, importing


def test_every_ratio_is_computed(result):
    out, _ = result
    for key in ("pipeline_over_floor_builtin", "pipeline_over_floor_heavy", "blend_seed_over_ours_patch",
                "blend_seed_over_ours_dense", "blend_monai_over_ours_patch", "blend_monai_over_ours_dense",
                "half_nodata_over_full", "inference_overhead_torch-one-pass", "inference_overhead_torch-patch",
                "engine_over_io_floor_builtin"):
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


def test_gpu_tool_drives_the_engine_stages_through_engine_parts(tmp_path):
    """benchmarks/measure_gpu.py on a tiny tile (CPU here): the inference stage and the pipeline without
    encoding run through engine_parts.StageRun against today's engine, and every pixel reaches the writer."""
    import json

    from s2seg.benchmarks import measure_gpu

    out = tmp_path / "gpu.json"
    assert measure_gpu.main(["--size", "240", "--models", "builtin", "--work", str(tmp_path), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["stage_s"] > 0 and row["pipeline_s"] > 0 and row["patches"] > 0
    assert set(row["busy"]) >= {"read", "inference", "write"}
    assert sum(row["classes_hist"][:255]) == 240 * 240  # every pixel classified (no nodata in the sample tile)


def test_peer_plan_follows_deepness_tiling():
    """Deepness's grid on the issue's 512 × 256 (30 m) crop: 3 tiles at 50 px overlap, the extent rounded up to
    N · stride + tile on the right, and the centre crops paste every pixel of the extended image exactly once."""
    from s2seg.benchmarks.peer import PeerPlan

    plan = PeerPlan(256, 512, 256, 50)
    assert plan.stride == 206 and plan.extended_shape == (256, 668) and plan.bins == (1, 3) and plan.n_tiles == 3
    assert PeerPlan(256, 512, 256, 128).n_tiles == 3 and PeerPlan(600, 600, 256, 50).bins == (3, 3)
    for p in (plan, PeerPlan(600, 700, 256, 50), PeerPlan(300, 300, 256, 128)):
        count = np.zeros(p.extended_shape, int)
        ny, nx = p.bins
        for by in range(ny):
            for bx in range(nx):
                fy, fx, ty, tx = p.paste_slices(by, bx)
                assert (fy.stop - fy.start, fx.stop - fx.start) == (ty.stop - ty.start, tx.stop - tx.start)
                count[fy, fx] += 1
        assert (count == 1).all()


@pytest.fixture
def peer_scene(tmp_path) -> Path:
    """A 768² L1C sample tile for the peer model's sections (skips when that model is not installed)."""
    pytest.importorskip("onnxruntime")
    from s2seg.benchmarks.peer_row import PEER_MODEL
    from s2seg.core.errors import S2SegError
    from s2seg.core.models import resolve_card
    from s2seg.core.sample import write_sample_tile

    try:
        resolve_card(PEER_MODEL)
    except S2SegError as exc:
        pytest.skip(str(exc))
    return write_sample_tile(tmp_path / "tile", size=768, level="L1C")


def test_peer_row_runs_the_same_model_on_the_same_scene(tmp_path, peer_scene):
    """The peer section on a small L1C tile: three rows, both ratios and the class-map agreement computed."""
    from s2seg.benchmarks.peer_row import peer_section

    tile = peer_scene
    out = bench.BenchResult(machine={})
    peer_section(out, tmp_path / "work", lambda m: None, scene=tile, window=(0, 0, 768, 768), repeats=1)
    section, decomposition = out.sections[-2:]
    assert section.title.startswith("Peer: Deepness") and len(section.rows) == 3
    assert section.rows[0][2] == "1"  # one 256² tile covers 768² at 30 m
    for key in ("s2seg_over_peer", "s2seg_over_peer_same_overlap"):
        assert math.isfinite(out.ratios[key]) and out.ratios[key] > 0
    assert 0.0 <= out.agreement["peer_class_map"] <= 1.0
    assert [t.met is not None for t in out.targets[-2:]] == [True, True]
    # The ratio splits into forward passes × seconds per pass × the rest, each measured in this run.
    assert decomposition.title.startswith("Peer: where") and len(decomposition.rows) == 3
    assert decomposition.rows[0][1] == "1" and int(decomposition.rows[2][1]) > 1
    assert out.ratios["s2seg_over_peer_passes"] == int(decomposition.rows[2][1])
    passes, per_pass, rest = (float(x) for x in re.search(r"= ([\d.]+) \(passes\) × ([\d.]+) \(s per pass\) × ([\d.]+)",
                                                            decomposition.notes[0]).groups())
    assert math.isclose(passes * per_pass * rest, out.ratios["s2seg_over_peer"], rel_tol=0.02)
    assert "forward passes" in out.targets[-2].note and "at most" in out.targets[-2].note


def test_peer_row_says_why_when_the_scene_is_missing(tmp_path):
    from s2seg.benchmarks.peer_row import peer_section

    out = bench.BenchResult(machine={})
    peer_section(out, tmp_path, lambda m: None, scene=tmp_path / "no-such-scene")
    assert "not run" in out.sections[-1].notes[0] and "tools/demo.sh" in out.sections[-1].notes[0]
    assert [t.met for t in out.targets] == [None, None]


def test_reading_row_compares_the_read_stage_with_gdal_translate(peer_scene):
    """The reading section on a small L1C tile: s2seg's read of the crop's chunk regions against gdal_translate of
    the same native windows to the same (model) resolution, one ratio, and the windows are those the reader reads."""
    import shutil

    pytest.importorskip("onnxruntime")
    from s2seg.benchmarks.reading import reading_section

    if shutil.which("gdal_translate") is None:
        pytest.skip("gdal_translate is not installed")
    tile = peer_scene
    out = bench.BenchResult(machine={})
    reading_section(out, lambda m: None, scene=tile, window=(0, 0, 384, 768), repeats=1)
    section = out.sections[-1]
    assert section.title.startswith("Reading") and len(section.rows) == 8
    assert math.isfinite(out.ratios["read_over_gdal_translate"]) and out.ratios["read_over_gdal_translate"] > 0
    assert out.targets[-1].met is not None
    native = [int(row[1].replace(",", "")) for row in section.rows if row[1] != "—"]
    assert set(native[:-1]) == {native[0]} and native[0] > native[-1] > 0  # every row the same windows; the crop's last
    assert section.rows[2][4] == "1.00" and "→ 30 m" in section.rows[2][0]  # the denominator: same windows, model grid


def test_reading_row_says_why_when_the_scene_is_missing(tmp_path):
    from s2seg.benchmarks.reading import reading_section

    out = bench.BenchResult(machine={})
    reading_section(out, lambda m: None, scene=tmp_path / "no-such-scene")
    assert "not run" in out.sections[-1].notes[0] and out.targets[-1].met is None


def test_memory_section_measures_fresh_processes(tmp_path):
    """Peak RSS of a run and of its import baseline, each in a fresh process: both positive, ratio computed."""
    from s2seg.benchmarks.startup import memory_section
    from s2seg.core.sample import write_sample_tile

    tile = write_sample_tile(tmp_path / "tile", size=120, level="L2A")
    out = bench.BenchResult(machine={})
    memory_section(out, [("built-in", "builtin", tile, "")], tmp_path, lambda m: None)
    row = out.sections[-1].rows[0]
    assert float(row[2]) > 0 and float(row[3]) >= float(row[2])  # the run holds at least what loading held
    assert math.isfinite(out.ratios["rss_over_import_built-in"]) and out.targets[-1].met is not None


def test_output_options_are_measured_against_the_default_products(result):
    """COG, polygons and product selection each get a row beside the default products, from this run."""
    out, markdown = result
    assert "Output options" in markdown
    for key in ("products", "cog", "vector"):
        assert out.ratios[f"outputs_{key}_over_default"] > 0


def test_blend_cases_take_the_pipelines_chunk_size_for_a_blended_model_of_each_kind():
    """The full run's blend cases start from the built-in card, which declares a receptive field (one pass,
    no blending): the patch and dense variants must drop it, or the card refuses to be built."""
    from s2seg.benchmarks.blending import default_chunk

    assert default_chunk("patch") == 2400 and default_chunk("dense") == 1440


def test_mask_costs_are_measured_against_the_unmasked_run(result):
    """Section 11: --mask scl against the unmasked run; --mask model against the land cover plus the cloud
    model's compute floor, with the cloud patches the run computed against the tile's grid."""
    from s2seg.core.models import available_cards

    out, markdown = result
    assert "Masking clouds, shadows and snow" in markdown
    assert out.ratios["mask_scl_over_unmasked"] > 0
    names = [t.name for t in out.targets]
    assert any(n.startswith("--mask scl") for n in names) and any(n.startswith("--mask model") for n in names)
    if "s2-cloud-l2a" in available_cards():
        assert out.ratios["mask_model_over_parts"] > 0 and out.seconds["mask_cloud_floor"] > 0
        row = next(r for s in out.sections if s.title.startswith("Masking") for r in s.rows if r[0] == "--mask model")
        computed, grid = (int(n) for n in row[3].split(" / "))
        assert computed == grid  # each cloud patch once


@needs_numba
def test_engine_alone_replays_the_products_the_model_made(small_tile, tmp_path):
    """The engine-alone run writes what the real run wrote (same windows, same order), the model's method comes
    back afterwards, and a replay asked for other windows than were recorded fails instead of measuring them."""
    import rasterio

    from s2seg.benchmarks.floors import ProductReplay, engine_alone
    from s2seg.core.config import EngineConfig
    from s2seg.core.errors import ModelError
    from s2seg.core.models import load_model
    from s2seg.core.pipeline import segment

    model = load_model("builtin", "cpu")
    config = EngineConfig(chunk_size=240, overwrite=True)
    real = segment(small_tile, tmp_path / "real", model=model, config=config)
    engine = engine_alone(small_tile, model, config, tmp_path / "engine")
    assert engine["seconds"] > 0 and engine["cpu"] > 0
    assert "predict_confidence" not in vars(model)
    for name in ("class", "maxprob", "entropy", "gap"):
        with rasterio.open(real.products[name]) as a, rasterio.open(tmp_path / "engine" / real.products[name].name) as b:
            np.testing.assert_array_equal(a.read(), b.read())
    replay = ProductReplay(model)
    with replay.recording():
        segment(small_tile, tmp_path / "rec", model=model, config=config)
    with pytest.raises(ModelError, match="other windows"), replay.replaying():  # 4 chunks of 120², not one of 240²
        segment(small_tile, tmp_path / "other", model=model, config=config.with_(chunk_size=120))
    assert "predict_confidence" not in vars(model)
