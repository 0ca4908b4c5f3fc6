"""``s2seg batch`` / :mod:`s2seg.core.batch`: inputs, cluster sizing, and real runs on a Dask LocalCluster
(2 worker processes × 1 thread) over three small tiles, one of them broken.

One run with the runner's own local cluster checks outcomes, failure isolation and that outputs are
byte-identical to ``segment`` run tile by tile; the re-run (skip complete tiles), resume and cancel
tests share one module-scoped cluster through ``--scheduler``/``scheduler=`` to keep the file fast.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from s2seg.core import batch
from s2seg.core.batch import (
    CANCELLED,
    FAILED,
    OK,
    SKIPPED,
    TileJob,
    TileOutcome,
    completed_report,
    expand_inputs,
    format_table,
    local_cluster_plan,
    plan_jobs,
    run_batch,
    run_tile,
    tile_folder_name,
    write_summary,
)
from s2seg.core.cli import main
from s2seg.core.config import EngineConfig
from s2seg.core.errors import ConfigError, InputError

CONFIG = EngineConfig(device="cpu")


def break_band(tile: Path, band: str = "B03") -> Path:
    """Cut a 10 m band file in half: the tile is found, its band opens, reading its pixels fails."""
    path = next(p for p in tile.rglob(f"*_{band}_10m.tif"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two good tiles (a .SAFE folder and a .SAFE.zip) and a .SAFE folder with a truncated band."""
    from s2seg.core.sample import write_sample_tile

    root = tmp_path_factory.mktemp("batch_tiles")
    good_safe = write_sample_tile(root / "a", size=240, seed=0, layout="safe")
    good_zip = write_sample_tile(root / "b", size=240, seed=1, layout="zip")
    broken = write_sample_tile(root / "c", size=240, seed=2, layout="safe")
    bad_band = break_band(broken)
    return {"safe": good_safe, "zip": good_zip, "broken": broken, "bad_band": bad_band}


@pytest.fixture(scope="module")
def reference(tiles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """``segment`` run tile by tile in this process: product → sha256, per good tile."""
    from s2seg.core.pipeline import segment

    root = tmp_path_factory.mktemp("reference")
    digests = {}
    for key in ("safe", "zip"):
        result = segment(tiles[key], root / key, config=CONFIG)
        digests[key] = {product: digest(path) for product, path in result.products.items()}
    return digests


@pytest.fixture(scope="module")
def first_run(tiles, tmp_path_factory) -> dict:
    """The runner's own LocalCluster: 2 worker processes × 1 thread, three tiles."""
    out = tmp_path_factory.mktemp("batch") / "out"
    progress: list[float] = []
    finished: list[tuple[str, int, int]] = []
    logs: list[str] = []
    result = run_batch([tiles["safe"], tiles["zip"], tiles["broken"]], out, config=CONFIG, workers=2,
                       threads_per_worker=1, progress=lambda f, m: progress.append(f), log=logs.append,
                       on_tile=lambda o, done, total: finished.append((o.name, done, total)))
    # The summaries as this run left them: a re-run test rewrites the same files, in any test order.
    summary = {name: (out / name).read_text() for name in (batch.SUMMARY_JSON, batch.SUMMARY_HTML)}
    return {"result": result, "out": out, "progress": progress, "finished": finished, "logs": logs, "summary": summary}


@pytest.fixture(scope="module")
def scheduler() -> str:
    """An already running cluster for the re-run tests, reached by address like a real one.

    Its 2 workers × 1 thread are threads of this process (``processes=False``): they start at once
    and find torch imported, which saves the ~5 s two fresh worker processes spend importing it on
    two cores. Worker processes are exercised by ``first_run``.
    """
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=50) as cluster:
        yield cluster.scheduler_address


# --- inputs and planning (no cluster) --------------------------------------------------------------
def test_expand_inputs_paths_globs_and_list_files(tmp_path):
    for name in ("S2A_MSIL2A_1.SAFE", "S2A_MSIL2A_2.SAFE", "S2B_MSIL1C_3.SAFE"):
        (tmp_path / "tiles" / name).mkdir(parents=True)
    (tmp_path / "tiles" / "S2C_MSIL2A_4.SAFE.zip").write_bytes(b"")
    listing = tmp_path / "lists" / "tiles.txt"
    listing.parent.mkdir()
    listing.write_text("# my tiles\n../tiles/S2B_MSIL1C_3.SAFE\n\n../tiles/*.zip\n", encoding="utf-8")
    found = expand_inputs([str(tmp_path / "tiles" / "S2A_*.SAFE"), f"@{listing}",
                           tmp_path / "tiles" / "S2A_MSIL2A_1.SAFE",  # a duplicate: dropped
                           tmp_path / "missing.SAFE"])  # kept: reported as a failed tile
    assert [p.name for p in found] == ["S2A_MSIL2A_1.SAFE", "S2A_MSIL2A_2.SAFE", "S2B_MSIL1C_3.SAFE",
                                       "S2C_MSIL2A_4.SAFE.zip", "missing.SAFE"]
    with pytest.raises(InputError, match="no tile matches"):
        expand_inputs([str(tmp_path / "nothing" / "*.SAFE")])
    with pytest.raises(InputError, match="cannot read the list"):
        expand_inputs([f"@{tmp_path / 'nope.txt'}"])
    with pytest.raises(InputError, match="no tiles"):
        expand_inputs([" "])


