"""Resume after a crash, a cancel or an error: the journal, the `.part` files, and identical results.

The headline test kills a real ``s2seg segment`` process with SIGKILL after a few chunks
are journaled, resumes, and compares every product with an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from doubles import SpectralPatchModel

from s2seg.core import pipeline
from s2seg.core.cli import main
from s2seg.core.config import EngineConfig
from s2seg.core.errors import Cancelled, ModelError, OutputError, ResumeImpossible
from s2seg.core.journal import SUFFIX, Journal, differences, digest, journal_path, lock, read_journal, run_fields, unlock
from s2seg.core.pipeline import segment
from s2seg.core.sample import write_sample_tile
from s2seg.core.sentinel2 import discover

pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore::FutureWarning")]
PRODUCTS = ("class", "maxprob", "entropy", "gap", "probs")
TILE_NAME = "T32UNU_20240612T103031_L2A_N0510"  # stem, level, baseline (sentinel2._tile_name)
CHUNK = 96  # with 32 px patches: 9 chunks on the 240 px tile, each one whole 96 px GeoTIFF block


class PatchModel(SpectralPatchModel):
    """Fast patch-level test model. 32 px patches: chunks are multiples of lcm(6, 16) = 48 px, a size
    GeoTIFF blocks can have, so every chunk is journaled as soon as it is written."""

    def __init__(self, fail_on_call=None, name="patch-test", levels=("L1C", "L2A"), patch_size=32):
        super().__init__(fail_on_call, patch_size=patch_size, name=name, levels=levels)


def read_all(paths):
    out = {}
    for key, path in paths.items():
        with rasterio.open(path) as ds:
            out[key] = ds.read()
    return out


def assert_same_products(a: dict, b: dict):
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype
        assert np.array_equal(a[key], b[key], equal_nan=True), f"{key} differs"


def partial_state(out: Path) -> tuple[list[str], list[str]]:
    """(names of .part files, names of finished-looking products) in ``out``."""
    names = sorted(p.name for p in out.iterdir())
    parts = [n for n in names if n.endswith(".part")]
    finished = [n for n in names if n.endswith((".tif", ".png", "_report.json"))]
    return parts, finished


def journal_chunks(out: Path) -> int:
    path = journal_path(out, TILE_NAME)
    return len(read_journal(path).done) if path.exists() else 0


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    return write_sample_tile(tmp_path_factory.mktemp("tile"), size=240, seed=5, nodata_corner=True)


@pytest.fixture(scope="module")
def reference(tile, tmp_path_factory):
    """An uninterrupted run with the patch model, chunks of 96 px (9 chunks), probabilities written."""
    out = tmp_path_factory.mktemp("reference")
    result = segment(tile, out, model=PatchModel(), config=EngineConfig(chunk_size=CHUNK, write_probs=True))
    assert result.n_chunks == 9 and result.resumed_chunks == 0
    return result, read_all(result.products)


# ------------------------------------------------------------------ kill -9 / Ctrl-C of the real CLI
class TinyClassifier(torch.nn.Module):
    """Patch classifier for the CLI runs (a TorchScript file + sidecar card: loadable by path)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3))) * 20


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(1)
    path = folder / "tiny.pt"
    torch.jit.script(TinyClassifier().eval()).save(str(path))
    card = PatchModel().card.to_dict()
    card.update(name="tiny", format="torchscript")
    del card["path"]  # the file beside the card
    path.with_suffix(".card.json").write_text(json.dumps(card))
    return path


