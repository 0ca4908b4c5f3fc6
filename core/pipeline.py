"""The streaming engine: reader → inference → blend/write threads joined by bounded queues.

Memory stays O(chunk): every queue holds at most ``config.queue_size`` chunks.
Any thread's exception stops the others and is raised in the caller with its
context; the cancel event is checked at least once per batch; progress goes to
a plain ``(fraction, message)`` callback that the CLI and QGIS forward.

Resume (DESIGN §7): after each chunk (see :func:`.grid.journal_points`) the writer
flushes the ``.part`` products to the OS, and a fourth thread makes them durable
(``fsync``) and then appends the chunk to a journal (:mod:`.journal`): the disk
writes overlap the next chunk's work instead of stalling the writer. A run that is
cancelled, killed, or stopped by an error once at least one chunk is journaled
leaves the ``.part`` files and the journal; the next run with the same tile,
model and pixel-changing settings (``EngineConfig.resume``, default ``auto``)
reopens them and reads, computes and writes only the remaining chunks. Journaled
chunks are never touched again, so whatever stopped the run — a model error, a
corrupt band, a full disk — cannot spoil them; that is why the partial state is
kept after errors too (``--no-resume`` discards it).
"""
from __future__ import annotations

import contextlib
import json
import math
import platform
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import __version__
from .blend import DenseCanvas, blend_patch_level, blend_patch_level_confidence
from .config import EngineConfig
from .errors import Cancelled, ModelError, OutputError, S2SegError
from .feed import Normaliser, PatchFeed, patches_with_data
from .grid import Chunk, GridPlan, block_size, choose_chunk_size, chunk_unit, journal_points, model_chunk, plan
from .journal import (Journal, JournalMismatch, differences, digest, journal_path, lock, read_journal, release,
                      run_fields, unlock)
from .memory import cache_budget, gdal_cache_limit, release_freed_memory, user_cache_setting
from .models import DEFAULT_MODEL, ModelCard, load_model, pick_device, resolve_card
from .models.base import SegmentationModel, check_output, check_shape, error_summary, non_finite, non_finite_error
from .preview import PreviewBuilder, preview_name
from .reader import ChunkPixels, ChunkReader, input_cache_bytes
from .resample import to_10m
from .sentinel2 import BandSet, discover
from .uncertainty import LOW_GAP, Confidence, confidence
from .writer import FLOAT_PRODUCTS, PARTIAL_SUFFIX, ProductWriter, check_output_folder, partial_path, product_paths, release_frames

ProgressCallback = Callable[[float, str], None]
LogCallback = Callable[[str], None]
#: How to get past a resume that is required but impossible, for the CLI and the QGIS dialog alike.
START_OVER = "to start over, run without --resume (resume mode auto or never)"
STRIP_ROWS = 512  # rows blended at once: bounds the (C, rows, width) probability buffer
_END = object()


@dataclass
class _Inferred:
    """One chunk's model outputs, as the inference thread hands them to the writer."""

    #: blended probabilities (C, h, w) of a dense model, or the (ny, nx, C) patch grid of a patch-level one
    grid: torch.Tensor
    #: asynchronous devices: 0-dim bool, did any batch hold NaN or Inf (read by the writer); None: checked per batch
    non_finite: torch.Tensor | None
    #: CUDA: recorded after the chunk's last kernel
    ready: Any = None


@dataclass
class ClassStat:
    """Area and confidence summary of one class over the valid pixels of the tile."""

    index: int
    name: str
    colour: str
    pixels: int
    area_km2: float
    share: float
    mean_maxprob: float
    low_gap_share: float


@dataclass
class SegmentResult:
    """What :func:`segment` produced, and how."""

    tile_name: str
    output_dir: Path
    products: dict[str, Path]
    preview: Path
    report: Path
    device: str
    model_name: str
    card: ModelCard
    chunk_size: int
    n_chunks: int
    seconds: float
    timings: dict[str, float]
    valid_pixels: int
    pixel_area_m2: float
    class_stats: list[ClassStat] = field(default_factory=list)
    #: chunks taken from an interrupted run's journal instead of being computed again
    resumed_chunks: int = 0
    #: patches per forward pass at the end of the run: smaller than the initial batch size
    #: when the device ran out of memory (the batch is halved and retried)
    batch_size_final: int = 0