def test_output_folders_are_named_after_inputs_and_unique(tmp_path):
    assert tile_folder_name(Path("/d/S2B_MSIL2A_20240612_T32UNU_X.SAFE.zip")) == "S2B_MSIL2A_20240612_T32UNU_X"
    assert tile_folder_name(Path("/d/S2B_MSIL2A_X.SAFE")) == "S2B_MSIL2A_X"
    a, b = tmp_path / "one" / "IMG_DATA", tmp_path / "two" / "IMG_DATA"
    jobs = plan_jobs([tmp_path / "S2A_X.SAFE", a, b], tmp_path / "out")
    assert jobs[0].output_dir == tmp_path / "out" / "S2A_X"
    assert jobs[1].name != jobs[2].name and jobs[1].name.startswith("IMG_DATA-")
    assert plan_jobs([b, a], tmp_path / "out")[0].name == jobs[2].name  # stable across re-runs and orders


def test_urls_are_tiles_kept_as_urls_named_after_their_last_segment(tmp_path):
    item = "https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/S2B_32UNU_20240612_0_L2A"
    listing = tmp_path / "tiles.txt"
    listing.write_text(f"{item}?sig=old\nhttps://example.org/stac/S2A_T32UNV.json\n", encoding="utf-8")
    found = expand_inputs([item, f"@{listing}", f"{item}?sig=new"])  # a re-signed URL is the same tile
    assert found == [item, "https://example.org/stac/S2A_T32UNV.json"]
    jobs = plan_jobs(found, tmp_path / "out")
    assert [j.source for j in jobs] == found  # a string: Path would fold https:// into https:/
    assert [j.name for j in jobs] == ["S2B_32UNU_20240612_0_L2A", "S2A_T32UNV"]
    assert tile_folder_name(f"{item}/") == "S2B_32UNU_20240612_0_L2A"


def test_local_cluster_sizing():
    big = 64 * 2**30
    # CPU: one worker per core, one torch thread each; never more workers than tiles or memory allows.
    assert local_cluster_plan(10, "cpu", cores=2, memory=big) == batch.ClusterPlan(2, 1)
    assert local_cluster_plan(1, "cpu", cores=8, memory=big) == batch.ClusterPlan(1, 8)
    assert local_cluster_plan(10, "cpu", cores=8, memory=8 * 2**30) == batch.ClusterPlan(2, 4)
    assert local_cluster_plan(10, "cpu", workers=1, cores=2, memory=big) == batch.ClusterPlan(1, 2)
    assert local_cluster_plan(10, "cpu", threads_per_worker=2, cores=8, memory=big) == batch.ClusterPlan(4, 2)
    # CUDA: one worker per GPU, the cores split between them.
    assert local_cluster_plan(10, "auto", cores=16, gpus=4) == batch.ClusterPlan(4, 4, gpus=4)
    assert local_cluster_plan(2, "cuda", cores=16, gpus=4) == batch.ClusterPlan(2, 8, gpus=4)
    with pytest.raises(ConfigError):
        local_cluster_plan(3, "cpu", workers=-1)


def test_table_lists_every_tile_and_the_errors():
    table = format_table([
        TileOutcome("T1", "/in/T1.SAFE", "/out/T1", OK, 12.34, "cpu"),
        TileOutcome("T2", "/in/T2.SAFE", "/out/T2", FAILED, 0.5, message="cannot read band B03"),
    ])
    lines = table.splitlines()
    assert lines[0].split() == ["tile", "status", "seconds", "device", "output", "folder"]
    assert lines[2].split() == ["T1", "ok", "12.3", "cpu", "/out/T1"]
    assert lines[3].split()[:4] == ["T2", "failed", "0.5", "-"]
    assert lines[-1] == "T2: failed: cannot read band B03"


