"""The benchmark harness (``make bench``, ``python -m s2seg.benchmarks.bench``): the engine against its floors
and its peers, as ratios measured in one run. Not shipped in the plugin zip.

Sections (each a table in ``docs/benchmarks.md``):

1. **I/O floor** — read every band window the pipeline reads and write the same
   products (the pipeline's own outputs, window by window) with the same GDAL
   options and overviews; no model, no blending.
2. **Compute floor** — the model's forward pass alone on as many patches as the
   pipeline sends (nodata patches excluded), same batch size and device; for a one-pass
   model (the built-in one) on every chunk's input in the strips the pipeline runs, each
   pixel once (the "patches" column then gives the pixels computed ÷ the tile's).
3. **Pipeline** — :func:`s2seg.core.pipeline.segment` end to end, with the busy
   time of every stage; target: wall ≤ 1.15 × max(I/O floor, compute floor).
   A one-pass model also against its I/O floor alone: ≤ 1.3 × (issue 16), and beside it against
   max(I/O floor, CPU-bound floor): the CPU seconds of both floors ÷ the usable cores (:func:`.floors.cpu_bound`).
   Run with the built-in dense model (I/O-bound regime) and a heavy model (a
   ResNet-50 in BigEarthNet v2 format with random weights: compute-bound).
4. **Blending + confidence** on identical patch outputs: ours (as the pipeline
   calls it, strip by strip); a faithful seed-style reference (per-patch Python
   loop accumulating P·W and W into full-chunk arrays, then per-pixel
   max/sort/entropy in numpy), kept here only; MONAI's
   ``sliding_window_inference`` aggregation with the same window and overlap,
   followed by the plain torch confidence (``topk``/``xlogy``). Results must
   agree within 1e-5.
5. **Nodata** — a tile whose right half is nodata against the full tile.
6. **Peak RSS** — ``segment`` in a fresh process per tile size (VmHWM from the OS).
7. **Output encoding** — LZW / DEFLATE / ZSTD (predictor per dtype) × GDAL
   threads on/off: time and size of the four products.
8. **Inference overhead** — the inference stage's busy time ÷ the model's own time on the same
   batches, per model kind (torch dense, torch patch, ONNX): target ≤ 1.15 × (:mod:`.overhead`).
9. **Peer** — the ukis-csmask L1C cloud U-Net on a 1536 × 768 crop of the demo scene
   (``bash tools/demo.sh``): Deepness's tiling re-implemented (:mod:`.peer`) at its 50 px
   overlap and at s2seg's 50 %, against ``segment``, interleaved in one run (:mod:`.peer_row`).
9b. **Reading** — the read stage of the peer crop against ``gdal_translate -srcwin`` of the same native
    windows (and in-process ``gdal.Translate``, rasterio), interleaved in one run (:mod:`.reading`).
10. **Start-up and memory** — ``s2seg segment`` on a 600² tile against ``python -c "import torch"``;
    peak RSS of a small crop per model kind against its import baseline, fresh processes (:mod:`.startup`).
11. **Masking clouds, shadows and snow** — ``--mask scl`` against the unmasked run, ``--mask model``
    against the land cover alone plus the cloud U-Net's compute floor, on a 2520² L2A sample (:mod:`.mask_cost`).

Absolute seconds depend on the machine and its load; the targets are ratios. Modules: :mod:`.floors`
(1–3), :mod:`.blending` (4), :mod:`.sections` (5–7), :mod:`.overhead` (8), :mod:`.peer_row` (9), :mod:`.reading` (9b), :mod:`.startup` (10),
:mod:`.mask_cost` (11), :mod:`.report` (tables), :mod:`.common` (targets,
inputs, timing), :mod:`.engine_parts` (the only place that touches engine internals).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from .blending import blend_section, monai_blend_confidence, ours_blend_confidence, plain_confidence, seed_blend_confidence
from .common import (AGREEMENT_TOL, DEFAULT_WORK_DIR, DOCS_PATH, ONE_PASS_OVER_IO_MAX, PIPELINE_OVER_FLOOR_MAX, Log, bench_config, fmt_s,
                     heavy_model_folder, load_average, machine_info, sample_tile)
from .floors import BUSY_HEADER, busy_cells, cpu_bound, cpu_bound_target, engine_alone_target, patches_cell, pipeline_note, run_regime
from .mask_cost import MASK_BENCH_SIZE, mask_section
from .overhead import overhead_cases, overhead_section
from .peer_row import CROP, DEMO_SCENE, PEER_MODEL, crop_bbox, peer_section
from .reading import reading_section
from .startup import STARTUP_SIZE, memory_section, startup_section
from .report import BenchResult, Section, Target
from .sections import encoding_section, nodata_section, outputs_section, rss_section

__all__ = ["AGREEMENT_TOL", "BenchResult", "Section", "Target", "bench", "main", "monai_blend_confidence",
           "ours_blend_confidence", "plain_confidence", "run_bench", "seed_blend_confidence"]


def run_bench(size: int = 5040, *, heavy: bool = True, heavy_size: int | None = None, heavy_arch: str = "resnet50",
              rss_sizes: tuple[int, ...] | None = None, encoding: bool = True, nodata: bool = True, outputs: bool = True,
              blend_chunk: int | None = None, quick: bool = False, device: str = "auto",
              peer_scene: str | Path | None = DEMO_SCENE, startup: bool = True, mask: bool = True,
              work_dir: str | Path | None = None, docs: str | Path | None = DOCS_PATH, log: Log | None = None) -> int:
    """Run the benchmark on a ``size``² sample tile, print the table and write ``docs``; 0 when it ran.

    ``rss_sizes`` defaults to 2520² and 5040², plus 10980² when ``size`` is 10980
    (``--full``) or ``S2SEG_BENCH_RSS_FULL=1``. ``heavy_size`` is the
    crop used for the heavy model (default: the tile on a GPU, 720² on a CPU, where a
    ResNet-50 takes ~0.2 s per patch). Targets not met are reported, not fatal.
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    result = bench(size, heavy=heavy, heavy_size=heavy_size, heavy_arch=heavy_arch, rss_sizes=rss_sizes,
                   encoding=encoding, nodata=nodata, blend_chunk=blend_chunk, quick=quick, device=device,
                   peer_scene=peer_scene, startup=startup, mask=mask, work_dir=work_dir, log=log)
    print(result.text())
    if docs:
        docs = Path(docs)
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(result.markdown(), encoding="utf-8")
        log(f"wrote {docs}")
    return 0


