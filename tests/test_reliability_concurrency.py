"""Fault injection in each of the three pipeline threads at a random chunk.

Whatever fails — the reader, the model, the writer (or the journal, or a progress callback) —
the run must end within seconds with that error, leave no ``s2seg-*`` thread alive (pytest-timeout
catches a deadlock), and leave either nothing or a consistent resumable state: ``.part`` files and
a journal listing only chunks that are really on disk — never a finished-looking product.
"""
from __future__ import annotations

import errno
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from hypothesis import given, settings, strategies as st

from s2seg.core import pipeline
from s2seg.core.config import EngineConfig
from s2seg.core.errors import InputError, ModelError, S2SegError
from s2seg.core.journal import Journal, journal_path, read_journal
from s2seg.core.models.base import apply_activation
from s2seg.core.models.card import ModelCard
from s2seg.core.nomenclature import BIGEARTHNET19_COLOURS, BIGEARTHNET19_NAMES
from s2seg.core.pipeline import segment
from s2seg.core.sample import write_sample_tile
from s2seg.core.writer import ProductWriter

pytestmark = pytest.mark.timeout(60)
TILE_NAME = "T32UNU_20240612T103031_L2A_N0510"  # stem, level, baseline (sentinel2._tile_name)
N_CHUNKS = 9  # 240 px tile, chunks of 96, 96 and 48 px
N_BATCHES = 4 * 4 + 4 * 2 + 1  # batches of 16 patches: 49 patches in a full chunk, 28 in an edge one, 16 in the corner
CONFIG = EngineConfig(chunk_size=96, batch_size=16, write_probs=True)
FAST = settings(max_examples=3, deadline=None)


class PatchModel:
    """Patch-level test model (32 px patches); fails at its ``fail_on_call``-th batch."""

    def __init__(self, fail_on_call=None, error=None):
        self.card = ModelCard(name="patch-test", format="builtin", bands=("B02", "B04", "B08", "B11"), patch_size=32,
                              class_names=BIGEARTHNET19_NAMES[:5], class_colours=BIGEARTHNET19_COLOURS[:5],
                              input_scale="reflectance")
        self.device = torch.device("cpu")
        torch.manual_seed(0)
        self.weights = torch.randn(4, 5) * 20
        self.calls = 0
        self.fail_on_call = fail_on_call
        self.error = error or RuntimeError("simulated fault in the model")

    def predict(self, batch):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise self.error
        return apply_activation(batch.mean(dim=(2, 3)) @ self.weights, "softmax")


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    return write_sample_tile(tmp_path_factory.mktemp("tile"), size=240, seed=6)


@pytest.fixture(scope="module")
def expected(tile, tmp_path_factory):
    model = PatchModel()
    result = segment(tile, tmp_path_factory.mktemp("reference"), model=model, config=CONFIG)
    assert result.n_chunks == N_CHUNKS and model.calls == N_BATCHES
    return {k: _read(p) for k, p in result.products.items()}


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read()


def run_with_fault(tile: Path, out: Path, model=None, expect=S2SegError, match: str = "") -> tuple[BaseException, float]:
    t0 = time.monotonic()
    with pytest.raises(expect, match=match) as info:
        segment(tile, out, model=model or PatchModel(), config=CONFIG)
    return info.value, time.monotonic() - t0


def open_files_under(folder: Path) -> list[str]:
    """Files below ``folder`` this process still has open (Linux /proc; [] elsewhere)."""
    fds = Path("/proc/self/fd")
    found = []
    for fd in fds.iterdir() if fds.is_dir() else []:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


def assert_clean_stop(out: Path, elapsed: float) -> int:
    """No thread left, no file left open, nothing finished-looking, and a consistent partial state;
    returns the number of journaled chunks."""
    assert elapsed < 10, f"the run took {elapsed:.1f} s to stop"
    alive = [t.name for t in threading.enumerate() if t.name.startswith("s2seg-")]
    assert alive == [], f"threads still alive: {alive}"
    # a dataset kept open (e.g. by a traceback's frame) would be flushed later, behind a resuming run's back
    assert open_files_under(out) == []
    names = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert not [n for n in names if n.endswith((".tif", ".png", "_report.json"))], names
    path = journal_path(out, TILE_NAME)
    if not path.exists():
        assert names == [], f"temporaries left without a journal: {names}"
        return 0
    done = read_journal(path).done
    assert 0 < len(done) < N_CHUNKS and sorted(done) == list(range(len(done)))
    assert len([n for n in names if n.endswith(".tif.part")]) == 5
    # what the journal claims is really on disk: the journaled chunks read back as valid class ids
    with rasterio.open(out / f"{TILE_NAME}_class.tif.part") as ds:
        for index in done:
            chunk = pipeline.plan(240, 240, 32, 96).chunks[index]
            window = ds.read(1, window=((chunk.row0, chunk.row1), (chunk.col0, chunk.col1)))
            assert (window < 5).all(), f"journaled chunk {index} is not on disk"
    return len(done)


# ------------------------------------------------------------------ reader thread
@FAST
@given(at=st.integers(0, N_CHUNKS - 1), kind=st.sampled_from(["input", "os"]))
def test_reader_fault_at_a_random_chunk(tile, at, kind):
    error = InputError("simulated unreadable band") if kind == "input" else OSError(errno.EIO, "simulated I/O error")
    reads = []

    class FaultyReader(pipeline.ChunkReader):
        def read(self, rows, cols):
            reads.append(rows)
            if len(reads) == at + 1:
                raise error
            return super().read(rows, cols)

    with pytest.MonkeyPatch.context() as monkeypatch, tempfile.TemporaryDirectory() as tmp:
        monkeypatch.setattr(pipeline, "ChunkReader", FaultyReader)
        out = Path(tmp) / "out"
        match = "simulated unreadable band" if kind == "input" else r"\[Errno 5\] simulated I/O error"
        exc, elapsed = run_with_fault(tile, out, expect=type(error), match=match)
        if kind == "os":  # not a user error: the original object, its traceback intact, the thread noted
            assert exc is error and "raised in the s2seg reader thread" in exc.__notes__
        assert assert_clean_stop(out, elapsed) <= at


