"""Sections 1–3: the pipeline end to end against its I/O floor and its compute floor."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from s2seg.core.config import usable_cores
from s2seg.core.uncertainty import Confidence

from .common import PIPELINE_OVER_FLOOR_MAX, fmt_s, in_thread, sync
from .engine_parts import auto_chunk_size, one_pass_windows
from .report import Target


def run_regime(key: str, tile: Path, model, config, work: Path) -> dict[str, Any]:
    """The pipeline on ``tile``, its I/O floor and its compute floor. A one-pass model (card ``receptive_field``)
    is planned and floored as the engine runs it: chunks plus their halo, each pixel once, no patches; its
    ``n_patches`` is then None and ``pixels_computed`` the model's input pixels ÷ the tile's."""
    from s2seg.core.config import EngineConfig
    from s2seg.core.grid import plan, plan_one_pass
    from s2seg.core.pipeline import segment
    from s2seg.core.sentinel2 import discover

    bandset = discover(tile)
    card = model.card
    chunk_size = config.chunk_size or auto_chunk_size(card, bandset, model.device)
    batch = config.batch_size or EngineConfig.default_batch_size(model.device.type, card.patch_size)
    config = config.with_(chunk_size=chunk_size, batch_size=batch, overwrite=True)
    if card.receptive_field:
        grid = plan_one_pass(bandset.height, bandset.width, chunk_size, card.receptive_field, card.footprint)
    else:
        grid = plan(bandset.height, bandset.width, card.patch_size, chunk_size)

    out_dir = work / f"out-{key}-{bandset.width}"
    warm_up(tile, bandset, model, config, work / f"warm-{key}")
    sync(model.device)
    result = segment(tile, out_dir, model=model, config=config)
    io = io_floor(bandset, card, grid, config, result.products, work / f"io-{key}-{bandset.width}")
    compute_cpu = engine = None
    if card.receptive_field:
        compute, computed, compute_cpu = in_thread(one_pass_compute_floor, model, card, bandset, io["sample"], io["inputs"],
                                                   batch, config.write_probs)
        n_patches, pixels_computed = None, computed / (bandset.width * bandset.height)
        engine = engine_alone(tile, model, config, work / f"engine-{key}-{bandset.width}")
    else:
        compute = in_thread(compute_floor, model, card, bandset, io["sample"], io["n_patches"], batch)
        n_patches, pixels_computed = io["n_patches"], None
    return {
        "size": bandset.width, "chunk_size": chunk_size, "n_chunks": len(grid.chunks), "n_patches": n_patches,
        "pixels_computed": pixels_computed,
        "pipeline": result.seconds, "busy": {k: result.timings.get(k, 0.0) for k in BUSY_KEYS},
        "read": io["read"], "write": io["write"], "flush": io["flush"], "io_floor": io["read"] + io["write"], "compute_floor": compute,
        "io_cpu": io["cpu"], "compute_cpu": compute_cpu, "cores": usable_cores(), "engine": engine,
        "products": result.products, "grid": grid, "bandset": bandset, "config": config,
    }


def warm_up(tile: Path, bandset, model, config, out_dir: Path, size: int = 240) -> None:
    """One small run first, on a ``size``-pixel corner of the same tile (an area of interest), so that the timed run
    pays no one-off set-up: numba compiles the kernels on their first call (seconds, and again after any edit of
    their module, whose on-disk cache then goes stale), GDAL loads its drivers."""
    from s2seg.core.pipeline import segment

    t = bandset.transform
    x0, y0 = t.c, t.f
    aoi = f"{x0},{y0 + size * t.e},{x0 + size * t.a},{y0}"
    segment(tile, out_dir, model=model, config=config.with_(aoi=aoi))


def io_floor(bandset, card, grid, config, products: dict[str, Path], io_dir: Path) -> dict[str, Any]:
    """Read every chunk window the pipeline reads; write the pipeline's products again, window by window.
    Also returns a ``sample`` chunk with data and, for a one-pass model, ``inputs``: each chunk with data and
    its input's shape."""
    import rasterio
    from rasterio.windows import Window

    from s2seg.core.feed import patches_with_data
    from s2seg.core.grid import block_size
    from s2seg.core.reader import ChunkReader
    from s2seg.core.writer import ProductWriter

    shutil.rmtree(io_dir, ignore_errors=True)
    io_dir.mkdir(parents=True)
    s = card.stride
    t_read = t_write = t_flush = 0.0
    cpu = 0.0  # process CPU seconds (every thread: GDAL's decoding and encoding threads too) of the reads and writes
    n_patches = 0
    sample = None
    inputs = []  # one-pass: (chunk, input rows, input cols) of the chunks with data
    sources = {k: rasterio.open(p) for k, p in products.items()}
    try:
        with ChunkReader(bandset, card.bands, card.name, card.resampling, config.read_threads) as reader:
            kwargs = dict(width=bandset.width, height=bandset.height, crs=bandset.crs, transform=bandset.transform,
                          class_names=card.class_names, class_colours=card.class_colours, write_probs=False,
                          compress=config.compress)
            writer = ProductWriter(io_dir, bandset.name, block=block_size(grid.chunk_size), **kwargs)  # the pipeline's blocks
            try:
                for chunk in grid.chunks:
                    t0, c0 = time.perf_counter(), time.process_time()
                    pixels = reader.read(chunk.input_rows, chunk.input_cols)
                    t_read += time.perf_counter() - t0
                    cpu += time.process_time() - c0
                    if card.receptive_field:  # no patches: the chunk's input, once
                        if pixels.valid.any():
                            inputs.append((chunk, *pixels.data.shape[1:]))
                            sample = sample or (pixels, None)
                    else:
                        todo = patches_with_data(pixels.valid, chunk.n_patches_y, chunk.n_patches_x, s)
                        n_patches += int(todo.sum())
                        if sample is None and todo.any():
                            sample = (pixels, np.argwhere(todo))
                    window = Window(chunk.col0, chunk.row0, chunk.width, chunk.height)
                    arrays = {k: src.read(1, window=window) for k, src in sources.items() if k != "probs"}
                    t0, c0 = time.perf_counter(), time.process_time()
                    for k, array in arrays.items():
                        writer.write(k, array, chunk.row0, chunk.col0)
                    t1 = time.perf_counter()  # as the pipeline does after every chunk (resume journal)
                    writer.flush()
                    t_flush += time.perf_counter() - t1
                    t_write += time.perf_counter() - t0
                    cpu += time.process_time() - c0
                t0, c0 = time.perf_counter(), time.process_time()
                writer.commit()
                t_write += time.perf_counter() - t0
                cpu += time.process_time() - c0
            except BaseException:
                writer.abort()
                raise
    finally:
        for src in sources.values():
            src.close()
    return {"read": t_read, "write": t_write, "flush": t_flush, "cpu": cpu, "n_patches": n_patches, "sample": sample,
            "inputs": inputs}