# --- real runs ---------------------------------------------------------------------------------------
def test_broken_tile_fails_alone_with_its_message(first_run, tiles):
    result = first_run["result"]
    assert [o.status for o in result.outcomes] == [OK, OK, FAILED]
    failed = result.outcomes[2]
    assert tiles["bad_band"].name in failed.message and "B03" in failed.message
    assert result.exit_code == 1
    assert "2 worker(s) × 1 torch thread(s)" in result.cluster
    assert {o.device for o in result.outcomes[:2]} == {"cpu"}
    assert len({o.worker for o in result.outcomes}) >= 1
    assert sorted(done for _, done, _ in first_run["finished"]) == [1, 2, 3]
    assert first_run["progress"][-1] == pytest.approx(1.0)
    assert any("started" in line for line in first_run["logs"])
    # The failed tile leaves nothing that looks finished.
    broken_dir = Path(failed.output_dir)
    leftovers = [p.name for p in broken_dir.iterdir()] if broken_dir.exists() else []
    assert not [n for n in leftovers if n.endswith((".tif", ".png", "_report.json"))], leftovers


def test_outputs_are_byte_identical_to_segment_tile_by_tile(first_run, reference):
    for outcome, key in zip(first_run["result"].outcomes, ("safe", "zip")):
        folder = Path(outcome.output_dir)
        assert folder.parent == first_run["out"]
        for product, expected in reference[key].items():
            (path,) = folder.glob(f"*_{product}.tif")
            assert digest(path) == expected, (key, product)


def test_summary_files(first_run):
    summary = json.loads(first_run["summary"][batch.SUMMARY_JSON])
    assert summary["counts"] == {OK: 2, SKIPPED: 0, FAILED: 1, CANCELLED: 0}
    assert [t["status"] for t in summary["tiles"]] == [OK, OK, FAILED]
    page = first_run["summary"][batch.SUMMARY_HTML]
    assert page.count("<tr>") == 4 and "B03" in page and "_preview.png" in page


def test_rerun_skips_complete_tiles_and_exits_1_for_the_broken_one(first_run, tiles, scheduler, capsys):
    out = first_run["out"]
    classes = sorted(out.glob("*/*_class.tif"))
    assert len(classes) == 2
    stamps = [p.stat().st_mtime_ns for p in classes]
    # --mask none: the first run's setting (the API's default); the command line's default is auto.
    code = main(["batch", str(tiles["safe"]), str(tiles["zip"]), str(tiles["broken"]), str(out),
                 "--scheduler", scheduler, "--device", "cpu", "--quiet", "--mask", "none"])
    assert code == 1
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines()[2:5]]
    assert [row[1] for row in rows] == [SKIPPED, SKIPPED, FAILED]
    assert "B03" in printed and "2 skipped, 1 failed" in printed
    assert [p.stat().st_mtime_ns for p in classes] == stamps  # nothing recomputed
    # --overwrite runs the complete tiles again.
    code = main(["batch", str(tiles["safe"]), str(out), "--scheduler", scheduler, "--device", "cpu",
                 "--quiet", "--overwrite", "--mask", "none"])
    assert code == 0
    assert classes[0].stat().st_mtime_ns != stamps[0] or classes[1].stat().st_mtime_ns != stamps[1]


def test_a_different_model_or_setting_is_not_complete(first_run):
    folder = Path(first_run["result"].outcomes[0].output_dir)
    assert completed_report(folder, "builtin", False) is not None
    assert completed_report(folder, "another-model", False) is None
    assert completed_report(folder, "builtin", True) is None  # probabilities asked for now
    # Made unmasked: complete for the same settings, not for a masked run or another area.
    assert completed_report(folder, "builtin", False, CONFIG) is not None
    assert completed_report(folder, "builtin", False, CONFIG.with_(mask="scl")) is None
    assert completed_report(folder, "builtin", False, CONFIG.with_(aoi="0,0,1,1")) is None


def test_interrupted_tile_is_resumed_and_identical(tiles, tmp_path, scheduler):
    """A run cancelled after its first chunk leaves partial state; the batch continues it from the engine's
    journal, and the result equals an uninterrupted run."""
    from s2seg.core.errors import Cancelled
    from s2seg.core.pipeline import segment

    config = EngineConfig(device="cpu", chunk_size=120)
    (job,) = plan_jobs([tiles["safe"]], tmp_path / "out")
    cancel = threading.Event()

    def stop_after_first_chunk(fraction: float, message: str) -> None:
        if "written" in message:
            cancel.set()

    with pytest.raises(Cancelled):
        segment(job.source, job.output_dir, config=config, progress=stop_after_first_chunk, cancel=cancel)
    journaled = any("journal" in p.name for p in job.output_dir.iterdir())
    result = run_batch([tiles["safe"]], tmp_path / "out", config=config, scheduler=scheduler)
    (outcome,) = result.outcomes
    assert outcome.status == OK, outcome.message
    assert outcome.resumed == journaled
    reference = segment(tiles["safe"], tmp_path / "reference", config=config)
    (path,) = job.output_dir.glob("*_class.tif")
    assert digest(path) == digest(reference.products["class"])