def segment(
    tile: str | Path,
    output_dir: str | Path,
    model: str | Path | ModelCard | SegmentationModel = DEFAULT_MODEL,
    config: EngineConfig | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    log: LogCallback | None = None,
) -> SegmentResult:
    """Segment one Sentinel-2 tile into ``output_dir``; see DESIGN §2–§7.

    ``model`` is a model name, card file, model folder/file, a :class:`ModelCard`,
    or an already loaded :class:`SegmentationModel` (then its device is used).
    Raises :class:`S2SegError` subclasses naming the bad file or parameter, and
    :class:`Cancelled` when ``cancel`` is set; no finished-looking output is left
    behind in either case.
    """
    started = time.perf_counter()
    config = config or EngineConfig()
    log = log or (lambda message: None)
    cancel = cancel or threading.Event()
    output_dir = Path(output_dir).expanduser()

    bandset = discover(tile)
    preloaded = model if isinstance(model, SegmentationModel) else None
    card = preloaded.card if preloaded is not None else resolve_card(model)
    bandset.require(card.bands, card.name)
    if bandset.level and bandset.level not in card.levels:
        log(f"warning: model {card.name!r} was trained on {'/'.join(card.levels)} data but {bandset.source.name} is {bandset.level}; results may be poor")
    device = preloaded.device if preloaded is not None else pick_device(config.device)
    if config.half and device.type != "cuda":
        log(f"warning: half precision (--half) runs on CUDA only; ignored on {device.type}, running in float32")
    chunk_size = _chunk_size(config, card, bandset, device, log)
    grid = plan(bandset.height, bandset.width, card.patch_size, chunk_size, card.pixel_factor)
    batch_size = config.batch_size or EngineConfig.default_batch_size(device.type, card.patch_size)
    cache = _cache_budget(bandset, card, grid, config.write_probs)
    paths = product_paths(output_dir, bandset.name, config.write_probs)
    preview_path = output_dir / preview_name(bandset.name)
    report_path = output_dir / f"{bandset.name}_report.json"
    check_output_folder(output_dir, {**paths, "preview": preview_path, "report": report_path}, config.overwrite)

    block = block_size(grid.chunk_size)
    if grid.chunk_size % block and len(grid.chunks) > 1:
        rows = math.lcm(block, grid.chunk_size) // grid.chunk_size
        log(f"note: output blocks ({block} px) straddle chunks of {grid.chunk_size} px, so finished chunks are saved "
            f"for resume every {rows} chunk row(s) only; a chunk size that is a multiple of "
            f"{math.lcm(chunk_unit(card.footprint), 16)} px avoids this")
    fields = run_fields(bandset, card, chunk_size=grid.chunk_size, write_probs=config.write_probs,
                        compress=config.compress, block=block)
    key = digest(fields)
    jpath = journal_path(output_dir, bandset.name)
    lock_fd = lock(jpath)  # held until the journal is deleted or closed: one run per tile and folder
    try:
        done = _resumable(jpath, key, fields, grid, card, config.resume, log)
        loaded = preloaded or load_model(card, device)  # before touching any partial file
        run = _Run(bandset, card, loaded, grid, config, batch_size, output_dir, progress, cancel, log)
        writer, done = _open_outputs(run, paths, block, done, config.resume, log)
        try:
            journal = Journal.start(jpath, key, len(grid.chunks), fields, keep=done.items(), lock_fd=lock_fd)
        except BaseException:
            if done:
                writer.close()  # the old journal is intact (replaced atomically): still resumable
            else:
                writer.abort()
            raise
    except BaseException:
        if jpath.exists():
            unlock(lock_fd)  # the journal of an interrupted run stays, with its lock file
        else:
            release(jpath, lock_fd)
        raise
    log(f"model {card.name} ({card.format}, {card.output_kind}-level, {card.num_classes} classes, {card.resolution} m) on {device}; "
        f"tile {bandset.name} {bandset.width} × {bandset.height} px, {len(grid.chunks)} chunk(s) of {grid.chunk_size} px, batch {batch_size}")
    with gdal_cache_limit(cache) as limit:
        log(f"GDAL block cache: {limit / 2**20:.0f} MB for this run" if limit is not None
            else f"GDAL block cache: GDAL_CACHEMAX={user_cache_setting()} as set by the user")
        stats = run.execute(writer, journal, done)
    if run.batch_size != batch_size:
        log(f"finished with a batch of {run.batch_size} patches (started with {batch_size}): the device ran out of memory")

    pixel_area = abs(bandset.transform.a * bandset.transform.e)
    class_stats = _class_stats(card, stats, pixel_area)
    valid_pixels = int(stats["count"].sum())
    try:
        run.preview.save(preview_path, card.class_names, card.class_colours, [s.share for s in class_stats])
    except OSError as exc:
        raise _os_output_error(preview_path, exc) from None
    seconds = time.perf_counter() - started
    result = SegmentResult(
        tile_name=bandset.name, output_dir=output_dir, products=run.products, preview=preview_path, report=report_path,
        device=str(device), model_name=card.name, card=card, chunk_size=grid.chunk_size, n_chunks=len(grid.chunks),
        seconds=seconds, timings={**run.busy, "total": seconds}, valid_pixels=valid_pixels, pixel_area_m2=pixel_area,
        class_stats=class_stats, resumed_chunks=len(done), batch_size_final=run.batch_size,
    )
    try:
        _write_report(result, bandset, config, batch_size)
    except OSError as exc:
        raise _os_output_error(report_path, exc) from None
    return result