def bench(size: int = 5040, *, heavy: bool = True, heavy_size: int | None = None, heavy_arch: str = "resnet50",
          rss_sizes: tuple[int, ...] | None = None, encoding: bool = True, nodata: bool = True, outputs: bool = True,
          blend_chunk: int | None = None, quick: bool = False, device: str = "auto",
          peer_scene: str | Path | None = DEMO_SCENE, startup: bool = True, mask: bool = True,
          work_dir: str | Path | None = None, log: Log | None = None) -> BenchResult:
    """Measure everything :func:`run_bench` reports and return it (no printing, no docs);
    ``peer_scene`` None skips the peer section, ``startup`` False the fresh-process start-up and memory runs,
    ``mask`` False the mask costs (quick: on the ``size``² tile instead of 2520²)."""
    from s2seg.core.grid import aligned_unit
    from s2seg.core.models import load_model, pick_device, resolve_card

    log = log or (lambda message: None)
    started = time.perf_counter()
    work = Path(work_dir or DEFAULT_WORK_DIR).resolve()
    work.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    if rss_sizes is None:
        rss_sizes = (2520, 5040) + ((10980,) if size >= 10980 or os.environ.get("S2SEG_BENCH_RSS_FULL") == "1" else ())
    if heavy_size is None:
        heavy_size = size if dev.type == "cuda" else min(size, 720)
    result = BenchResult(machine=machine_info(dev))
    result.machine["run"] = (f"tile {size}², heavy {heavy_arch if heavy else 'off'} on {heavy_size}², "
                             f"RSS sizes {', '.join(str(s) for s in rss_sizes) or 'off'}" + (", quick" if quick else ""))

    tile = sample_tile(work, size, log)
    builtin = load_model(resolve_card("builtin"), dev)
    regimes = [("built-in (dense, I/O-bound)", "builtin", tile, builtin, bench_config(chunk_size=240 if quick else 0))]
    if heavy:
        folder = heavy_model_folder(work, heavy_arch, log)
        heavy_model = load_model(resolve_card(folder), dev)
        heavy_tile = tile if heavy_size == size else sample_tile(work, heavy_size, log)
        # Several chunks even on a small crop, so the stages can overlap.
        unit = aligned_unit(120)
        heavy_chunk = unit if quick else (0 if heavy_size >= 2 * 2520 else max(unit, math.ceil(heavy_size / 2 / unit) * unit))
        regimes.append((f"{heavy_arch} BEN v2 (patch, compute-bound)", "heavy", heavy_tile, heavy_model,
                        bench_config(chunk_size=heavy_chunk)))

    pipeline_section = Section("Pipeline against its floors", [
        "regime", "tile", "chunks", "patches", "I/O floor s", "compute floor s", "pipeline s",
        f"{BUSY_HEADER} s", "pipeline ÷ max(floor)"])
    floors_section = Section("I/O floor detail", ["regime", "read s", "write + overviews s", "of which flush (fsync) s", "total s"])
    outputs: dict[str, Any] = {}
    for label, key, regime_tile, model, config in regimes:
        log(f"[bench] {label}: pipeline, I/O floor, compute floor on {regime_tile.parent.name}")
        r = run_regime(key, regime_tile, model, config, work)
        outputs[key] = r
        ratio = r["pipeline"] / max(r["io_floor"], r["compute_floor"])
        result.ratios[f"pipeline_over_floor_{key}"] = ratio
        result.seconds.update({f"{key}_pipeline": r["pipeline"], f"{key}_io_floor": r["io_floor"],
                               f"{key}_compute_floor": r["compute_floor"]})
        busy = r["busy"]
        pipeline_section.rows.append([
            label, f"{r['size']}²", f"{r['n_chunks']} × {r['chunk_size']}", patches_cell(r), fmt_s(r["io_floor"]),
            fmt_s(r["compute_floor"]), fmt_s(r["pipeline"]),
            busy_cells(busy), f"{ratio:.2f}"])
        floors_section.rows.append([label, fmt_s(r["read"]), fmt_s(r["write"]), fmt_s(r["flush"]), fmt_s(r["io_floor"])])
        result.targets.append(Target(
            f"pipeline ≤ {PIPELINE_OVER_FLOOR_MAX} × max(I/O, compute floor), {label}", f"{ratio:.2f}×",
            f"≤ {PIPELINE_OVER_FLOOR_MAX}×", ratio <= PIPELINE_OVER_FLOOR_MAX, pipeline_note(r)))
        if r["pixels_computed"] is not None:  # issue 16: a one-pass model's pipeline against its I/O floor alone
            over_io = r["pipeline"] / r["io_floor"]
            result.ratios[f"pipeline_over_io_floor_{key}"] = over_io
            result.targets.append(Target(
                f"one-pass pipeline ≤ {ONE_PASS_OVER_IO_MAX} × its I/O floor, {label}", f"{over_io:.2f}×",
                f"≤ {ONE_PASS_OVER_IO_MAX}×", over_io <= ONE_PASS_OVER_IO_MAX, pipeline_note(r)))
            bound_target = cpu_bound_target(r, label, ONE_PASS_OVER_IO_MAX)  # beside it: the floor 2 cores allow
            result.ratios[f"pipeline_over_cpu_bound_{key}"] = r["pipeline"] / max(r["io_floor"], cpu_bound(r))
            result.targets.append(bound_target)
            if r["engine"] is not None:  # and the engine alone: the model's products replayed, its work taken out
                result.ratios[f"engine_over_io_floor_{key}"] = r["engine"]["seconds"] / r["io_floor"]
                result.targets.append(engine_alone_target(r, label, ONE_PASS_OVER_IO_MAX))
    pipeline_section.notes.append(
        "busy = time each stage thread spent working (SegmentResult.timings); with overlapping stages the wall "
        "time approaches the largest of them.")
    result.sections += [pipeline_section, floors_section]

    log("[bench] inference overhead per model kind")
    heavy_case = next(((t, m, c) for _, key, t, m, c in regimes if key == "heavy"), None)
    overhead_section(result, overhead_cases(tile, builtin, heavy_case, Path(peer_scene) if peer_scene else None, log),
                     work, log, repeats=1 if quick else 2)

    log("[bench] blending + confidence: ours, seed-style loop, MONAI")
    blend_section(result, quick, blend_chunk)

    if nodata:
        log("[bench] nodata: half-nodata tile against the full tile")
        nodata_section(result, work, tile, builtin, regimes[0][4], outputs["builtin"])

    if rss_sizes:
        log(f"[bench] peak RSS in fresh processes: {', '.join(f'{s}²' for s in rss_sizes)}")
        rss_section(result, work, rss_sizes, log)

    if outputs:
        outputs_section(result, work, tile, builtin, regimes[0][4], log)

    if encoding:
        log("[bench] output encoding")
        encoding_section(result, outputs["builtin"], work)

    if mask:
        log("[bench] masking clouds, shadows and snow: scl and the cloud model against the unmasked run")
        mask_section(result, work, dev, log, size=min(size, 360) if quick else MASK_BENCH_SIZE)

    if peer_scene is not None:
        log("[bench] peer: Deepness's tiling against segment, same ONNX model and scene")
        peer_section(result, work, log, scene=Path(peer_scene), repeats=1 if quick else 3)
        log("[bench] reading: the read stage of the peer crop against gdal_translate")
        reading_section(result, log, scene=Path(peer_scene), repeats=1 if quick else 3)

    if startup:
        log("[bench] start-up and peak RSS per model kind, fresh processes")
        startup_section(result, work, log, repeats=1 if quick else 3)
        small = sample_tile(work, STARTUP_SIZE, log)
        cases = [("built-in (torch, dense)", "builtin", small, "")]
        if heavy:
            cases.append((f"{heavy_arch} BEN v2 (torch, patch)", str(heavy_model_folder(work, heavy_arch, log)), small, ""))
        if peer_scene is not None and (Path(peer_scene) / "s2_B02.jp2").is_file():
            from s2seg.core.sentinel2 import discover

            cases.append((f"{PEER_MODEL} (ONNX, dense)", PEER_MODEL, Path(peer_scene),
                          crop_bbox(discover(peer_scene), CROP)))
        memory_section(result, cases, work, log)

    result.machine["load_end"] = load_average()
    result.seconds["bench_total"] = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m s2seg.benchmarks.bench [--size N] [--full] [--quick] [--device D] [--work DIR] [--no-docs]``."""
    parser = argparse.ArgumentParser(prog="python -m s2seg.benchmarks.bench",
                                     description="Benchmark the pipeline against its I/O and compute floors and its peers; "
                                                 "prints the tables and writes docs/benchmarks.md.")
    parser.add_argument("--size", type=int, default=5040, help="sample tile edge in 10 m pixels (default 5040)")
    parser.add_argument("--full", action="store_true", help="use a full 10980² tile (adds the full-tile peak-RSS run)")
    parser.add_argument("--quick", action="store_true", help="small chunks and cases: a smoke run, not a measurement")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--work", type=Path, default=None, help=f"folder for tiles, models and outputs (default {DEFAULT_WORK_DIR})")
    parser.add_argument("--no-docs", action="store_true", help=f"do not write {DOCS_PATH.name}")
    args = parser.parse_args(argv)
    return run_bench(10980 if args.full else args.size, quick=args.quick, device=args.device, work_dir=args.work,
                     docs=None if args.no_docs else DOCS_PATH)


if __name__ == "__main__":
    sys.exit(main())
