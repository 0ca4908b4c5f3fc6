"""The streaming engine: reader → inference → write → journal threads joined by bounded queues.

Who does what: :mod:`.stages` runs threads, queues, cancel and errors; :mod:`.inferer` turns a
chunk's pixels into merged model outputs (:mod:`.merger`, one merger per output kind);
:mod:`.chunkwriter` writes a chunk's strips into the products (:mod:`.writer`); :mod:`.resume`
owns the lock, the journal and the keep-or-delete decision; :mod:`.report` sums up. This module
plans the run (:func:`segment`) and wires the stages (:class:`ChunkStages`).

Memory stays O(chunk): every queue holds at most ``config.queue_size`` chunks.
Any thread's exception stops the others and is raised in the caller; the cancel
event is checked at least once per batch and between the finishing steps; progress
goes to a plain ``(fraction, message)`` callback that the CLI and QGIS forward.

Resume (DESIGN §7): after each chunk (see :func:`.grid.journal_points`) the writer
flushes the ``.part`` products to the OS, and a fourth thread makes them durable
(``fsync``) and then appends the chunk to a journal (:mod:`.journal`): the disk
writes overlap the next chunk's work instead of stalling the writer. A run that is
cancelled, killed, or stopped by an error once at least one chunk is journaled
leaves the ``.part`` files and the journal — also when it stops after the last
chunk, while building overviews, renaming or writing the preview and report; the
next run with the same tile, model and pixel-changing settings (``EngineConfig.resume``,
default ``auto``) reopens them and reads, computes and writes only the remaining
chunks, or only finishes. Journaled chunks are never touched again, so whatever
stopped the run — a model error, a corrupt band, a full disk — cannot spoil them;
that is why the partial state is kept after errors too (resume mode ``never``
discards it).
"""
from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import aoi as aoi_
from . import mask as mask_
from .chunkwriter import STRIP_ROWS, ChunkWriter
from .config import EngineConfig
from .errors import Cancelled, OutputError, S2SegError
from .feed import Normaliser, patches_with_data
from .grid import (Chunk, GridPlan, block_size, choose_chunk_size, chunk_unit, journal_points, plan, plan_one_pass,
                   plan_window)
from .inferer import ChunkInferer, Inferred
from .inputs import discover_input
from .journal import run_fields
from .memory import cache_budget, gdal_cache_limit, release_freed_memory, user_cache_setting
from .models import DEFAULT_MODEL, ModelCard, load_model, pick_device, resolve_card
from .models.base import SegmentationModel
from .poststeps import derived_outputs, write_stac
from .preview import PreviewBuilder, preview_name
from .products import Selection, effective_config, select, stac_path, vector_path
from .reader import ChunkReader, input_cache_bytes
from .report import ClassStat, SegmentResult, class_stats, report_name, sum_chunk_stats, write_report
from .resume import Resume
from .sentinel2 import BandSet
from .stages import END, StageRunner
from .writer import FLOAT_PRODUCTS, ProductWriter, check_output_folder, product_paths

__all__ = ["segment", "SegmentResult", "ClassStat", "ChunkStages", "auto_chunk_size", "STRIP_ROWS", "Normaliser",
           "patches_with_data"]

ProgressCallback = Callable[[float, str], None]
LogCallback = Callable[[str], None]