# ------------------------------------------------------------------ inference thread
@FAST
@given(at=st.integers(0, N_BATCHES - 1))
def test_model_fault_at_a_random_batch(tile, expected, at):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        model = PatchModel(fail_on_call=at + 1)
        exc, elapsed = run_with_fault(tile, out, model, ModelError, r"model 'patch-test' failed on chunk \d+: RuntimeError: simulated fault in the model")
        assert assert_clean_stop(out, elapsed) < N_CHUNKS


# ------------------------------------------------------------------ writer thread
@FAST
@given(at=st.integers(0, N_CHUNKS - 1), where=st.sampled_from(["write", "flush", "journal"]))
def test_writer_fault_at_a_random_chunk(tile, at, where):
    calls = []
    monkeypatch = pytest.MonkeyPatch()  # undone at the end of each example, not of the test

    def fault_on(name, original):
        def faulty(self, *args, **kwargs):
            calls.append(name)
            if calls.count(name) == at + 1:
                raise OSError(errno.ENOSPC, "No space left on device") if name != "write" else RuntimeError("simulated writer fault")
            return original(self, *args, **kwargs)
        return faulty

    if where == "write":  # first write of the chunk (class product)
        original = ProductWriter.write
        monkeypatch.setattr(ProductWriter, "write", lambda self, key, *a: (
            fault_on("write", original)(self, key, *a) if key == "class" else original(self, key, *a)))
        expect, match, thread = RuntimeError, "simulated writer fault", "writer"
    elif where == "flush":
        monkeypatch.setattr(ProductWriter, "flush", fault_on("flush", ProductWriter.flush))
        expect, match, thread = OSError, r"\[Errno 28\] No space left on device", "writer"
    else:
        monkeypatch.setattr(Journal, "record", fault_on("journal", Journal.record))
        expect, match, thread = OSError, r"\[Errno 28\] No space left on device", "journal"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            exc, elapsed = run_with_fault(tile, out, expect=expect, match=match)
            assert f"raised in the s2seg {thread} thread" in exc.__notes__
            assert assert_clean_stop(out, elapsed) <= at
    finally:
        monkeypatch.undo()


def test_progress_callback_raising_stops_the_run(tile, tmp_path):
    def progress(fraction, message):
        if "chunk 3/" in message and "written" in message:
            raise ValueError("the progress bar broke")

    t0 = time.monotonic()
    with pytest.raises(ValueError, match="the progress bar broke") as info:
        segment(tile, tmp_path / "out", model=PatchModel(), config=CONFIG, progress=progress)
    assert "raised in the s2seg writer thread" in info.value.__notes__
    assert_clean_stop(tmp_path / "out", time.monotonic() - t0)


def test_after_a_writer_fault_the_journaled_chunks_resume_to_identical_products(tile, expected, tmp_path, monkeypatch):
    original = ProductWriter.write
    seen = []

    def write(self, key, array, row0, col0):
        if key == "class":
            seen.append((row0, col0))
            if len(seen) == 6:
                raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, key, array, row0, col0)

    monkeypatch.setattr(ProductWriter, "write", write)
    out = tmp_path / "out"
    exc, elapsed = run_with_fault(tile, out, expect=OSError, match="No space left on device")
    assert any("5 of 9 chunk(s) are saved in" in note for note in exc.__notes__)
    journaled = assert_clean_stop(out, elapsed)
    assert journaled == 5
    monkeypatch.setattr(ProductWriter, "write", original)
    result = segment(tile, out, model=PatchModel(), config=CONFIG)
    assert result.resumed_chunks == 5
    for key, array in expected.items():
        assert np.array_equal(_read(result.products[key]), array, equal_nan=True), key


def test_cancel_from_another_thread_while_the_queues_are_full(tile, tmp_path):
    """A slow writer fills both queues; a cancel from another thread (QGIS's feedback) still ends the run quickly."""
    cancel = threading.Event()
    original = ProductWriter.flush

    def slow_flush(self, *args, **kwargs):
        time.sleep(0.2)
        return original(self, *args, **kwargs)

    timer = threading.Timer(0.5, cancel.set)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ProductWriter, "flush", slow_flush)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(pipeline.Cancelled, match="cancelled after"):
            segment(tile, tmp_path / "out", model=PatchModel(), config=CONFIG, cancel=cancel)
        elapsed = time.monotonic() - t0
    timer.join()
    assert_clean_stop(tmp_path / "out", elapsed)


def test_a_programming_error_in_a_thread_propagates_as_itself_with_its_traceback(tile, tmp_path, monkeypatch):
    """A bug is not a user error: the CLI must be able to print where it happened."""
    def buggy_write(self, key, array, row0, col0):
        return len(None)

    monkeypatch.setattr(ProductWriter, "write", buggy_write)
    with pytest.raises(TypeError, match="NoneType") as info:
        segment(tile, tmp_path / "out", model=PatchModel(), config=CONFIG)
    assert "raised in the s2seg writer thread" in info.value.__notes__
    assert info.traceback[-1].name == "buggy_write"  # the original traceback, down to the failing line
    assert_clean_stop(tmp_path / "out", 0)