def test_cancel_stops_the_batch(tiles, tmp_path, scheduler):
    cancel = threading.Event()
    cancel.set()
    result = run_batch([tiles["safe"], tiles["zip"], tiles["broken"]], tmp_path / "out", config=CONFIG,
                       scheduler=scheduler, cancel=cancel)
    assert result.exit_code == 130
    assert any(o.status == CANCELLED for o in result.outcomes)
    for outcome in result.outcomes:
        if outcome.status == CANCELLED:
            assert not list(Path(outcome.output_dir).glob("*_report.json"))


def test_bad_model_is_one_error_not_one_per_tile(tiles, tmp_path, scheduler):
    from s2seg.core.errors import ModelError

    with pytest.raises(ModelError, match="no-such-model"):
        run_batch([tiles["safe"], tiles["zip"]], tmp_path / "out", model="no-such-model", config=CONFIG,
                  scheduler=scheduler)


def test_unreachable_scheduler_is_an_error(tiles, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(batch.driver, "CONNECT_TIMEOUT_S", 2)
    code = main(["batch", str(tiles["safe"]), str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:9",
                 "--quiet"])
    assert code == 1
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err


def test_a_tile_keeps_its_folder_when_run_alone_or_with_others(tmp_path):
    from s2seg.core.sample import write_sample_tile

    a = write_sample_tile(tmp_path / "a", size=60, seed=0)
    b = write_sample_tile(tmp_path / "b", size=60, seed=1)  # same product name as a
    together = plan_jobs([a, b], tmp_path / "out")
    assert together[0].name != together[1].name
    together[1].output_dir.mkdir(parents=True)  # as after a run
    assert plan_jobs([b], tmp_path / "out")[0].name == together[1].name
    # A tile first run alone keeps the plain name once others with its name join it.
    alone = plan_jobs([a], tmp_path / "out2")[0]
    alone.output_dir.mkdir(parents=True)
    (alone.output_dir / "T_report.json").write_text(json.dumps({"tile": {"source": str(a)}}))
    assert [j.name for j in plan_jobs([b, a], tmp_path / "out2")][1] == alone.name


def test_unexpected_tile_error_keeps_its_traceback_in_the_outcome_and_summary(tmp_path, monkeypatch):
    """A bug in one tile (not an S2SegError) fails that tile with file:line and the formatted traceback."""
    import s2seg.core.pipeline as pipeline

    def broken_segment(*args, **kwargs):
        raise KeyError("chunk 7")  # raised here: this file and line must be in the outcome

    monkeypatch.setattr(pipeline, "segment", broken_segment)
    job = TileJob(source=tmp_path / "T.SAFE", name="T", output_dir=tmp_path / "out" / "T")
    outcome = run_tile(job, config=CONFIG)
    assert outcome.status == FAILED
    here = Path(__file__).name
    assert outcome.message.startswith("KeyError: 'chunk 7' (at " + here + ":")
    assert outcome.error_type == "KeyError"
    assert outcome.traceback.startswith("Traceback (most recent call last):")
    assert f'{here}", line' in outcome.traceback and "in broken_segment" in outcome.traceback
    result = batch.BatchResult(outcomes=[outcome], seconds=1.0, cluster="none")
    json_path, html_path = write_summary(result, tmp_path)
    (tile,) = json.loads(json_path.read_text())["tiles"]
    assert tile["traceback"] == outcome.traceback and tile["error_type"] == "KeyError"
    assert "in broken_segment" in html_path.read_text()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.part"))  # written atomically


def test_engine_errors_keep_their_type_for_the_front_ends(tmp_path, monkeypatch):
    import s2seg.core.pipeline as pipeline
    from s2seg.core.errors import ResumeImpossible

    def segment(*args, **kwargs):
        raise ResumeImpossible("no interrupted run of T to continue")

    monkeypatch.setattr(pipeline, "segment", segment)
    job = TileJob(source=tmp_path / "T.SAFE", name="T", output_dir=tmp_path / "out" / "T")
    outcome = run_tile(job, config=CONFIG.with_(resume="require"))
    assert (outcome.status, outcome.error_type, outcome.traceback) == (FAILED, "ResumeImpossible", "")
    assert outcome.message == "no interrupted run of T to continue"


def test_a_worker_thread_in_this_process_leaves_torchs_threads_alone(tiles, tmp_path, scheduler, monkeypatch):
    """torch's thread count is process-wide: workers that are threads of the client process (this
    ``processes=False`` scheduler) must not set it, or the client's own later runs compute differently."""
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    result = run_batch([tiles["safe"]], tmp_path / "out", config=CONFIG, scheduler=scheduler, threads_per_worker=1)
    assert [o.status for o in result.outcomes] == [OK] and calls == []