def _cache_budget(bandset: BandSet, card: ModelCard, grid: GridPlan, write_probs: bool) -> int:
    """GDAL cache for the run (:mod:`.memory`): the reader's input blocks, and one chunk of products
    (dirty blocks between two flushes)."""
    rows = max(c.input_rows[1] - c.input_rows[0] for c in grid.chunks)
    cols = max(c.input_cols[1] - c.input_cols[0] for c in grid.chunks)
    bytes_per_pixel = 1 + 4 * len(FLOAT_PRODUCTS) + (4 * card.num_classes if write_probs else 0)
    return cache_budget(input_cache_bytes(bandset, card.bands, card.name, rows, cols),
                        grid.chunk_size**2 * bytes_per_pixel)


def _chunk_size(config: EngineConfig, card: ModelCard, bandset: BandSet, device: torch.device, log: LogCallback) -> int:
    """The chunk size to plan with: automatic, or the user's; one at least as large as the tile
    (even when it is not a multiple of the chunk unit) processes the tile as one chunk."""
    if not config.chunk_size:
        return _auto_chunk_size(card, bandset, device)
    unit = chunk_unit(card.footprint)
    extent = max(bandset.height, bandset.width)
    whole = math.ceil(extent / unit) * unit
    if config.chunk_size >= extent and config.chunk_size != whole:
        log(f"chunk size {config.chunk_size} is at least the tile size ({bandset.width} × {bandset.height} px): "
            f"processing the tile as one chunk of {whole} px")
        return whole
    return config.chunk_size


def _resumable(jpath: Path, key: str, fields: dict[str, Any], grid: GridPlan, card: ModelCard, mode: str,
               log: LogCallback) -> dict[int, np.ndarray]:
    """Chunks (index → statistics) an earlier run of the same tile, model and settings journaled.

    Never returns the chunks of a journal that does not match: ``auto`` logs why and
    starts over, ``require`` raises, ``never`` ignores any journal.
    """
    def nothing(reason: str) -> dict[int, np.ndarray]:
        if mode == "require":
            raise OutputError(f"cannot resume in {jpath.parent}: {reason}; {START_OVER}")
        return {}

    if mode == "never":
        if jpath.exists():
            log(f"discarding the partial results of an earlier run ({jpath.name}): resume is off")
        return {}
    if not jpath.exists():
        return nothing(f"there is no journal {jpath.name} of an interrupted run")
    try:
        state = read_journal(jpath)
        if state.key != key:
            changed = differences(state.fields, fields)
            raise JournalMismatch(f"{jpath.name} was written for another tile, model or settings"
                                  + (f" ({'; '.join(changed)})" if changed else ""))
        if state.n_chunks != len(grid.chunks):
            raise JournalMismatch(f"{jpath.name} counts {state.n_chunks} chunks, this run {len(grid.chunks)}")
        bad = [i for i, stats in state.done.items() if stats.shape != (3, card.num_classes)]
        if bad:
            raise JournalMismatch(f"{jpath.name}: statistics of chunk {bad[0]} do not fit {card.num_classes} classes")
        if state.done and (sorted(state.done) != list(range(len(state.done)))
                           or len(state.done) - 1 not in journal_points(grid, block_size(grid.chunk_size))):
            raise JournalMismatch(f"{jpath.name} lists chunks that this run could not have journaled")
    except JournalMismatch as exc:
        if mode == "require":
            raise OutputError(f"cannot resume in {jpath.parent}: {exc}; {START_OVER}") from None
        log(f"not resuming: {exc}; starting over")
        return {}
    if not state.done:
        return nothing(f"the journal {jpath.name} holds no finished chunk")
    return state.done


def _open_outputs(run: "_Run", paths: dict[str, Path], block: int, done: dict[int, np.ndarray], mode: str,
                  log: LogCallback) -> tuple[ProductWriter, dict[int, np.ndarray]]:
    """Reopen the partial products of ``done`` chunks (rebuilding their preview), else create them afresh."""
    bandset, card, config = run.bandset, run.card, run.config
    kwargs = dict(width=bandset.width, height=bandset.height, crs=bandset.crs, transform=bandset.transform,
                  class_names=card.class_names, class_colours=card.class_colours, write_probs=config.write_probs,
                  compress=config.compress, block=block)
    if done:
        writer = None
        try:
            writer = ProductWriter(run.output_dir, bandset.name, resume=True, **kwargs)
            run.restore(writer, done)
            log(f"resuming: {len(done)} of {len(run.grid.chunks)} chunk(s) already written by an interrupted run")
            return writer, done
        except OutputError as exc:
            if writer is not None:
                writer.close()
            if mode == "require":
                raise OutputError(f"cannot resume in {run.output_dir}: {exc}; {START_OVER}") from None
            log(f"not resuming: {exc}; starting over")
            run.reset()
    for path in paths.values():  # stale partial files of another run
        for suffix in ("", ".aux.xml"):
            Path(str(partial_path(path)) + suffix).unlink(missing_ok=True)
    return ProductWriter(run.output_dir, bandset.name, **kwargs), {}