def segment(
    tile: str | Path,
    output_dir: str | Path,
    model: str | Path | ModelCard | SegmentationModel = DEFAULT_MODEL,
    config: EngineConfig | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    log: LogCallback | None = None,
    mask_model: SegmentationModel | None = None,
) -> SegmentResult:
    """Segment one Sentinel-2 tile into ``output_dir``; see DESIGN §2–§7.

    ``model`` is a model name, card file, model folder/file, a :class:`ModelCard`,
    or an already loaded :class:`SegmentationModel` (then its device is used). ``mask_model``: an
    already loaded cloud model for mask ``model`` (else ``config.mask_model`` or the level's is loaded).
    Raises :class:`S2SegError` subclasses naming the bad file or parameter, and
    :class:`Cancelled` when ``cancel`` is set; no finished-looking output is left
    behind in either case. Any other exception is a bug: it propagates as itself,
    with a note naming the stage and what happened to the partial outputs.
    """
    started = time.perf_counter()
    config, selection = effective_config(config or EngineConfig())  # write_probs and vector follow the selection
    log = log or (lambda message: None)
    cancel = cancel or threading.Event()
    output_dir = Path(output_dir).expanduser()

    bandset = discover_input(tile, config.bands, config.scale, config.offset)
    for note in bandset.notes:
        log(note)
    mask_source, mask_note = mask_.resolve_mode(config.mask, bandset,
                                                mask_model.card.name if mask_model is not None else config.mask_model)
    if mask_source != config.mask:  # auto resolved: the selection, journal key and report say which source
        config, selection = effective_config(config.with_(mask=mask_source))
    log(mask_note)
    preloaded = model if isinstance(model, SegmentationModel) else None
    card = preloaded.card if preloaded is not None else resolve_card(model)
    bandset.require(card.bands, card.name)
    if bandset.level and bandset.level not in card.levels:
        log(f"warning: model {card.name!r} was trained on {'/'.join(card.levels)} data but {bandset.source.name} is {bandset.level}; results may be poor")
    device = preloaded.device if preloaded is not None else pick_device(config.device)
    if config.half and device.type != "cuda":
        log(f"warning: half precision (--half) runs on CUDA only; ignored on {device.type}, running in float32")
    aoi = aoi_.resolve(config.aoi, bandset.width, bandset.height, bandset.transform, bandset.crs) if config.aoi else None
    chunk_size = _chunk_size(config, card, bandset, device, log)
    mask_card = None
    if mask_source == "model":
        mask_card = mask_model.card if mask_model is not None else resolve_card(
            config.mask_model or mask_.cloud_model_name(bandset.level))
        bandset.require(mask_card.bands, mask_card.name)
        if not config.chunk_size:  # automatic: on both models' patch grids (a user's size is checked by plan)
            unit = math.lcm(chunk_unit(card.footprint), chunk_unit(mask_card.footprint), 16)
            chunk_size = max(unit, chunk_size // unit * unit)
    window = None if aoi is None else (aoi.window.row0, aoi.window.col0, aoi.window.height, aoi.window.width)
    if card.receptive_field:
        grid = plan_one_pass(bandset.height, bandset.width, chunk_size, card.receptive_field, card.footprint, window)
    elif window is None:
        grid = plan(bandset.height, bandset.width, card.patch_size, chunk_size, card.pixel_factor)
    else:
        grid = plan_window(bandset.height, bandset.width, card.patch_size, chunk_size, window, card.pixel_factor)
    if aoi is not None:
        w = aoi.window
        log(f"area of interest: rows {w.row0}–{w.row1}, cols {w.col0}–{w.col1} of the tile ({w.width} × {w.height} px"
            f"{', pixels outside its polygons nodata' if aoi.mask is not None else ''})")
    batch_size = config.batch_size or EngineConfig.default_batch_size(device.type, card.patch_size)
    cache = _cache_budget(bandset, card, grid, config.write_probs)
    if mask_card is not None:  # the cloud model's reads too (its chunks checked here, before any output)
        cache += mask_.input_bytes(bandset, mask_card, mask_.mask_grid(grid, mask_card))
    paths = product_paths(output_dir, bandset.name, config.write_probs, selection.rasters)
    derived = [vector_path(output_dir, bandset.name)] * selection.vector + [stac_path(output_dir, bandset.name)]
    preview_path = output_dir / preview_name(bandset.name)
    report_path = output_dir / report_name(bandset.name)
    check_output_folder(output_dir)

    block = block_size(grid.chunk_size)
    if grid.chunk_size % block and len(grid.chunks) > 1:
        rows = math.lcm(block, grid.chunk_size) // grid.chunk_size
        log(f"note: output blocks ({block} px) straddle chunks of {grid.chunk_size} px, so finished chunks are saved "
            f"for resume every {rows} chunk row(s) only; a chunk size that is a multiple of "
            f"{math.lcm(chunk_unit(card.footprint), 16)} px avoids this")
    fields = run_fields(bandset, card, chunk_size=grid.chunk_size, write_probs=config.write_probs,
                        compress=config.compress, block=block, products=selection.rasters,
                        aoi=None if aoi is None else aoi.fields(), mask=config.mask, keep_masked=config.keep_masked,
                        mask_card=mask_card, snow_test=mask_.SNOW_TEST if mask_card is not None else None)
    with Resume(output_dir, bandset.name, fields, grid, card, config.resume, log) as resume:
        resume.check_outputs([*paths.values(), preview_path, report_path, *derived], config.overwrite)
        loaded = preloaded or load_model(card, device, log=log)  # before touching any partial file
        stages = ChunkStages(bandset, loaded, grid, config, batch_size, cancel, progress, log,
                             asynchronous=_asynchronous(loaded.device), mask=None if aoi is None else aoi.mask)
        if mask_card is not None:  # the cloud model beside the land-cover one, on the same chunks
            cloud = mask_model or load_model(mask_card, device, log=log)
            cloud_batch = config.batch_size or EngineConfig.default_batch_size(device.type, mask_card.patch_size)
            stages.model_mask = mask_.ModelMask(cloud, bandset, grid, cloud_batch,
                                                asynchronous=_asynchronous(cloud.device), check=stages.runner.check,
                                                log=log)
        out_row0, out_col0, out_height, out_width = grid.output_window
        writer = resume.open_writer(
            lambda reopen: ProductWriter(output_dir, bandset.name, width=out_width, height=out_height,
                                         crs=bandset.crs, transform=bandset.transform if aoi is None else aoi.transform,
                                         class_names=card.class_names,
                                         class_colours=card.class_colours, write_probs=config.write_probs,
                                         compress=config.compress, block=block, resume=reopen,
                                         origin=(out_row0, out_col0), products=selection.rasters),
            stages.restore, stages.reset)
        resume.start()
        log(f"model {card.name} ({card.format}, {card.output_kind}-level, {card.num_classes} classes, {card.resolution} m) on {device}; "
            f"tile {bandset.name} {bandset.width} × {bandset.height} px, {len(grid.chunks)} chunk(s) of {grid.chunk_size} px, batch {batch_size}")
        with gdal_cache_limit(cache) as limit:
            log(f"GDAL block cache: {limit / 2**20:.0f} MB for this run" if limit is not None
                else f"GDAL block cache: GDAL_CACHEMAX={user_cache_setting()} as set by the user")
            stages.run(writer, resume.record, set(resume.done))
            if stages.model_mask is not None:
                log(f"cloud model: {stages.model_mask.reuse.computed} patches computed "
                    f"({stages.model_mask.grid.n_patches} in the whole tile's grid)")
            if stages.inferer.batch_size != batch_size:
                log(f"finished with a batch of {stages.inferer.batch_size} patches (started with {batch_size}): "
                    f"the device ran out of memory")
            # Inside the limit too: building the overviews reads every product back, and under GDAL's default
            # cache (5 % of the RAM) its decoded blocks raised a full tile's peak RSS by 0.6 GB (measured).
            result = _finish(stages, writer, cancel, bandset, card, config, batch_size, device, started,
                             preview_path, report_path, resumed=len(resume.done), selection=selection)
        resume.finish()  # last: until the report is written a re-run finishes the outputs
    stages.report(1.0, "done")
    return result


def _finish(stages: "ChunkStages", writer: ProductWriter, cancel: threading.Event, bandset: BandSet, card: ModelCard,
            config: EngineConfig, batch_size: int, device: torch.device, started: float, preview_path: Path,
            report_path: Path, resumed: int, selection: Selection) -> SegmentResult:
    """The finishing steps once every chunk is journaled: overviews and renames, the derived outputs
    (styles, polygons, COGs: :mod:`.poststeps`), preview, STAC item, report.
    Whatever stops them (an error, a cancel, checked between steps) leaves the run resumable."""
    def check() -> None:
        if cancel.is_set():
            raise Cancelled("cancelled while finishing the outputs")

    stages.report(0.97, "building overviews")
    t0 = time.perf_counter()
    products = writer.commit(check)
    finishing = {"commit": time.perf_counter() - t0}
    outputs = derived_outputs(products, selection, config, bandset, card, preview_path.parent, check, stages.report,
                              stages.log, finishing)
    stats = sum_chunk_stats(stages.chunk_stats, card.num_classes)
    pixel_area = abs(bandset.transform.a * bandset.transform.e)
    per_class = class_stats(card, stats, pixel_area)
    mask = None
    if "mask" in products:  # counted from the file: a resumed run counts like an uninterrupted one
        mask = mask_.summarise(products["mask"], config.mask, config.keep_masked)
    check()
    try:
        stages.preview.save(preview_path, card.class_names, card.class_colours, [s.share for s in per_class],
                            None if mask is None or mask.kept else mask.masked_share)  # the masked share
    except OSError as exc:
        raise _os_output_error(preview_path, exc) from None
    seconds = time.perf_counter() - started
    result = SegmentResult(
        tile_name=bandset.name, output_dir=preview_path.parent, products=products, preview=preview_path,
        report=report_path, device=str(device), model_name=card.name, card=card, chunk_size=stages.grid.chunk_size,
        n_chunks=len(stages.grid.chunks), seconds=seconds, timings={**stages.busy, **finishing, "total": seconds},
        valid_pixels=int(stats["count"].sum()), pixel_area_m2=pixel_area, class_stats=per_class, resumed_chunks=resumed,
        batch_size_final=stages.inferer.batch_size, outputs=outputs, mask=None if mask is None else mask.to_dict(),
    )
    check()
    t0 = time.perf_counter()
    stac = write_stac(products, outputs, preview_path, config, bandset, card, preview_path.parent, stages.log)
    if stac is not None:
        outputs["stac"] = stac
        result.timings["stac"] = time.perf_counter() - t0
    check()
    try:
        write_report(result, bandset, config, batch_size)
    except OSError as exc:
        raise _os_output_error(report_path, exc) from None
    return result


def auto_chunk_size(card: ModelCard, bandset: BandSet, device: torch.device) -> int:
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
        return auto_chunk_size(card, bandset, device)
    unit = chunk_unit(card.footprint)
    extent = max(bandset.height, bandset.width)
    whole = math.ceil(extent / unit) * unit
    if config.chunk_size >= extent and config.chunk_size != whole:
        log(f"chunk size {config.chunk_size} is at least the tile size ({bandset.width} × {bandset.height} px): "
            f"processing the tile as one chunk of {whole} px")
        return whole
    return config.chunk_size


def _asynchronous(device: torch.device) -> bool:
    """Does ``device`` run kernels asynchronously to the host (any accelerator)? Then patches are
    gathered on the device and nothing between two batches reads a result back."""
    return device.type != "cpu"


def _surface(stage: str, error: BaseException) -> BaseException:
    """A stage's error, to raise in the caller: a user error as is; anything else (a bug, an OSError
    GDAL did not report) is the original exception object, so its traceback still points at the
    failing line, with a note naming the thread."""
    if not isinstance(error, S2SegError):
        error.add_note(f"raised in the s2seg {stage} thread")
    return error


def _os_output_error(path: Path, exc: OSError) -> OutputError:
    from .writer import _output_error

    return _output_error(path, exc)


class ChunkStages:
    """The chunks of one tile through four threads joined by bounded queues:
    read → infer (:class:`.inferer.ChunkInferer`) → write (:class:`.chunkwriter.ChunkWriter`) → journal.

    :meth:`run` raises the first stage's error (an :class:`.errors.S2SegError` as is, any other
    exception as itself with a note naming the stage) or :class:`.errors.Cancelled`.
    """

    def __init__(self, bandset: BandSet, model: SegmentationModel, grid: GridPlan, config: EngineConfig, batch_size: int,
                 cancel: threading.Event, progress: ProgressCallback | None = None, log: LogCallback | None = None,
                 *, asynchronous: bool | None = None, mask: np.ndarray | None = None):
        self.bandset, self.card, self.grid, self.config = bandset, model.card, grid, config
        #: ``grid.output_window``'s pixels to write (area of interest polygons); None: all of them
        self.mask = mask
        self.log = log or (lambda message: None)
        self.runner = StageRunner(cancel)
        self.busy = {"read": 0.0, "inference": 0.0, "write": 0.0, "flush": 0.0, "sync": 0.0}
        #: the cloud model run as the mask (mask source ``model``), set by :func:`segment`
        self.model_mask: mask_.ModelMask | None = None
        self._progress = progress
        self._progress_lock = threading.Lock()
        device = model.device
        asynchronous = _asynchronous(device) if asynchronous is None else asynchronous
        #: CUDA: the writer's kernels run on their own stream, so that reading a chunk's products
        #: back waits for that chunk only, not for the batches queued after it
        self.write_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.inferer = ChunkInferer(model, Normaliser(self.card, bandset, device), batch_size, asynchronous=asynchronous,
                                    half=config.half and device.type == "cuda", write_probs=config.write_probs,
                                    log=self.log, check=self.runner.check, on_batch=self._batch_done,
                                    record_ready=self.write_stream is not None)
        #: chunks after which the written chunks can be journaled (all of them when blocks never straddle chunks)
        self.journal_points = journal_points(grid, block_size(grid.chunk_size))
        self.reset()

    def reset(self) -> None:
        """Forget any resumed chunk: empty preview and statistics."""
        row0, col0, height, width = self.grid.output_window
        self.preview = PreviewBuilder(width, height, self.config.preview_size, origin=(row0, col0))
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

    def run(self, writer: ProductWriter, record: Callable[[list[tuple[int, np.ndarray]]], None],
            done: set[int] = frozenset()) -> None:
        """Read, infer, write and journal (``record``) every chunk not in ``done``."""
        todo = [chunk for chunk in self.grid.chunks if chunk.index not in done]
        if self.model_mask is not None:  # which cloud patches each chunk computes, and keeps for the next ones
            self.model_mask.start([chunk.index for chunk in todo])
        self._position = {chunk.index: len(done) + i for i, chunk in enumerate(todo)}
        self.chunk_writer = ChunkWriter(writer, self.card, self.preview, self.config.write_probs, self.runner.check,
                                        self.write_stream, products=select(self.config).rasters)
        read_q: queue.Queue = queue.Queue(self.config.queue_size)
        infer_q: queue.Queue = queue.Queue(self.config.queue_size)
        sync_q: queue.Queue = queue.Queue()  # lists of chunk statistics: tiny
        self.runner.run([
            ("reader", self._read_stage, (todo, read_q)),
            ("inference", self._infer_stage, (read_q, infer_q)),
            ("writer", self._write_stage, (infer_q, writer, sync_q)),
            ("journal", self._journal_stage, (sync_q, writer, record)),
        ])
        runner = self.runner
        if runner.error is not None:
            raise _surface(runner.stage, runner.error)
        if runner.cancel.is_set():
            raise Cancelled(f"cancelled after {self._chunks_done} of {len(self.grid.chunks)} chunk(s)")

    def infer(self, chunk: Chunk, pixels) -> Inferred | None:
        """One chunk's merged model outputs (the inference stage's work, for benchmarks)."""
        return self.inferer.infer(chunk, pixels)

    def report(self, fraction: float, message: str) -> None:
        if self._progress is not None:
            with self._progress_lock:
                self._progress(min(max(fraction, 0.0), 1.0), message)

    # --- stages -----------------------------------------------------------------------
    def _read_stage(self, todo: list[Chunk], out_q: queue.Queue) -> None:
        per_pixel = self.config.mask in ("scl", "spectral")
        model_mask = self.model_mask
        with ChunkReader(self.bandset, self.card.bands, self.card.name, self.card.resampling, self.config.read_threads,
                         self.card.pixel_factor) as reader, \
                (mask_.ChunkMasker(self.bandset, self.config.mask) if per_pixel else contextlib.nullcontext()) as masker, \
                (model_mask.reader(self.config.read_threads) if model_mask else contextlib.nullcontext()) as mask_reader:
            for chunk in todo:  # journaled chunks are not even read
                self.runner.check()
                t0 = time.perf_counter()
                pixels = reader.read(chunk.input_rows, chunk.input_cols)
                if masker is not None:  # per pixel: the output window only
                    pixels.mask = masker.read((chunk.row0, chunk.row1), (chunk.col0, chunk.col1))
                if mask_reader is not None:  # the cloud model's bands, halo and resolution
                    pixels.mask_input = model_mask.read(mask_reader, chunk.index)
                self.busy["read"] += time.perf_counter() - t0
                self.runner.put(out_q, (chunk, pixels))
                del pixels  # see _infer_stage
        self.runner.put(out_q, END)

    def _infer_stage(self, in_q: queue.Queue, out_q: queue.Queue) -> None:
        while (item := self.runner.get(in_q)) is not END:
            chunk, pixels = item
            t0 = time.perf_counter()
            inferred = self.inferer.infer(chunk, pixels)
            self.busy["inference"] += time.perf_counter() - t0
            if pixels.mask_input is not None:  # the cloud model, after the land cover (one device, one queue)
                t0 = time.perf_counter()
                pixels.mask = self.model_mask.codes(chunk.index, pixels.mask_input)
                self.busy["mask model"] = self.busy.get("mask model", 0.0) + time.perf_counter() - t0
            valid, codes = pixels.output_valid, pixels.mask
            # The chunk's band values are done with: hold no reference to them (nor, below, to what
            # was passed on) while waiting for the queues, or every stage holds one chunk more.
            del item, pixels
            self.runner.put(out_q, (chunk, valid, inferred, codes))
            del inferred, valid, codes
        self.runner.put(out_q, END)

    def _batch_done(self, chunk: Chunk, done: int, count: int, batches: int, expected: int) -> None:
        if self._progress is None or chunk.index not in self._position:  # e.g. infer() called alone
            return
        n_chunks = len(self.grid.chunks)
        self.report((self._position[chunk.index] + done / count * 0.9) / n_chunks * 0.95,
                    f"chunk {chunk.index + 1}/{n_chunks}: batch {batches}/{expected}")

    def _write_stage(self, in_q: queue.Queue, writer: ProductWriter, sync_q: queue.Queue) -> None:
        try:
            self._write_chunks(in_q, writer, sync_q)
        finally:
            sync_q.put(END)  # after the last flushed chunk, whatever happened

    def _write_chunks(self, in_q: queue.Queue, writer: ProductWriter, sync_q: queue.Queue) -> None:
        n_chunks = len(self.grid.chunks)
        pending: list[tuple[int, np.ndarray]] = []  # written, not yet journaled
        while (item := self.runner.get(in_q)) is not END:
            chunk, valid_region, inferred, codes = item
            t0 = time.perf_counter()
            # The input region starts (1 + margin) strides above/left of the output window.
            top, left = chunk.row0 - chunk.input_rows[0], chunk.col0 - chunk.input_cols[0]
            valid = valid_region[top: top + chunk.height, left: left + chunk.width]
            if self.mask is not None:  # outside the AOI polygons: written as nodata, computed all the same
                oy, ox = self.grid.output_window[:2]
                valid = valid & self.mask[chunk.row0 - oy: chunk.row1 - oy, chunk.col0 - ox: chunk.col1 - ox]
            if codes is not None:  # the cloud/shadow/snow mask: written, and the land cover hidden under it
                codes = np.where(valid, codes, np.uint8(mask_.MASK_NODATA))
                writer.write("mask", codes, chunk.row0, chunk.col0)
                if not self.config.keep_masked:
                    valid = valid & ~mask_.hidden(codes)
            pending.append((chunk.index, self.chunk_writer.write(chunk, valid, inferred)))
            if chunk.index in self.journal_points:
                # In the files first (synced and journaled by the journal thread): a journaled chunk is
                # complete on disk whatever happens next.
                t1 = time.perf_counter()
                writer.flush([(c.row0, c.col0, c.height, c.width) for c in (self.grid.chunks[i] for i, _ in pending)],
                             sync=False)
                sync_q.put(pending)
                pending = []
                self.busy["flush"] += time.perf_counter() - t1
            del item, inferred, valid_region, valid, codes  # see _infer_stage
            # Once per chunk (the writer finishes it last): trimming in every stage measured no lower.
            release_freed_memory()  # the chunk's buffers, freed on the heap, go back to the OS (memory.py)
            self.busy["write"] += time.perf_counter() - t0
            self._chunks_done += 1
            self.report(self._chunks_done / n_chunks * 0.95, f"chunk {self._chunks_done}/{n_chunks} written")

    def _journal_stage(self, sync_q: queue.Queue, writer: ProductWriter,
                       record: Callable[[list[tuple[int, np.ndarray]]], None]) -> None:
        """Make flushed chunks durable, then journal them, in order. Deliberately not stopped by a
        failure or cancel elsewhere: every chunk already flushed is still journaled (the run stops
        once this thread has drained its queue), so a resume redoes as little as possible."""
        while (pending := sync_q.get()) is not END:
            t0 = time.perf_counter()
            writer.sync()
            record(pending)
            self.chunk_stats.update(pending)
            self.busy["sync"] += time.perf_counter() - t0