@pytest.fixture(scope="module")
def cli_reference(tile, cli_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-reference")
    result = segment(tile, out, model=cli_model, config=EngineConfig(chunk_size=CHUNK, write_probs=True, device="cpu"))
    return result, read_all(result.products), json.loads(result.report.read_text())


def cli_args(tile: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return ["segment", str(tile), str(out), "--model", str(model), "--chunk-size", str(CHUNK), "--probs", "--device", "cpu",
            "--mask", "none", "--quiet", *extra]  # the products of the API run they are compared with


def start_cli(tile: Path, out: Path, model: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "s2seg.core.cli", *cli_args(tile, out, model)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_after_journaled_chunks(proc: subprocess.Popen, out: Path, n: int, timeout: float = 60) -> None:
    """Poll the journal until it lists ``n`` chunks, then freeze the process (SIGSTOP): no race with the run."""
    path = journal_path(out, TILE_NAME)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"s2seg ended (rc {proc.returncode}) before {n} chunks were journaled: {proc.stderr.read()}")
        if path.exists() and len([ln for ln in path.read_bytes().split(b"\n")[1:] if ln.strip()]) >= n:
            proc.send_signal(signal.SIGSTOP)
            return
        time.sleep(0.005)
    proc.kill()
    pytest.fail("no journaled chunk in time")


def test_kill_9_mid_tile_then_resume_gives_identical_products(tile, cli_model, cli_reference, tmp_path, capsys):
    reference, expected, expected_report = cli_reference
    out = tmp_path / "out"
    proc = start_cli(tile, out, cli_model)
    stop_after_journaled_chunks(proc, out, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    parts, finished = partial_state(out)
    assert finished == [], "a killed run must not leave a finished-looking file"
    assert len(parts) == 5 and (out / f"{TILE_NAME}{SUFFIX}").exists()
    journaled = journal_chunks(out)
    assert 2 <= journaled < reference.n_chunks == 9

    assert main(cli_args(tile, out, cli_model)) == 0
    err = capsys.readouterr().err
    assert f"resuming: {journaled} of 9 chunk(s) already written by an interrupted run" in err
    assert_same_products(read_all({k: out / f"{TILE_NAME}_{k}.tif" for k in PRODUCTS}), expected)
    report = json.loads((out / f"{TILE_NAME}_report.json").read_text())
    assert report["resumed_chunks"] == journaled
    assert report["classes"] == expected_report["classes"]  # statistics exactly as uninterrupted
    assert (out / f"{TILE_NAME}_preview.png").read_bytes() == reference.preview.read_bytes()
    parts, finished = partial_state(out)
    assert parts == [] and not list(out.glob(f"*{SUFFIX}*"))


def test_ctrl_c_in_the_cli_stops_quickly_and_leaves_a_resumable_state(tile, cli_model, cli_reference, tmp_path, capsys, monkeypatch):
    """The CLI's own SIGINT handler, in this process: Ctrl-C arrives right after the first chunk is journaled."""
    reference, expected, _ = cli_reference
    out = tmp_path / "out"
    record = Journal.record
    sent = []
    handler = signal.getsignal(signal.SIGINT)  # Python's own, or SIG_IGN where the test run was started in the background

    def record_then_ctrl_c(self, chunks):
        record(self, chunks)
        if not sent:
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Journal, "record", record_then_ctrl_c)
    assert main(cli_args(tile, out, cli_model)) == 130
    assert time.monotonic() - sent[0] < 2, "Ctrl-C must stop within one batch"
    stderr = capsys.readouterr().err
    assert re.search(r"s2seg: cancelled after (\d+) of 9 chunk\(s\); \1 of 9 chunk\(s\) are saved in .*"
                     r"run again with the same settings to resume", stderr), stderr
    parts, finished = partial_state(out)
    assert finished == [] and len(parts) == 5
    assert 1 <= journal_chunks(out) < 9
    monkeypatch.setattr(Journal, "record", record)
    assert main(cli_args(tile, out, cli_model, "--resume")) == 0
    assert "resuming:" in capsys.readouterr().err
    assert_same_products(read_all({k: out / f"{TILE_NAME}_{k}.tif" for k in PRODUCTS}), expected)
    assert signal.getsignal(signal.SIGINT) is handler  # the CLI put back the handler it found


# ------------------------------------------------------------------ cancel and errors through the API
def cancel_after(n_chunks: int):
    cancel = threading.Event()

    def progress(fraction, message):
        if message.startswith(f"chunk {n_chunks}/") and message.endswith("written"):
            cancel.set()

    return cancel, progress


def test_cancel_keeps_written_chunks_and_resume_neither_reads_nor_computes_them(tile, reference, tmp_path, monkeypatch):
    result, expected = reference
    out = tmp_path / "out"
    config = EngineConfig(chunk_size=CHUNK, write_probs=True)
    cancel, progress = cancel_after(3)
    with pytest.raises(Cancelled, match=r"cancelled after \d+ of 9 chunk\(s\); \d+ of 9 chunk\(s\) are saved in .*run again"):
        segment(tile, out, model=PatchModel(), config=config, progress=progress, cancel=cancel)
    journaled = journal_chunks(out)
    assert 3 <= journaled < 9
    parts, finished = partial_state(out)
    assert finished == [] and len(parts) == 5

    read_windows = []

    class CountingReader(pipeline.ChunkReader):
        def read(self, rows, cols):
            read_windows.append((rows, cols))
            return super().read(rows, cols)

    monkeypatch.setattr(pipeline, "ChunkReader", CountingReader)
    model = PatchModel()
    messages = []
    resumed = segment(tile, out, model=model, config=config, log=messages.append)
    assert resumed.resumed_chunks == journaled
    assert len(read_windows) == 9 - journaled  # journaled chunks are not even read
    assert any(m.startswith(f"resuming: {journaled} of 9") for m in messages)
    assert_same_products(read_all(resumed.products), expected)
    assert [s.pixels for s in resumed.class_stats] == [s.pixels for s in result.class_stats]
    np.testing.assert_array_equal([s.mean_maxprob for s in resumed.class_stats], [s.mean_maxprob for s in result.class_stats])
    assert resumed.preview.read_bytes() == result.preview.read_bytes()
    assert partial_state(out)[0] == [] and not journal_path(out, TILE_NAME).exists()


def test_model_error_after_some_chunks_keeps_them_for_resume(tile, reference, tmp_path):
    _, expected = reference
    out = tmp_path / "out"
    config = EngineConfig(chunk_size=CHUNK, batch_size=16, write_probs=True)
    with pytest.raises(ModelError, match=r"simulated CUDA out of memory.*chunk\(s\) are saved in .*to resume"):
        segment(tile, out, model=PatchModel(fail_on_call=22), config=config)  # 49 patches, 4 batches a chunk: fails in chunk 6
    # bounded queues (2 items): while chunk 6 is inferred, the writer has taken chunk 3 at least
    assert journal_chunks(out) >= 2
    assert partial_state(out)[1] == []
    assert not [t for t in threading.enumerate() if t.name.startswith("s2seg-")]
    result = segment(tile, out, model=PatchModel(), config=config)
    assert result.resumed_chunks >= 2
    assert_same_products(read_all(result.products), expected)


def test_chunks_that_share_blocks_are_journaled_only_where_block_and_chunk_edges_meet(tmp_path):
    """60 px patches, chunks of 60 px: blocks of 48 px straddle chunks; block and chunk edges meet every
    240 px, so of the 25 chunks of a 300 px tile the first 20 (four chunk rows) are journaled together."""
    tile = write_sample_tile(tmp_path / "tile", size=300, seed=2)
    config = EngineConfig(chunk_size=60)
    expected = read_all(segment(tile, tmp_path / "ref", model=PatchModel(patch_size=60), config=config).products)
    out = tmp_path / "out"
    cancel, progress = cancel_after(22)
    messages = []
    with pytest.raises(Cancelled, match="; 20 of 25 chunk"):
        segment(tile, out, model=PatchModel(patch_size=60), config=config, progress=progress, cancel=cancel, log=messages.append)
    assert any("output blocks (48 px) straddle chunks of 60 px" in m and "every 4 chunk row(s)" in m for m in messages)
    assert journal_chunks(out) == 20
    result = segment(tile, out, model=PatchModel(patch_size=60), config=config)
    assert result.resumed_chunks == 20
    assert_same_products(read_all(result.products), expected)


def test_error_before_any_chunk_is_journaled_leaves_nothing(tile, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ModelError, match="partial outputs were removed"):
        segment(tile, out, model=PatchModel(fail_on_call=1), config=EngineConfig(chunk_size=CHUNK))
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------ which journals are (not) used
@pytest.fixture
def interrupted(tile, tmp_path):
    """An output folder holding the partial state of a run cancelled after 2 chunks."""
    out = tmp_path / "out"
    cancel, progress = cancel_after(2)
    with pytest.raises(Cancelled):
        segment(tile, out, model=PatchModel(), config=EngineConfig(chunk_size=CHUNK, write_probs=True), progress=progress, cancel=cancel)
    assert journal_chunks(out) >= 2
    return out


def test_a_journal_of_other_settings_is_never_used(tile, reference, interrupted):
    messages = []
    model = PatchModel()
    result = segment(tile, interrupted, model=model, config=EngineConfig(chunk_size=48, write_probs=True), log=messages.append)
    assert result.resumed_chunks == 0 and model.calls > 0
    assert any(m.startswith("not resuming:") and m.endswith("starting over") and "settings.chunk_size: 96 → 48" in m
               for m in messages), messages
    assert not list(interrupted.glob("*.part"))


def test_the_journal_key_covers_tile_model_and_pixel_settings_only(tile):
    bandset = discover(tile)
    card = PatchModel().card
    base = dict(chunk_size=96, write_probs=True, compress="ZSTD", block=96)
    fields = run_fields(bandset, card, **base)
    assert run_fields(bandset, card, **base) == fields  # batch size, device … are not part of it
    variants = {
        "settings.chunk_size": run_fields(bandset, card, **{**base, "chunk_size": 48, "block": 48}),
        "settings.write_probs": run_fields(bandset, card, **{**base, "write_probs": False}),
        "settings.compress": run_fields(bandset, card, **{**base, "compress": "DEFLATE"}),
        "model.card.name": run_fields(bandset, PatchModel(name="other").card, **base),
        "model.card.patch_size": run_fields(bandset, PatchModel(patch_size=60).card, **base),
    }
    band = next(tile.rglob("*_B04_10m.tif"))
    st = band.stat()
    os.utime(band, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        variants["tile.bands.B04"] = run_fields(discover(tile), card, **base)
    finally:
        os.utime(band, ns=(st.st_atime_ns, st.st_mtime_ns))
    for where, changed in variants.items():
        assert digest(changed) != digest(fields), where
        assert any(line.startswith(where + ":") for line in differences(fields, changed)), (where, differences(fields, changed))


def test_require_mode_refuses_a_mismatched_journal_and_a_missing_one(tile, interrupted, tmp_path, capsys):
    with pytest.raises(ResumeImpossible, match=r"cannot resume in .*settings\.chunk_size: 96 → 48") as info:
        segment(tile, interrupted, model=PatchModel(), config=EngineConfig(chunk_size=48, write_probs=True, resume="require"))
    assert "--" not in str(info.value)  # neutral: the front ends say how to start over
    assert journal_chunks(interrupted) >= 2  # refusing touched nothing
    empty = tmp_path / "empty"
    assert main(["segment", str(tile), str(empty), "--resume", "--quiet"]) == 1
    assert f"cannot resume in {empty}: there is no journal {TILE_NAME}{SUFFIX} of an interrupted run" in capsys.readouterr().err


def test_no_resume_starts_over(tile, reference, interrupted):
    messages = []
    model = PatchModel()
    result = segment(tile, interrupted, model=model, config=EngineConfig(chunk_size=CHUNK, write_probs=True, resume=False), log=messages.append)
    assert result.resumed_chunks == 0
    assert any("discarding the partial results" in m for m in messages)
    assert_same_products(read_all(result.products), reference[1])


def test_a_torn_last_journal_line_is_ignored(tile, reference, interrupted):
    path = journal_path(interrupted, TILE_NAME)
    n = journal_chunks(interrupted)
    with open(path, "a") as f:
        f.write('{"chunk": 9, "stats": [[1, 2')  # kill -9 while appending
    result = segment(tile, interrupted, model=PatchModel(), config=EngineConfig(chunk_size=CHUNK, write_probs=True))
    assert result.resumed_chunks == n
    assert_same_products(read_all(result.products), reference[1])


def test_a_damaged_journal_or_missing_part_file_means_starting_over(tile, reference, interrupted):
    next(interrupted.glob("*_gap.tif.part")).unlink()
    messages = []
    result = segment(tile, interrupted, model=PatchModel(), config=EngineConfig(chunk_size=CHUNK, write_probs=True), log=messages.append)
    assert result.resumed_chunks == 0
    assert any("not resuming:" in m and "_gap.tif.part is missing" in m for m in messages), messages
    assert_same_products(read_all(result.products), reference[1])


def test_a_second_run_on_the_same_tile_and_folder_is_refused_while_one_runs(tile, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    fd = lock(journal_path(out, TILE_NAME))  # what a running s2seg holds
    try:
        with pytest.raises(OutputError, match=rf"another s2seg run is writing {TILE_NAME} into {out}"):
            segment(tile, out, model=PatchModel(), config=EngineConfig(chunk_size=CHUNK))
    finally:
        unlock(fd)
    segment(tile, out, model=PatchModel(), config=EngineConfig(chunk_size=CHUNK))


def test_resume_does_not_depend_on_how_the_tile_path_is_spelled(tile, reference, tmp_path, monkeypatch):
    """Interrupted with the tile given relative to the working folder, resumed with its absolute path."""
    _, expected = reference
    out = tmp_path / "out"
    config = EngineConfig(chunk_size=CHUNK, batch_size=16, write_probs=True)
    monkeypatch.chdir(tile.parent)
    with pytest.raises(ModelError, match="are saved in"):
        segment(Path(tile.name), out, model=PatchModel(fail_on_call=22), config=config)
    journaled = journal_chunks(out)
    assert journaled >= 2
    monkeypatch.chdir(tmp_path)
    result = segment(tile.resolve(), out, model=PatchModel(), config=EngineConfig(**{**config.__dict__, "resume": "require"}))
    assert result.resumed_chunks == journaled
    assert_same_products(read_all(result.products), expected)


def test_a_mismatch_message_shows_the_differing_values_in_full(tile):
    card = PatchModel().card
    base = dict(chunk_size=CHUNK, write_probs=True, compress="ZSTD", block=CHUNK)
    fields = run_fields(discover(tile), card, **base)
    moved = json.loads(json.dumps(fields))
    long_name = "a-folder-name-long-enough-to-push-the-difference-past-sixty-characters"
    old_path = moved["tile"]["bands"]["B04"][0]
    moved["tile"]["bands"]["B04"][0] = str(Path("/elsewhere", long_name, Path(old_path).name))
    (line,) = differences(fields, moved)
    assert line == f"tile.bands.B04: {json.dumps(fields['tile']['bands']['B04'])} → {json.dumps(moved['tile']['bands']['B04'])}"


# ------------------------------------------------------------------ after the last chunk: the finishing steps
def finish_then_compare(tile, out, expected, n_chunks=9):
    """A re-run that only finishes: reads and computes nothing, gives the uninterrupted products."""
    model = PatchModel()
    result = segment(tile, out, model=model, config=EngineConfig(chunk_size=CHUNK, write_probs=True))
    assert model.calls == 0 and result.resumed_chunks == n_chunks
    assert_same_products(read_all(result.products), expected)
    assert result.report.is_file() and result.preview.is_file()
    assert not journal_path(out, TILE_NAME).exists() and partial_state(out)[0] == []
    return result


def test_disk_full_while_building_overviews_keeps_every_chunk(tile, reference, tmp_path, monkeypatch):
    from s2seg.core.writer import ProductWriter, _output_error

    out = tmp_path / "out"
    finish = ProductWriter._finish

    def full(self, key, *args):
        if key == "entropy":
            raise _output_error(self._partial(key), OSError(28, "No space left on device"))
        return finish(self, key, *args)

    monkeypatch.setattr(ProductWriter, "_finish", full)
    with pytest.raises(OutputError, match=r"disk full while writing .*_entropy\.tif\.part.*; 9 of 9 chunk\(s\) are saved in "
                                          r".*run again with the same settings to resume"):
        segment(tile, out, model=PatchModel(), config=EngineConfig(chunk_size=CHUNK, write_probs=True))
    parts, finished = partial_state(out)
    assert finished == [] and len([p for p in parts if p.endswith(".tif.part")]) == 5
    assert journal_chunks(out) == 9
    monkeypatch.setattr(ProductWriter, "_finish", finish)
    finish_then_compare(tile, out, reference[1])


def test_a_crash_between_the_renames_is_finished_by_the_next_run(tile, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    replace = os.replace
    renamed = []

    def crash_on_the_third_product(src, dst):
        if str(src).endswith(".tif.part"):
            if len(renamed) == 2:
                raise OSError(5, "simulated crash while renaming")
            renamed.append(src)
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_the_third_product)
    with pytest.raises(OSError, match="simulated crash while renaming"):
        segment(tile, out, model=PatchModel(), config=EngineConfig(chunk_size=CHUNK, write_probs=True))
    monkeypatch.setattr(os, "replace", replace)
    parts, finished = partial_state(out)
    assert len(finished) == 2 and len([p for p in parts if p.endswith(".tif.part")]) == 3  # half renamed
    finish_then_compare(tile, out, reference[1])


def test_a_failure_before_the_report_is_finished_by_the_next_run(tile, reference, tmp_path, monkeypatch):
    from s2seg.core.preview import PreviewBuilder

    out = tmp_path / "out"
    save = PreviewBuilder.save
    monkeypatch.setattr(PreviewBuilder, "save", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OutputError, match=r"disk full while writing .*_preview\.png.*9 of 9 chunk\(s\) are saved in"):
        segment(tile, out, model=PatchModel(), config=EngineConfig(chunk_size=CHUNK, write_probs=True))
    monkeypatch.setattr(PreviewBuilder, "save", save)
    assert journal_chunks(out) == 9 and not (out / f"{TILE_NAME}_report.json").exists()
    finish_then_compare(tile, out, reference[1])


def test_cancel_while_building_overviews_stops_and_stays_resumable(tmp_path, monkeypatch):
    """A tile large enough for overview levels: the cancel is seen between two strips of one product read
    back at the commit (the probabilities: the other products' overviews are made as they are written)."""
    from s2seg.core import writer as writer_module

    tile = write_sample_tile(tmp_path / "tile", size=528, seed=5)
    config = EngineConfig(chunk_size=240, write_probs=True)
    expected = read_all(segment(tile, tmp_path / "reference", model=PatchModel(), config=config).products)
    cancel = threading.Event()
    push = writer_module._OverviewPyramid.push
    pushed = []

    def push_then_cancel(self, rows, last=False):
        pushed.append(rows.shape[0])
        cancel.set()  # as the CLI's Ctrl-C handler does
        return push(self, rows, last)

    monkeypatch.setattr(writer_module._OverviewPyramid, "push", push_then_cancel)
    out = tmp_path / "out"
    with pytest.raises(Cancelled, match=r"cancelled while finishing the outputs; 9 of 9 chunk\(s\) are saved in"):
        segment(tile, out, model=PatchModel(), config=config, cancel=cancel)
    assert pushed == [PatchModel().card.num_classes]  # stopped at the next strip of the probabilities
    parts, finished = partial_state(out)
    assert finished == [] and len(parts) == 5 and journal_chunks(out) == 9
    monkeypatch.setattr(writer_module._OverviewPyramid, "push", push)
    model = PatchModel()
    result = segment(tile, out, model=model, config=config)
    assert model.calls == 0 and result.resumed_chunks == 9
    assert_same_products(read_all(result.products), expected)


def test_the_lock_is_closed_once_when_the_journal_cannot_be_written(tile, tmp_path, monkeypatch):
    """A second close of a reused descriptor number could close another thread's file."""
    import fcntl

    out = tmp_path / "out"
    locked, closed = [], []
    flock, close, replace = fcntl.flock, os.close, os.replace

    def record_lock(fd, operation):
        locked.append(fd)
        return flock(fd, operation)

    def record_close(fd):
        if locked:  # after the lock was taken (its number may have served a temporary file before)
            closed.append(fd)
        return close(fd)

    def no_space_for_the_journal(src, dst):
        if str(dst).endswith(SUFFIX):
            raise OSError(28, "No space left on device")
        return replace(src, dst)

    monkeypatch.setattr(fcntl, "flock", record_lock)
    monkeypatch.setattr(os, "close", record_close)
    monkeypatch.setattr(os, "replace", no_space_for_the_journal)
    with pytest.raises(OutputError, match="disk full while writing .*s2seg-journal"):
        segment(tile, out, model=PatchModel(), config=EngineConfig(chunk_size=CHUNK))
    monkeypatch.undo()
    assert len(locked) == 1
    assert closed.count(locked[0]) == 1
    assert sorted(p.name for p in out.iterdir()) == []  # nothing journaled: nothing kept, lock file removed


def test_what_was_kept_is_said_once_in_the_error_not_also_in_the_log(tile, tmp_path):
    messages = []
    with pytest.raises(ModelError, match=r"are saved in") as info:
        segment(tile, tmp_path / "out", model=PatchModel(fail_on_call=22), log=messages.append,
                config=EngineConfig(chunk_size=CHUNK, batch_size=16))
    assert str(info.value).count("are saved in") == 1
    assert not [m for m in messages if "saved in" in m or "partial outputs" in m]