def _auto_chunk_size(card: ModelCard, bandset: BandSet, device: torch.device) -> int:
    """The preferred chunk size, reduced for dense models so their per-chunk outputs fit the budget."""
    f = card.pixel_factor
    # A coarser model computes one more patch beyond each side of a chunk (grid.model_chunk):
    # larger chunks keep that share small; the 10 m reads of one band at a time bound the memory.
    preferred = EngineConfig.PREFERRED_CHUNK_SIZE * (1 if f == 1 else EngineConfig.COARSE_CHUNK_SCALE)
    if card.output_kind == "dense":
        # A dense chunk is a (C, chunk², float32) canvas on the model grid, and up to four are alive
        # at once (being inferred, two queued, being written): the budget bounds those four together.
        per_pixel = 4 * card.num_classes * 4 / f**2
        preferred = min(preferred, int(math.sqrt(EngineConfig.DENSE_OUTPUT_BUDGET_BYTES / per_pixel)))
    return choose_chunk_size(preferred, card.footprint, bandset.height, bandset.width)


class _Failure:
    """The first exception raised by any stage, and the event that stops them all."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.stage = ""
        self._lock = threading.Lock()

    def record(self, stage: str, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error, self.stage = error, stage
        self.stop.set()


class _Stopped(Exception):
    """Raised inside a stage when another stage failed or the run was cancelled."""


class _Run:
    """One execution of the three-stage pipeline over a planned grid."""

    def __init__(self, bandset: BandSet, card: ModelCard, model: SegmentationModel, grid: GridPlan, config: EngineConfig,
                 batch_size: int, output_dir: Path, progress: ProgressCallback | None, cancel: threading.Event, log: LogCallback):
        self.bandset, self.card, self.model, self.grid, self.config = bandset, card, model, grid, config
        self.batch_size = batch_size  # halved on out-of-memory, for the rest of the run
        #: autocast to float16 around the model (torch models; ONNX Runtime ignores it)
        self.half = config.half and model.device.type == "cuda"
        self.output_dir = output_dir
        self.cancel = cancel
        self.log = log
        self.failure = _Failure()
        self.busy = {"read": 0.0, "inference": 0.0, "write": 0.0, "flush": 0.0, "sync": 0.0}
        self.products: dict[str, Path] = {}
        self._progress = progress
        self._progress_lock = threading.Lock()
        self.normaliser = Normaliser(card, bandset, model.device)
        #: the device runs asynchronously: keep the host from waiting on it between batches
        self.asynchronous = _asynchronous(model.device)
        #: CUDA: the writer's kernels run on their own stream, so that reading a chunk's products
        #: back waits for that chunk only, not for the batches queued after it
        self.write_stream = torch.cuda.Stream(model.device) if model.device.type == "cuda" else None
        self.block = block_size(grid.chunk_size)
        #: chunks after which the written chunks can be journaled (all of them when blocks never straddle chunks)
        self.journal_points = journal_points(grid, self.block)
        self.reset()

    def reset(self) -> None:
        """Forget any resumed chunk: empty preview and statistics."""
        self.preview = PreviewBuilder(self.bandset.width, self.bandset.height, self.config.preview_size)
        #: chunk index → (3, C) float64 [pixel count, Σ maxprob, low-gap count] per class, for journaled chunks only
        self.chunk_stats: dict[int, np.ndarray] = {}
        self._chunks_done = 0
        self._position: dict[int, int] = {}

    def restore(self, writer: ProductWriter, done: dict[int, np.ndarray]) -> None:
        """Take over the journaled chunks of an interrupted run: their statistics, and their
        preview pixels read back from the partial class raster (uint8, cheap)."""
        for index in sorted(done):
            chunk = self.grid.chunks[index]
            classes = writer.read("class", chunk.row0, chunk.col0, chunk.height, chunk.width)
            self.preview.add(classes, chunk.row0, chunk.col0)
            self.chunk_stats[index] = done[index]
        self._chunks_done = len(done)

    # --- orchestration --------------------------------------------------------------
    def execute(self, writer: ProductWriter, journal: Journal, done: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        todo = [chunk for chunk in self.grid.chunks if chunk.index not in done]
        self._position = {chunk.index: len(done) + i for i, chunk in enumerate(todo)}
        read_q: queue.Queue = queue.Queue(self.config.queue_size)
        infer_q: queue.Queue = queue.Queue(self.config.queue_size)
        sync_q: queue.Queue = queue.Queue()  # lists of chunk statistics: tiny
        stages = [
            threading.Thread(target=self._stage, args=("reader", self._read_stage, todo, read_q), name="s2seg-reader", daemon=True),
            threading.Thread(target=self._stage, args=("inference", self._infer_stage, read_q, infer_q), name="s2seg-inference", daemon=True),
            threading.Thread(target=self._stage, args=("writer", self._write_stage, infer_q, writer, sync_q), name="s2seg-writer", daemon=True),
            threading.Thread(target=self._stage, args=("journal", self._journal_stage, sync_q, writer, journal), name="s2seg-journal", daemon=True),
        ]
        for thread in stages:
            thread.start()
        try:
            while any(t.is_alive() for t in stages):
                for thread in stages:
                    thread.join(timeout=0.1)
                if self.cancel.is_set():
                    self.failure.stop.set()
        except KeyboardInterrupt:
            self.cancel.set()
            self.failure.stop.set()
            for thread in stages:
                thread.join()
        if self.failure.error is not None or self.cancel.is_set():
            release_frames(self.failure.error)  # a stage's frames may still reference an open dataset
            note = self._stop(writer, journal)
            if self.failure.error is not None and not isinstance(self.failure.error, _Stopped):
                raise _with_note(_surface(self.failure.stage, self.failure.error), note)
            raise Cancelled(f"cancelled after {self._chunks_done} of {len(self.grid.chunks)} chunk(s){note}")
        self._report(0.97, "building overviews")
        try:
            self.products = writer.commit()
        except BaseException:
            journal.delete()  # commit deleted the partial products
            raise
        journal.delete()
        self._report(1.0, "done")
        total = np.zeros((3, self.card.num_classes), dtype=np.float64)
        for index in sorted(self.chunk_stats):  # chunk order: a resumed run sums exactly like an uninterrupted one
            total += self.chunk_stats[index]
        return {"count": total[0], "maxprob": total[1], "low_gap": total[2]}

    def _stop(self, writer: ProductWriter, journal: Journal) -> str:
        """After an error or a cancel: keep the partial products and the journal when at least one
        chunk is journaled (it is on disk and is never written again), else delete everything."""
        kept = len(self.chunk_stats)
        if kept:
            writer.close()  # errors here concern chunks that are not journaled
            journal.close()
            note = (f"; {kept} of {len(self.grid.chunks)} chunk(s) are saved in {self.output_dir} "
                    f"(*{PARTIAL_SUFFIX}, {journal.path.name}): run again with the same settings to resume")
        else:
            writer.abort()
            journal.delete()
            note = "; partial outputs were removed"
        self.log(note[2:])
        return note

    def _stage(self, name: str, body: Callable[..., None], *args: Any) -> None:
        try:
            body(*args)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the caller
            self.failure.record(name, exc)

    def _check(self) -> None:
        if self.failure.stop.is_set() or self.cancel.is_set():
            raise _Stopped

    def _put(self, q: queue.Queue, item: Any) -> None:
        while True:
            self._check()
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue) -> Any:
        while True:
            self._check()
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue

    def _report(self, fraction: float, message: str) -> None:
        if self._progress is not None:
            with self._progress_lock:
                self._progress(min(max(fraction, 0.0), 1.0), message)

    # --- stages -----------------------------------------------------------------------
    def _read_stage(self, todo: list[Chunk], out_q: queue.Queue) -> None:
        with ChunkReader(self.bandset, self.card.bands, self.card.name, self.card.resampling, self.config.read_threads,
                         self.card.pixel_factor) as reader:
            for chunk in todo:  # journaled chunks are not even read
                self._check()
                t0 = time.perf_counter()
                pixels = reader.read(chunk.input_rows, chunk.input_cols)
                self.busy["read"] += time.perf_counter() - t0
                self._put(out_q, (chunk, pixels))
                del pixels  # see _infer_stage
        self._put(out_q, _END)

    def _infer_stage(self, in_q: queue.Queue, out_q: queue.Queue) -> None:
        n_chunks = len(self.grid.chunks)
        while (item := self._get(in_q)) is not _END:
            chunk, pixels = item
            t0 = time.perf_counter()
            inferred = self._infer_chunk(chunk, pixels, n_chunks)
            self.busy["inference"] += time.perf_counter() - t0
            valid = pixels.output_valid
            # The chunk's band values are done with: hold no reference to them (nor, below, to what
            # was passed on) while waiting for the queues, or every stage holds one chunk more.
            del item, pixels
            self._put(out_q, (chunk, valid, inferred))
            del inferred, valid
        self._put(out_q, _END)

    def _infer_chunk(self, chunk: Chunk, pixels: ChunkPixels, n_chunks: int) -> "_Inferred | None":
        p, s = self.card.patch_size, self.card.stride
        ny, nx = chunk.n_patches_y, chunk.n_patches_x
        todo = np.argwhere(patches_with_data(pixels.valid, ny, nx, s))  # nodata-only patches cost nothing
        if len(todo) == 0:
            return None
        device = self.model.device
        feed = PatchFeed(pixels.data, todo, p, s, self.normaliser, device, resident=self.asynchronous)
        # On an asynchronous device the outputs' NaN/Inf test is read by the writer, once per chunk.
        bad = torch.zeros((), dtype=torch.bool, device=device) if self.asynchronous else None
        # Dense outputs are blended as batches arrive (a canvas 4× smaller than the patch grid);
        # patch-level outputs are tiny and blended by the writer.
        window = model_chunk(chunk, self.card.pixel_factor)
        canvas = DenseCanvas(window, p, self.card.num_classes, device) if self.card.output_kind == "dense" else None
        grid = torch.zeros((ny, nx, self.card.num_classes), dtype=torch.float32, device=device) if canvas is None else None
        start, b = 0, 0  # first patch of the next batch, batches done
        while start < feed.count:
            self._check()
            stop = min(start + self.batch_size, feed.count)
            out = self._predict(chunk, feed, start, stop)
            if out is None:  # out of memory: the same patches again, in a batch half as large
                continue
            if bad is None:
                out = check_output(out, self.card, stop - start)
            else:
                check_shape(out, self.card, stop - start)
                bad |= non_finite(out)
                out = out.float()
            ky, kx = feed.indices(start, stop)
            if canvas is not None:
                canvas.add(ky, kx, out)
            else:
                grid[ky, kx] = out
            start, b = stop, b + 1
            n_batches = b + math.ceil((feed.count - start) / self.batch_size)
            self._report((self._position[chunk.index] + start / feed.count * 0.9) / n_chunks * 0.95,
                         f"chunk {chunk.index + 1}/{n_chunks}: batch {b}/{n_batches}")
        ready = None
        if self.write_stream is not None:
            ready = torch.cuda.Event()
            ready.record()
        return _Inferred(canvas.result() if canvas is not None else grid, bad, ready)

    def _predict(self, chunk: Chunk, feed: PatchFeed, start: int, stop: int) -> torch.Tensor | None:
        """The model's output for patches ``start:stop`` of ``feed``, or None after halving
        ``self.batch_size`` because the device ran out of memory (the caller retries the same patches)."""
        device = self.model.device
        batch = None
        try:
            batch = feed.batch(start, stop)
            precision = torch.autocast("cuda", dtype=torch.float16) if self.half else contextlib.nullcontext()
            with torch.inference_mode(), precision:
                return self.model.predict(batch)
        except S2SegError:
            raise
        except Exception as exc:
            if not _out_of_memory(exc, device):
                raise ModelError(f"model {self.card.name!r} failed on chunk {chunk.index + 1}: {type(exc).__name__}: {exc}") from exc
            message = error_summary(exc)
        # Outside the except block: the exception (and the frames holding the batch) is released.
        del batch
        _empty_cache(device)
        if self.batch_size == 1:
            raise ModelError(f"model {self.card.name!r} ran out of memory on {device} (chunk {chunk.index + 1}) even with "
                             f"a batch of 1 patch: {message}; free the device's memory or use --device cpu")
        smaller = self.batch_size // 2
        self.log(f"out of memory on {device} with a batch of {self.batch_size} patches: retrying with {smaller} "
                 f"(kept for the rest of the run)")
        self.batch_size = smaller
        return None

    def _write_stage(self, in_q: queue.Queue, writer: ProductWriter, sync_q: queue.Queue) -> None:
        try:
            self._write_chunks(in_q, writer, sync_q)
        finally:
            sync_q.put(_END)  # after the last flushed chunk, whatever happened

    def _journal_stage(self, sync_q: queue.Queue, writer: ProductWriter, journal: Journal) -> None:
        """Make flushed chunks durable, then journal them, in order. Deliberately not stopped by a
        failure or cancel elsewhere: every chunk already flushed is still journaled (the run stops
        once this thread has drained its queue), so a resume redoes as little as possible."""
        while (pending := sync_q.get()) is not _END:
            t0 = time.perf_counter()
            writer.sync()
            journal.record(pending)
            self.chunk_stats.update(pending)
            self.busy["sync"] += time.perf_counter() - t0

    def _write_chunks(self, in_q: queue.Queue, writer: ProductWriter, sync_q: queue.Queue) -> None:
        n_chunks = len(self.grid.chunks)
        pending: list[tuple[int, np.ndarray]] = []  # written, not yet journaled
        while (item := self._get(in_q)) is not _END:
            chunk, valid_region, inferred = item
            t0 = time.perf_counter()
            # The input region starts (1 + margin) strides above/left of the output window.
            top, left = chunk.row0 - chunk.input_rows[0], chunk.col0 - chunk.input_cols[0]
            valid = valid_region[top: top + chunk.height, left: left + chunk.width]
            if inferred is None:
                stats = self._write_nodata(writer, chunk)
            else:
                with self._writing_stream():
                    stats = self._write_products(writer, chunk, valid, self._receive(inferred))
            pending.append((chunk.index, stats))
            if chunk.index in self.journal_points:
                # In the files first (synced and journaled by the journal thread): a journaled chunk is
                # complete on disk whatever happens next.
                t1 = time.perf_counter()
                writer.flush([(c.row0, c.col0, c.height, c.width) for c in (self.grid.chunks[i] for i, _ in pending)],
                             sync=False)
                sync_q.put(pending)
                pending = []
                self.busy["flush"] += time.perf_counter() - t1
            del item, inferred, valid_region, valid  # see _infer_stage
            # Once per chunk (the writer finishes it last): trimming in every stage measured no lower.
            release_freed_memory()  # the chunk's buffers, freed on the heap, go back to the OS (memory.py)
            self.busy["write"] += time.perf_counter() - t0
            self._chunks_done += 1
            self._report(self._chunks_done / n_chunks * 0.95, f"chunk {self._chunks_done}/{n_chunks} written")

    def _write_products(self, writer: ProductWriter, chunk: Chunk, valid: np.ndarray, grid: torch.Tensor) -> np.ndarray:
        """Blend, summarise and write one chunk strip by strip; its (3, C) statistics."""
        f = self.card.pixel_factor
        acc = torch.zeros((3, self.card.num_classes), dtype=torch.float64, device=grid.device)
        # Dense chunks arrive blended, (C, h, w); patch-level ones as the (ny, nx, C) grid.
        dense = grid if self.card.output_kind == "dense" else None
        window = model_chunk(chunk, f)
        if f > 1 and dense is None:  # the model's grid is small: blend it whole
            dense = blend_patch_level(grid, window, self.card.patch_size)
        for r0 in range(chunk.row0, chunk.row1, STRIP_ROWS):
            self._check()
            r1 = min(r0 + STRIP_ROWS, chunk.row1)
            strip_valid = torch.from_numpy(valid[r0 - chunk.row0: r1 - chunk.row0]).to(grid.device)
            probs = None
            if f > 1:
                probs = to_10m(dense, window, f, (r0, r1), (chunk.col0, chunk.col1))
            elif dense is not None:
                probs = dense[:, r0 - chunk.row0: r1 - chunk.row0]
            elif self.config.write_probs:
                probs = blend_patch_level(grid, chunk, self.card.patch_size, rows=(r0, r1))
            if probs is None:  # patch-level, no probabilities to write: blend and confidence in one pass
                conf = blend_patch_level_confidence(grid, chunk, self.card.patch_size, strip_valid, rows=(r0, r1))
            else:
                conf = confidence(probs, strip_valid)
            self._write_strip(writer, conf, probs, strip_valid, r0, chunk.col0, acc)
        return acc.cpu().numpy()

    def _writing_stream(self) -> contextlib.AbstractContextManager:
        """Where the writer's device work runs: its own CUDA stream, else the default."""
        return torch.cuda.stream(self.write_stream) if self.write_stream is not None else contextlib.nullcontext()

    def _receive(self, inferred: "_Inferred") -> torch.Tensor:
        """A chunk's outputs, once the device has computed them; raises when the model produced NaN or Inf."""
        if inferred.ready is not None:  # on the writer's stream: wait for the chunk's last kernel, on the device
            self.write_stream.wait_event(inferred.ready)
            for tensor in (inferred.grid, inferred.non_finite):
                tensor.record_stream(self.write_stream)  # not reused by the allocator before the writer is done
        if inferred.non_finite is not None and bool(inferred.non_finite):
            raise non_finite_error(self.card)
        return inferred.grid

    def _write_strip(self, writer: ProductWriter, conf: Confidence, probs: torch.Tensor | None, valid: torch.Tensor,
                     row0: int, col0: int, acc: torch.Tensor) -> None:
        """Write the products of one strip (``probs`` only with ``write_probs``) and add up its statistics."""
        classes = conf.classes.cpu().numpy()
        writer.write("class", classes, row0, col0)
        writer.write("maxprob", conf.maxprob.cpu().numpy(), row0, col0)
        writer.write("entropy", conf.entropy.cpu().numpy(), row0, col0)
        writer.write("gap", conf.gap.cpu().numpy(), row0, col0)
        if self.config.write_probs:
            nan = torch.tensor(float("nan"), device=probs.device)
            writer.write("probs", torch.where(valid, probs, nan).cpu().numpy(), row0, col0)
        self.preview.add(classes, row0, col0)
        c = self.card.num_classes
        cls = conf.classes[valid].long()
        acc[0] += torch.bincount(cls, minlength=c).double()
        acc[1] += torch.bincount(cls, weights=conf.maxprob[valid].double(), minlength=c)
        acc[2] += torch.bincount(cls[conf.gap[valid] < LOW_GAP], minlength=c).double()

    def _write_nodata(self, writer: ProductWriter, chunk: Chunk) -> np.ndarray:
        h, w = chunk.height, chunk.width
        classes = np.full((h, w), 255, dtype=np.uint8)
        nan = np.full((h, w), np.nan, dtype=np.float32)
        writer.write("class", classes, chunk.row0, chunk.col0)
        for key in ("maxprob", "entropy", "gap"):
            writer.write(key, nan, chunk.row0, chunk.col0)
        if self.config.write_probs:
            writer.write("probs", np.full((self.card.num_classes, h, w), np.nan, dtype=np.float32), chunk.row0, chunk.col0)
        self.preview.add(classes, chunk.row0, chunk.col0)
        return np.zeros((3, self.card.num_classes), dtype=np.float64)