def compute_floor(model, card, bandset, sample, n_patches: int, batch: int) -> float:
    """Forward passes alone on ``n_patches`` patches (cycled from the first chunk), already normalised on the device."""
    from s2seg.core.feed import Normaliser, PatchFeed

    if sample is None or n_patches == 0:
        return 0.0
    pixels, todo = sample
    pick = todo[np.linspace(0, len(todo) - 1, min(len(todo), 2 * batch)).astype(int)]
    feed = PatchFeed(pixels.data, pick, card.patch_size, card.stride, Normaliser(card, bandset, model.device), model.device)
    with torch.inference_mode():
        pool_t = feed.batch(0, feed.count).to(model.device)
        sizes = [batch] * (n_patches // batch) + ([n_patches % batch] if n_patches % batch else [])
        if len(pool_t) < batch:
            pool_t = pool_t.repeat(math.ceil(batch / len(pool_t)), 1, 1, 1)
        batches = [pool_t[:n] if i % 2 == 0 else pool_t[len(pool_t) - n:] for i, n in enumerate(sizes)]
        model.predict(batches[0])  # warm-up (lazy initialisation, caches)
        sync(model.device)
        t0 = time.perf_counter()
        for b in batches:
            model.predict(b)
        sync(model.device)
        return time.perf_counter() - t0


def one_pass_compute_floor(model, card, bandset, sample, inputs, batch: int, write_probs: bool = False
                           ) -> tuple[float, int, float]:
    """``(seconds, input pixels, CPU seconds)``: the model alone over every chunk's input in the strips the inference
    stage runs (:func:`.engine_parts.one_pass_windows`), each already normalised on the device, called as the stage
    calls it: ``predict_confidence`` for each strip's output rows when the model makes the confidence products itself
    (:class:`s2seg.core.models.base.ConfidenceModel`, probabilities not written; every pixel valid), else
    ``predict``. The pixels come from the ``sample`` chunk, cropped or repeated to each chunk's input shape (a
    per-pixel model costs the same whatever the pixels). CPU seconds: the same calls again on one thread
    (:func:`one_thread_cpu_seconds`)."""
    from s2seg.core.feed import Normaliser
    from s2seg.core.models.base import makes_own_confidence

    if sample is None or not inputs:
        return 0.0, 0, 0.0
    pixels = sample[0]
    rows = max(r for _, r, _ in inputs)
    cols = max(c for _, _, c in inputs)
    data = np.pad(pixels.data, ((0, 0), (0, max(0, rows - pixels.data.shape[1])), (0, max(0, cols - pixels.data.shape[2]))),
                  mode="wrap")
    x = Normaliser(card, bandset, model.device)(torch.from_numpy(np.ascontiguousarray(data[None])).to(model.device))
    fused = makes_own_confidence(model, write_probs)
    calls = []
    for chunk, r, c in inputs:
        left = chunk.col0 - chunk.input_cols[0]
        for a, z, first, n in one_pass_windows(chunk, r, c, card.receptive_field, batch, card.patch_size):
            if fused:
                valid = torch.ones((n, chunk.width), dtype=torch.bool, device=model.device)
                calls.append((x[:, :, a:z, :c], valid, (first - a, left)))
            else:
                calls.append((x[:, :, a:z, :c],))

    def run(args):
        return model.predict_confidence(*args) if fused else model.predict(args[0])

    with torch.inference_mode():
        run(calls[0])  # warm-up (lazy initialisation, caches, compilation)
        sync(model.device)
        t0 = time.perf_counter()
        for args in calls:
            run(args)
        sync(model.device)
        seconds = time.perf_counter() - t0
        cpu = one_thread_cpu_seconds(lambda: [run(args) for args in calls]) if model.device.type == "cpu" else 0.0
    return seconds, sum(args[0].shape[2] * args[0].shape[3] for args in calls), cpu


class ProductReplay:
    """The confidence products a model made in one run, handed back in the same order in the next: the engine around
    a model that costs nothing and writes the same products (:func:`engine_alone`). Wraps the instance's
    ``predict_confidence`` (nothing in the engine changes) and puts it back on leaving each ``with``."""

    def __init__(self, model: Any) -> None:
        self.model, self.products, self._next = model, [], 0

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        real = self.model.predict_confidence

        def record(batch, valid, window):
            products = real(batch, valid, window)
            self.products.append({f.name: getattr(products, f.name).clone() for f in dataclasses.fields(products)})
            return products
        with self._wrapped(record):
            yield

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        def replay(batch, valid, window):  # noqa: ARG001 - the engine's call, answered from the recording
            if self._next >= len(self.products) or tuple(self.products[self._next]["classes"].shape) != tuple(valid.shape):
                raise RuntimeError("the replayed run asked for other windows than the recorded one")
            made = self.products[self._next]
            self._next += 1
            # A fresh copy, as the model allocates fresh products for every strip.
            return Confidence(**{name: tensor.clone() for name, tensor in made.items()})
        self._next = 0
        with self._wrapped(replay):
            yield
        if self._next != len(self.products):
            raise RuntimeError(f"the replayed run made {self._next} of the {len(self.products)} recorded calls")

    @contextlib.contextmanager
    def _wrapped(self, call) -> Iterator[None]:
        self.model.predict_confidence = call
        try:
            yield
        finally:
            del self.model.predict_confidence  # the class's method again


def engine_alone(tile: Path, model, config, out_dir: Path) -> dict[str, float] | None:
    """The pipeline with the model's work taken out: one run records the products the model makes, a second run gets
    them back from memory (:class:`ProductReplay`) and does everything else (reading, normalising, the strips, the
    writer's work, overviews, the commit). ``{"seconds", "cpu"}`` of the second run, or None for a model that does not
    make its own confidence products (then its outputs go through the engine's own confidence step, which this
    would skip)."""
    from s2seg.core.models.base import makes_own_confidence
    from s2seg.core.pipeline import segment

    if "predict_confidence" in vars(model) or not makes_own_confidence(model, config.write_probs):
        return None
    replay = ProductReplay(model)
    with replay.recording():
        segment(tile, out_dir, model=model, config=config)
    with replay.replaying():
        sync(model.device)
        c0 = time.process_time()
        result = segment(tile, out_dir, model=model, config=config)
        cpu = time.process_time() - c0
    return {"seconds": result.seconds, "cpu": cpu}


def one_thread_cpu_seconds(work) -> float:
    """CPU seconds of ``work()`` on one torch thread (the count is restored; the harness runs alone here): the
    work itself. With every thread, the seconds OpenMP threads spend waiting at each op's barrier for a core
    count as CPU time too; on the loaded 2-core VM the one-pass compute floor measured 15 CPU s on two threads
    against 2.1 on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        c0 = time.process_time()
        work()
        return time.process_time() - c0
    finally:
        torch.set_num_threads(before)


def cpu_bound(r: dict[str, Any]) -> float | None:
    """A one-pass regime's CPU-bound lower bound on the wall time: the CPU seconds of its I/O floor (``time.process_time``
    of every thread: GDAL's too) and of its compute floor (on one thread: :func:`one_thread_cpu_seconds`), each
    measured alone, spread over the usable cores. The pipeline does at least this work on these cores, so its wall
    time cannot be lower, whatever the overlap."""
    if r.get("compute_cpu") is None:
        return None
    return (r["io_cpu"] + r["compute_cpu"]) / r["cores"]


def cpu_bound_target(r: dict[str, Any], label: str, goal: float) -> Target:
    """The issue-16 ratio measured against ``max(I/O floor, CPU-bound floor)`` (:func:`cpu_bound`), beside it."""
    bound = cpu_bound(r)
    floor = max(r["io_floor"], bound)
    ratio = r["pipeline"] / floor
    note = (f"CPU-bound floor ({fmt_s(r['io_cpu'])} s CPU of the I/O floor + {fmt_s(r['compute_cpu'])} s CPU of the "
            f"compute floor on one thread) ÷ {r['cores']} cores = {fmt_s(bound)} s against the I/O floor's {fmt_s(r['io_floor'])} s wall.")
    if bound > goal * r["io_floor"]:
        note += (f" The bound alone is {bound / r['io_floor']:.2f}× the I/O floor: on {r['cores']} cores no overlap can "
                 f"bring the pipeline to {goal}× its I/O floor; it needs ≥ {math.ceil((r['io_cpu'] + r['compute_cpu']) / (goal * r['io_floor']))} "
                 "cores (or less CPU work per pixel).")
    return Target(f"one-pass pipeline ≤ {goal} × max(I/O floor, CPU-bound floor), {label}", f"{ratio:.2f}×", f"≤ {goal}×",
                  ratio <= goal, note)


def engine_alone_target(r: dict[str, Any], label: str, goal: float) -> Target:
    """The engine without the model's work (:func:`engine_alone`) against the I/O floor: how much of the one-pass
    pipeline's distance from its I/O floor is the engine's own, and how much is the model's work on the same cores."""
    engine = r["engine"]
    ratio = engine["seconds"] / r["io_floor"]
    note = (f"the same run with the model's products replayed from memory (everything but the model: reading, normalising, "
            f"the strips, the writer, overviews, commit) took {fmt_s(engine['seconds'])} s ({fmt_s(engine['cpu'])} s CPU) "
            f"against the I/O floor's {fmt_s(r['io_floor'])} s ({fmt_s(r['io_cpu'])} s CPU) and the whole pipeline's "
            f"{fmt_s(r['pipeline'])} s: the model's own work accounts for {fmt_s(r['pipeline'] - engine['seconds'])} s of the "
            "pipeline's wall time.")
    if r.get("compute_cpu"):
        bound = (engine["cpu"] + r["compute_cpu"]) / r["cores"]
        note += (f" The engine's CPU seconds and the model's (one thread, {fmt_s(r['compute_cpu'])} s) need "
                 f"{fmt_s(bound)} s on {r['cores']} cores at best, {bound / r['io_floor']:.2f}× the I/O floor.")
    return Target(f"one-pass engine alone (the model's products replayed) ≤ {goal} × its I/O floor, {label}", f"{ratio:.2f}×",
                  f"≤ {goal}×", ratio <= goal, note)


#: Stage timings of SegmentResult.timings shown in the tables: threads' busy seconds.
BUSY_KEYS = ("read", "inference", "write", "flush", "sync")


BUSY_HEADER = "busy read / inference / write (flush) / journal sync"


def patches_cell(r: dict[str, Any]) -> str:
    """The "patches" column: patches sent to the model, or for a one-pass model the pixels it computed ÷ the tile's."""
    if r["pixels_computed"] is not None:
        return f"none: {r['pixels_computed']:.2f}× the tile's px, once"
    return str(r["n_patches"])


def busy_cells(b: dict[str, float]) -> str:
    return f"{fmt_s(b['read'])} / {fmt_s(b['inference'])} / {fmt_s(b['write'])} ({fmt_s(b['flush'])}) / {fmt_s(b['sync'])}"


def pipeline_note(r: dict[str, Any]) -> str:
    busy = r["busy"]
    floor = max(r["io_floor"], r["compute_floor"])
    ratio = r["pipeline"] / floor
    if ratio <= PIPELINE_OVER_FLOOR_MAX:
        return ""
    parts = [f"wall {fmt_s(r['pipeline'])} s against floors of {fmt_s(r['io_floor'])} s (I/O, of which {fmt_s(r['flush'])} s "
             f"fsync) and {fmt_s(r['compute_floor'])} s (compute)."]
    if busy["inference"] > 1.3 * r["compute_floor"]:
        own = ("normalising each strip's rows, and the strips' confidence products unless the model makes them in its "
               "own pass" if r["pixels_computed"] is not None else
               "gathering and normalising patches, adding dense outputs into the chunk's canvas")
        parts.append(f"The inference stage was busy {fmt_s(busy['inference'])} s for {fmt_s(r['compute_floor'])} s of forward "
                     f"passes: the rest is the stage's own per-batch work ({own}) and waiting for a core: the reader's "
                     "decoding and the writer's blending, confidence and encoding run on the same cores.")
    bound = cpu_bound(r)
    if bound is not None:
        parts.append(f"Their CPU seconds ({fmt_s(r['io_cpu'])} s of the I/O floor, {fmt_s(r['compute_cpu'])} s of the compute "
                     f"floor, one thread) need {fmt_s(bound)} s on {r['cores']} cores at best (the CPU-bound floor).")
    parts.append(f"The writer stage was busy {fmt_s(busy['write'])} s ({fmt_s(busy['flush'])} s flushing GDAL's cache; the "
                 f"journal thread's fsyncs took {fmt_s(busy['sync'])} s beside it).")
    work = busy["read"] + busy["inference"] + busy["write"]
    cores = os.cpu_count() or 1
    if work > 0.8 * cores * r["pipeline"]:
        parts.append(f"The stages' busy seconds add up to {fmt_s(work)} s of work for {cores} cores, so on this machine the "
                     "wall time cannot come down to the larger floor: the floors are each measured alone, with every "
                     "core to themselves.")
    else:
        outside = r["pipeline"] - max(busy["read"], busy["inference"], busy["write"])
        parts.append(f"The stages overlap; {fmt_s(outside)} s of the wall time lie outside the busiest stage: loading the "
                     "model, opening the bands, filling the pipeline before the first batch and, after the last "
                     f"chunk, closing the products and hashing them for the STAC item, which a tile of {r['n_chunks']} "
                     "chunks cannot amortise.")
    return " ".join(parts)