def _asynchronous(device: torch.device) -> bool:
    """Does ``device`` run kernels asynchronously to the host (any accelerator)? Then patches are
    gathered on the device and nothing between two batches reads a result back."""
    return device.type != "cpu"


def _out_of_memory(error: BaseException, device: torch.device) -> bool:
    """Did the device run out of memory? torch's CUDA OOM error always; on an accelerator also
    a RuntimeError saying "out of memory" (cuDNN/cuBLAS, MPS). On the CPU a RuntimeError is a
    model failure whatever its message: halving the batch would only hide it."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return device.type != "cpu" and isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _empty_cache(device: torch.device) -> None:
    """Give the allocator's cached blocks back before retrying with a smaller batch."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps") and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def _with_note(error: S2SegError, note: str) -> S2SegError:
    """The same error with what happened to the partial outputs appended to its message."""
    try:
        noted = type(error)(f"{error}{note}")
    except Exception:  # noqa: BLE001 - an exception type with another constructor: keep it as is
        return error
    noted.__cause__ = error.__cause__ or error
    return noted


def _os_output_error(path: Path, exc: OSError) -> OutputError:
    from .writer import _output_error

    return _output_error(path, exc)


def _surface(stage: str, error: BaseException) -> S2SegError:
    if isinstance(error, S2SegError):
        return error
    wrapped = S2SegError(f"{stage} thread failed: {type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


def _class_stats(card: ModelCard, stats: dict[str, np.ndarray], pixel_area_m2: float) -> list[ClassStat]:
    total = float(stats["count"].sum())
    result = []
    for i, (name, colour) in enumerate(zip(card.class_names, card.class_colours)):
        n = float(stats["count"][i])
        result.append(ClassStat(
            index=i, name=name, colour=colour, pixels=int(n), area_km2=n * pixel_area_m2 / 1e6,
            share=n / total if total else 0.0,
            mean_maxprob=float(stats["maxprob"][i]) / n if n else float("nan"),
            low_gap_share=float(stats["low_gap"][i]) / n if n else float("nan"),
        ))
    return result


def _write_report(result: SegmentResult, bandset: BandSet, config: EngineConfig, batch_size: int) -> None:
    import rasterio
    from osgeo import gdal

    report = {
        "s2seg_version": __version__,
        "tile": {"name": bandset.name, "source": str(bandset.source), "level": bandset.level, "baseline": bandset.baseline,
                 "width": bandset.width, "height": bandset.height, "crs": bandset.crs.to_string(),
                 "offsets": bandset.offsets, "bands": {b: f.path for b, f in sorted(bandset.files.items())}},
        "model": result.card.to_dict(),
        "config": {**asdict(config), "chunk_size": result.chunk_size, "batch_size": batch_size},
        "device": result.device,
        "batch_size_final": result.batch_size_final,
        "n_chunks": result.n_chunks,
        "resumed_chunks": result.resumed_chunks,
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "valid_pixels": result.valid_pixels,
        "classes": [asdict(s) for s in result.class_stats if s.pixels],
        "products": {k: str(v) for k, v in result.products.items()} | {"preview": str(result.preview)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "rasterio": rasterio.__version__, "gdal": gdal.__version__},
    }
    tmp = result.report.with_name(result.report.name + ".part")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(result.report)
