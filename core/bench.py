"""`s2seg bench`: the engine against its floors and its peers, as ratios measured in one run.

Sections (each a table in ``docs/benchmarks.md``):

1. **I/O floor** — read every band window the pipeline reads and write the same
   products (the pipeline's own outputs, window by window) with the same GDAL
   options and overviews; no model, no blending.
2. **Compute floor** — the model's forward pass alone on as many patches as the
   pipeline sends (nodata patches excluded), same batch size and device.
3. **Pipeline** — :func:`s2seg.core.pipeline.segment` end to end, with the busy
   time of every stage; target: wall ≤ 1.15 × max(I/O floor, compute floor).
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

Absolute seconds depend on the machine and its load; the targets are ratios.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import __version__

#: Where sample tiles, model folders and outputs are kept between runs (reused when present).
DEFAULT_WORK_DIR = Path("out") / "bench"
DOCS_PATH = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
#: Targets of issue 7, as ratios.
PIPELINE_OVER_FLOOR_MAX = 1.15
SEED_SPEEDUP_MIN = 20.0
MONAI_SPEEDUP_MIN = 2.0
HALF_NODATA_MAX = 0.6
RSS_GROWTH_MAX = 1.2
RSS_FULL_TILE_MAX_GB = 4.0
AGREEMENT_TOL = 1e-5
#: (label, GDAL COMPRESS, extra creation options): GDAL's default ZSTD level is 9; level 1 is the fast end.
CODECS = (("LZW", "LZW", {}), ("DEFLATE", "DEFLATE", {}), ("ZSTD", "ZSTD", {}), ("ZSTD level 1", "ZSTD", {"zstd_level": 1}))
ENCODING_MAX_SIZE = 2520  # products are cropped to this (top-left) to keep the section short

Log = Callable[[str], None]

#: Written below the measured tables: what was optimised and how the numbers are to be read.
NOTES = """
## How to read this, and what was optimised

* Run: `make bench` (5040² tile, built-in model + a random-weight ResNet-50 in BigEarthNet v2 format on a
  720² crop with 4 chunks, since a ResNet-50 costs ~0.2 s per 120² patch on 2 CPU cores), `s2seg bench --full`
  for 10980² (adds the 10980² peak-RSS run; minutes). `S2SEG_BENCH_RSS_FULL=1` adds the 10980² RSS run to the
  default size. Sample tiles, the model folder and outputs are kept in `out/bench/` and reused.
* The development machine is a shared 2-core VM: other processes take a core at times, and then torch's
  2-thread (OpenMP) kernels run 4–10× slower than 1-thread ones on small operations. Seconds vary ±2× from
  run to run; ratios measured within one run are what the targets use.
* Profile of the built-in pipeline on a 2520² tile (pyinstrument + torch.profiler, before the changes):
  inference 52 s of 61 s wall, in the built-in model's per-pixel ops (broadcast adds/subs over
  (N, 21 prototypes, H, W), `avg_pool2d` for the 31-px open-water box filter, the 7-wide `einsum`); the writer
  stage 22 s, in `blend_dense` (3.5 s per 1620² chunk) and `confidence` (`topk` over dim 0 and `xlogy`,
  ~2 s per 512-row strip). Peak RSS 3.2 GB.

| what (single thread unless said) | before | after | how |
|---|---|---|---|
| built-in model, batch 16 × 120² | 0.27–0.37 s | 0.043 s | −½‖f‖² cancels in the softmax: scores are one affine map (bias folded into the weights); max/exp in place; prototypes ordered so the class mixture is a slice plus `index_add_` (no 19×21 matrix); box filter as two small matrix products with replicate padding folded in (`avg_pool2d` was 44 % of the time) |
| confidence, 19 × 512 × 2520 strip | 0.78–1.03 s | 0.06–0.09 s (numba) / 0.24 s (torch fallback) | one fused pass per row (numba, GIL released): max, argmax, runner-up, Σp, Σp ln p with a vectorised polynomial ln; entropy = log₂T − Σp log₂p / T (no normalised copy); rows without valid pixels skipped |
| blend_patch_level, 512-row strip of a 2520² chunk | 0.68 s | 0.03 s | one 2-D GEMM for the x product (the broadcast batched `matmul` hit a slow MKL path: 134 ms), y product as a fused two-row mix, output on huge pages |
| blend_dense, 1620² chunk, 784 patches | 2.5–3.5 s | 0.35 s | window pre-normalised (ΣW is periodic with period S), so 4 strided `addcmul_` into the canvas and no division pass or grid-sized temporaries |
| fresh 200 MB buffer, first touch | 170–280 ms | 70–80 ms | `blend.empty`: anonymous mapping with `MADV_HUGEPAGE` for CPU buffers ≥ 4 MB (page faults dominated simple passes on this VM) |

* Numbers that cannot be met on this machine are reported with the measured reason in the Targets notes.
* Peak RSS on a full tile (built-in model, 64 chunks of 1440). Before (VmRSS sampled every 0.2 s): 3.13 GB,
  2.25× the 2520² run, mostly GDAL's process-wide block cache (GDAL_CACHEMAX, default 5 % of RAM: 1.2 GB here,
  3.2 GB on a 64 GB machine): input blocks (729 MB by chunk 56 of 64), then BuildOverviews filling it again.
  Now (`core/memory.py`, `writer._OverviewPyramid`): a run lowers GDAL's cache to what its reads need, one
  full-width chunk row of input blocks plus one chunk, plus one chunk of products (196 MB for this tile, 66 MB
  at 2520²), and puts it back afterwards (a GDAL_CACHEMAX the user set is left alone). JPEG 2000 check on a
  5040² lossless JP2 tile (1024² tiles): read stage 13.2–13.7 s with the budget (188 MB), 13.0 s with a
  4 GB cache, 20.8 s with 64 MB (tiles decoded twice). Overviews are computed by the writer from the
  written file, 256 rows at a time, each level halved from the one above: 31–32 s against 44 s for GDAL's
  BuildOverviews on the full tile's four products, same sizes, and no multi-threaded read-back (GDAL 3.6 hung
  in BuildOverviews here with GDAL_CACHEMAX set empty). Heap pages freed during a chunk go back to the OS
  once per chunk (glibc `malloc_trim`). Result in the table above.
* What remains of the growth, measured with `mallinfo2` at the peak: GDAL's cache (+180 MB, the strip that
  avoids decoding a block twice) and heap pages freed between two trims (up to +200 MB: glibc raises its mmap
  threshold after large frees, so the 4–32 MB chunk buffers land on per-thread heaps that fragment). Live heap
  memory besides the cache is the same at both sizes (214 vs 223 MB). Tried: trimming in every stage (no
  change), `MALLOC_MMAP_THRESHOLD_` of 4 MB (1.56 GB, but 1.4× slower: 137 s of system time), and
  `MALLOC_ARENA_MAX=2` (1.68 GB and 1.26–1.31 GB at 2520², same speed, ratio unchanged; process-wide, so
  left to the environment of dedicated workers). What would meet 1.2×: chunk-sized buffers allocated once
  and reused (no heap churn), and a reader that keeps the input block row straddling two chunk rows itself,
  so that GDAL's cache only needs one chunk.

### Pipeline changes found by this profile (all applied but 5)

1. **Applied — dense models: blend as the patches arrive.** In `_infer_chunk`, for `output_kind == "dense"`, create
   `canvas = blend.DenseCanvas(chunk, P, C, device)` instead of the `(ny, nx, C, P, P)` zero grid, call
   `canvas.add(ky, kx, out)` after each batch, and pass the canvas on; the writer uses `canvas.result()` where
   it now calls `blend_dense(grid, …)`. Same result (tested against `blend_dense` to 1e-6), 4× less memory per
   chunk in flight (185 MB instead of 684 MB for a 1440² chunk, so `DENSE_OUTPUT_BUDGET_BYTES` allows 2400²
   chunks), no chunk-sized zero grid to page in (15 % of the inference stage in the profile), and nodata patches
   are never touched. Cost of the adds ≈ `blend_dense` (0.6 s vs 0.5 s per 1440² chunk here).
2. **Applied — output check without a temporary**: `check_output` runs `torch.isfinite(output).all()` (a bool copy of
   every output, 18 % of the built-in model's inference stage); `lo, hi = torch.aminmax(output)` then
   `torch.isfinite(lo) and torch.isfinite(hi)` finds the same NaN/Inf (min/max propagate NaN) in one pass.
   Tried by monkeypatching, together with a huge-page zero grid (`blend.empty(shape).zero_()`), on the 2520²
   built-in run: inference stage 20.5 → 17.5 s (mean of two runs each, interleaved).
3. **Applied — encoding: ZSTD level 1** (`zstd_level=1` in `writer.creation_options` for ZSTD; predictor kept): ~3×
   faster than GDAL's default level 9 and within ~1 % of its size (table above); LZW is faster than level 9
   but 33 % larger.
4. **Applied — fsync off the writer's path**: the per-chunk `flush()` with `fsync` was half of the I/O floor
   (25–32 s of a 5040² run) and stalled the writer. Now the writer only flushes GDAL's cache per chunk (the
   data reach the OS), and a fourth thread (`journal`) fsyncs the partial products, then appends the chunk to
   the journal, in order, while the writer goes on: the same guarantee (a chunk is journaled only once its
   data are on disk), but the disk writes overlap the next chunks. The I/O floor still counts the fsyncs
   serially.
5. **Applied — GPU feeding** (measured on a lent H100, below): the per-batch path gathered patches on the host,
   copied each batch through `pin_memory()`, and read a result back three times per batch (the NaN/Inf test,
   the patch indices sent as pageable tensors), so the GPU idled while the host prepared the next batch. Now
   (`core/feed.py`) a chunk goes to the device once (page-locked staging, non-blocking copy), is normalised
   there, and batches are gathered on the device; the NaN/Inf test is folded into a device flag read by the
   writer once per chunk; the writer's kernels run on their own CUDA stream, waiting on an event recorded after
   the chunk's last batch (not on the batches queued after it). Torch models run channels-last on CUDA, and the
   GPU batch is 256 patches of 120² (as many pixels for other patch sizes).
6. **Applied — patch-level models without `--probs`**: `blend.blend_patch_level_confidence(grid, chunk, P, valid,
   rows)` gives the products of a strip without materialising its `(C, rows, width)` probabilities (same
   results; no 93 MB buffer per 512-row strip to write and read again): 0.36 → 0.23 s per 2400² chunk, one
   thread.
## GPU: one H100 (80 GB), 16 cores (`tools/measure_gpu.py`, 2026-11-25)

The GPU machine has torch 2.11 + CUDA but no GDAL Python bindings, so `s2seg bench` cannot run there;
`tools/measure_gpu.py` runs the engine's own stages instead (rasterio wheel carried): compute floor (forward
passes alone on normalised patches already on the GPU), the inference stage (`_Run._infer_chunk` over every
chunk, pixels in memory) and the pipeline (`_Run.execute`: reader thread, inference, writer thread with
blending, confidence, statistics and preview) with the GeoTIFF encoding left out. Input: the synthetic
sample tile as ZSTD GeoTIFF (decodes faster than the JPEG 2000 of real products). ResNet-50 = random-weight
BigEarthNet v2 checkpoint, 10 bands, 120² patches.

| engine | model | tile | batch | floor s | inference stage s (÷ floor) | pipeline s | read s (alone) |
|---|---|---|---|---|---|---|---|
| before (per-batch host gather) | ResNet-50 | 5040² | 64 | 0.84 | 1.68 (2.01×) | 2.29 | 1.00 |
| after, same batch | ResNet-50 | 5040² | 64 | 0.75 | 1.15 (1.54×) | 1.86 | 1.09 |
| after, defaults (256, channels-last) | ResNet-50 | 5040² | 256 | 0.35 | 0.56 (1.60×) | 1.39 | 1.29 |
| before | built-in | 5040² | 64 | 0.06 | 0.55 (9.9×) | 0.88 | 0.89 |
| after, defaults | built-in | 5040² | 256 | 0.05 | 0.12 (2.4×) | 0.79 | 0.85 |
| after, defaults | ResNet-50 | **10980²** | 256 | 1.59 | 1.75 (1.10×) | **4.35** | 4.45 |
| after, defaults, `--half` | ResNet-50 | 10980² | 256 | 1.11 | 1.28 (1.15×) | 4.97 | 4.45 |
| after, defaults, 10 read threads | ResNet-50 | 10980² | 256 | — | — | 3.97 | 3.54 |
| after, defaults | built-in | 10980² | 256 | 0.23 | 0.58 (2.5×) | 3.70 | 3.84 |

Forward pass alone, ResNet-50, ms per batch (patches/s): batch 64 7.98 (8,000); batch 256 float32 16.7
(15,400), float16 12.8 (20,100); channels-last batch 256 float32 11.2 (22,800), float16 9.2 (27,800);
channels-last batch 512 float16 13.7 (37,400). Small batches leave the H100 waiting on kernel launches.

* A full tile with a ResNet-50 on one H100: 35,344 patches, 1.6 s of forward passes (float32): the GPU is
  no longer what takes time. Reading is: the pipeline ran in 4.35 s, 0.98 × reading alone (4.45 s) — every
  other stage hidden behind it. With real JPEG 2000 bands (≈ 40 CPU-seconds of decoding per tile, measured
  on this VM: 7.6 s per 10 m band) spread over 10 read threads, and the four products encoded with GDAL's
  threads (2.8 s per float32 product on 2 cores, fewer seconds on 16), a full tile is **≈ 10–15 s**
  (estimate from these measurements: decoding bound), well under the 60 s goal.
* `cudnn.benchmark` stays off: each new batch shape (the last batch of every chunk) triggered autotuning and
  made the inference stage 2.5× slower (3.27 s against 1.33 s, 5040², batch 64).
* Float16 (`--half`) gains 30 % in the forward pass but changes 1.4 % of the built-in model's classes
  (ties between close prototypes): kept opt-in.
* CPU against CUDA (built-in model, 2400² tile, after the fix below): 99.99997 % of the classes equal (2 of
  5.76 M pixels, near-ties), the same nodata, max probability within 1.0e-6; 4.42 s on the CPU (16 cores),
  0.96 s on the GPU (GeoTIFF encoding left out). The first comparison failed and found a miscompile on that
  machine's CPU path: numba 0.68.0 (numpy 2.5.2) wrote 8 bytes past each row of the class array in the fused
  confidence kernel, so rows split over threads (16 cores: 8 threads) lost their first 8 class ids. The class
  ids are now stored in a loop of their own (no overrun, measured there) and tests check that every kernel
  writes inside its rows and that the threaded split equals the single-threaded products.
"""


# ------------------------------------------------------------------ results

@dataclass
class Section:
    """One table of the report."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Target:
    name: str
    measured: str
    goal: str
    met: bool | None  # None: not measured in this run
    note: str = ""


@dataclass
class BenchResult:
    """Everything a run measured; ``ratios`` are what tests and targets use."""

    machine: dict[str, Any]
    sections: list[Section] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def markdown(self) -> str:
        m = self.machine
        lines = [
            "# s2seg benchmarks",
            "",
            "Generated by `make bench` (`s2seg bench`, `s2seg.core.bench.run_bench`). Every target is a ratio "
            "measured in the same run; absolute seconds depend on the machine and its load.",
            "",
            f"* date: {m['date']}",
            f"* machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']:.0f} GB RAM; device {m['device']}"
            + (f" ({m['gpu']})" if m.get("gpu") else ""),
            f"* load average at start / end: {m['load_start']} / {m.get('load_end', '?')}",
            f"* versions: s2seg {m['s2seg']}, Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads), "
            f"numpy {m['numpy']}, rasterio {m['rasterio']}, GDAL {m['gdal']}, MONAI {m['monai']}",
            f"* run: {m['run']}",
            "",
            "## Targets",
            "",
            "| target | measured | goal | met |",
            "|---|---|---|---|",
        ]
        for t in self.targets:
            met = "—" if t.met is None else ("yes" if t.met else "**no**")
            lines.append(f"| {t.name} | {t.measured} | {t.goal} | {met} |")
        notes = [t for t in self.targets if t.note]
        if notes:
            lines.append("")
            for t in notes:
                lines.append(f"* **{t.name}**: {t.note}")
        for s in self.sections:
            lines += ["", f"## {s.title}", "", "| " + " | ".join(s.header) + " |", "|" + "---|" * len(s.header)]
            lines += ["| " + " | ".join(r) + " |" for r in s.rows]
            if s.notes:
                lines.append("")
                lines += [f"* {n}" for n in s.notes]
        return "\n".join(lines) + "\n" + NOTES

    def text(self) -> str:
        out = []
        for s in self.sections:
            out.append(f"\n== {s.title}")
            widths = [max(len(h), *(len(r[i]) for r in s.rows)) if s.rows else len(h) for i, h in enumerate(s.header)]
            out.append("  ".join(h.ljust(w) for h, w in zip(s.header, widths)))
            out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in s.rows]
        out.append("\n== Targets")
        for t in self.targets:
            met = "n/a" if t.met is None else ("MET" if t.met else "NOT MET")
            out.append(f"  {met:8s} {t.name}: {t.measured} (goal {t.goal})")
        return "\n".join(out)


# ------------------------------------------------------------------ entry point

def run_bench(size: int = 5040, *, heavy: bool = True, heavy_size: int | None = None, heavy_arch: str = "resnet50",
              rss_sizes: tuple[int, ...] | None = None, encoding: bool = True, nodata: bool = True,
              blend_chunk: int | None = None, quick: bool = False, device: str = "auto",
              work_dir: str | Path | None = None, docs: str | Path | None = DOCS_PATH, log: Log | None = None) -> int:
    """Run the benchmark on a ``size``² sample tile, print the table and write ``docs``; 0 when it ran.

    ``rss_sizes`` defaults to 2520² and 5040², plus 10980² when ``size`` is 10980
    (``s2seg bench --full``) or ``S2SEG_BENCH_RSS_FULL=1``. ``heavy_size`` is the
    crop used for the heavy model (default: the tile on a GPU, 720² on a CPU, where a
    ResNet-50 takes ~0.2 s per patch). Targets not met are reported, not fatal.
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    result = bench(size, heavy=heavy, heavy_size=heavy_size, heavy_arch=heavy_arch, rss_sizes=rss_sizes,
                   encoding=encoding, nodata=nodata, blend_chunk=blend_chunk, quick=quick, device=device,
                   work_dir=work_dir, log=log)
    print(result.text())
    if docs:
        docs = Path(docs)
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(result.markdown(), encoding="utf-8")
        log(f"wrote {docs}")
    return 0


def bench(size: int = 5040, *, heavy: bool = True, heavy_size: int | None = None, heavy_arch: str = "resnet50",
          rss_sizes: tuple[int, ...] | None = None, encoding: bool = True, nodata: bool = True,
          blend_chunk: int | None = None, quick: bool = False, device: str = "auto",
          work_dir: str | Path | None = None, log: Log | None = None) -> BenchResult:
    """Measure everything :func:`run_bench` reports and return it (no printing, no docs)."""
    from .grid import aligned_unit
    from .models import load_model, pick_device, resolve_card

    log = log or (lambda message: None)
    started = time.perf_counter()
    work = Path(work_dir or DEFAULT_WORK_DIR).resolve()
    work.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    if rss_sizes is None:
        rss_sizes = (2520, 5040) + ((10980,) if size >= 10980 or os.environ.get("S2SEG_BENCH_RSS_FULL") == "1" else ())
    if heavy_size is None:
        heavy_size = size if dev.type == "cuda" else min(size, 720)
    result = BenchResult(machine=_machine(dev))
    result.machine["run"] = (f"tile {size}², heavy {heavy_arch if heavy else 'off'} on {heavy_size}², "
                             f"RSS sizes {', '.join(str(s) for s in rss_sizes) or 'off'}" + (", quick" if quick else ""))

    tile = _sample_tile(work, size, log)
    builtin = load_model(resolve_card("builtin"), dev)
    regimes = [("built-in (dense, I/O-bound)", "builtin", tile, builtin, _config(chunk_size=240 if quick else 0))]
    if heavy:
        folder = _heavy_model_folder(work, heavy_arch, log)
        heavy_model = load_model(resolve_card(folder), dev)
        heavy_tile = tile if heavy_size == size else _sample_tile(work, heavy_size, log)
        # Several chunks even on a small crop, so the stages can overlap.
        unit = aligned_unit(120)
        heavy_chunk = unit if quick else (0 if heavy_size >= 2 * 2520 else max(unit, math.ceil(heavy_size / 2 / unit) * unit))
        regimes.append((f"{heavy_arch} BEN v2 (patch, compute-bound)", "heavy", heavy_tile, heavy_model,
                        _config(chunk_size=heavy_chunk)))

    pipeline_section = Section("Pipeline against its floors", [
        "regime", "tile", "chunks", "patches", "I/O floor s", "compute floor s", "pipeline s",
        f"{BUSY_HEADER} s", "pipeline ÷ max(floor)"])
    floors_section = Section("I/O floor detail", ["regime", "read s", "write + overviews s", "of which flush (fsync) s", "total s"])
    outputs: dict[str, Any] = {}
    for label, key, regime_tile, model, config in regimes:
        log(f"[bench] {label}: pipeline, I/O floor, compute floor on {regime_tile.parent.name}")
        r = _regime(key, regime_tile, model, config, work)
        outputs[key] = r
        ratio = r["pipeline"] / max(r["io_floor"], r["compute_floor"])
        result.ratios[f"pipeline_over_floor_{key}"] = ratio
        result.seconds.update({f"{key}_pipeline": r["pipeline"], f"{key}_io_floor": r["io_floor"],
                               f"{key}_compute_floor": r["compute_floor"]})
        busy = r["busy"]
        pipeline_section.rows.append([
            label, f"{r['size']}²", f"{r['n_chunks']} × {r['chunk_size']}", str(r["n_patches"]), _s(r["io_floor"]),
            _s(r["compute_floor"]), _s(r["pipeline"]),
            _busy_cells(busy), f"{ratio:.2f}"])
        floors_section.rows.append([label, _s(r["read"]), _s(r["write"]), _s(r["flush"]), _s(r["io_floor"])])
        result.targets.append(Target(
            f"pipeline ≤ {PIPELINE_OVER_FLOOR_MAX} × max(I/O, compute floor), {label}", f"{ratio:.2f}×",
            f"≤ {PIPELINE_OVER_FLOOR_MAX}×", ratio <= PIPELINE_OVER_FLOOR_MAX, _pipeline_note(r)))
    pipeline_section.notes.append(
        "busy = time each stage thread spent working (SegmentResult.timings); with overlapping stages the wall "
        "time approaches the largest of them.")
    result.sections += [pipeline_section, floors_section]

    log("[bench] blending + confidence: ours, seed-style loop, MONAI")
    _blend_section(result, quick, blend_chunk)

    if nodata:
        log("[bench] nodata: half-nodata tile against the full tile")
        _nodata_section(result, work, tile, builtin, regimes[0][4], outputs["builtin"])

    if rss_sizes:
        log(f"[bench] peak RSS in fresh processes: {', '.join(f'{s}²' for s in rss_sizes)}")
        _rss_section(result, work, rss_sizes, log)

    if encoding:
        log("[bench] output encoding")
        _encoding_section(result, outputs["builtin"], work)

    result.machine["load_end"] = _load()
    result.seconds["bench_total"] = time.perf_counter() - started
    return result


# ------------------------------------------------------------------ machine and inputs

def _machine(dev: torch.device) -> dict[str, Any]:
    import rasterio
    from osgeo import gdal

    try:
        import monai
        monai_version = monai.__version__
    except ImportError:
        monai_version = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory = float("nan")
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory, "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "load_start": _load(), "s2seg": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "numpy": np.__version__, "rasterio": rasterio.__version__,
        "gdal": gdal.__version__, "monai": monai_version,
    }


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _s(seconds: float) -> str:
    return f"{seconds:.2f}" if seconds < 10 else f"{seconds:.1f}"


def _sample_tile(work: Path, size: int, log: Log) -> Path:
    from .sample import write_sample_tile

    folder = work / f"tile-{size}"
    found = sorted(folder.glob("*.SAFE")) if folder.is_dir() else []
    if found:
        return found[0]
    log(f"[bench] writing a {size}² sample tile into {folder}")
    return write_sample_tile(folder, size=size, seed=0, level="L2A", layout="safe")


def _half_nodata_tile(work: Path, tile: Path) -> Path:
    """A copy of ``tile`` with DN 0 (nodata) in the right half of every band."""
    from rasterio.windows import Window
    import rasterio

    from .sentinel2 import discover

    folder = work / f"{tile.parent.name}-half-nodata"
    target = folder / tile.name
    if target.is_dir():
        return target
    staging = folder / (tile.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(tile, staging)
    for band in discover(staging).files.values():
        with rasterio.open(band.path, "r+") as ds:
            half = ds.width // 2
            for row in range(0, ds.height, 1024):
                h = min(1024, ds.height - row)
                ds.write(np.zeros((h, ds.width - half), dtype=ds.dtypes[0]), 1, window=Window(half, row, ds.width - half, h))
    staging.rename(target)
    return target


def _heavy_model_folder(work: Path, arch: str, log: Log) -> Path:
    """A BigEarthNet v2 folder (config.json + model.safetensors) of ``arch`` with random weights."""
    import timm
    from safetensors.torch import save_file

    from .models.ben_v2 import KEY_PREFIX

    folder = work / f"{arch}-s2-v0.2.0"
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return folder
    log(f"[bench] writing a random-weight {arch} in BigEarthNet v2 format to {folder}")
    torch.manual_seed(0)
    module = timm.create_model(arch, pretrained=False, num_classes=19, in_chans=10).eval()
    folder.mkdir(parents=True, exist_ok=True)
    config = {"config": {"network_type": arch, "channels": 10, "classes": 19, "image_size": 120, "dropout": 0.15}}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    save_file({KEY_PREFIX + k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def _config(**fields: Any):
    """An EngineConfig for benchmark runs: never resume an earlier run's partial outputs."""
    import dataclasses

    from .config import EngineConfig

    if "resume" in {f.name for f in dataclasses.fields(EngineConfig)}:
        fields.setdefault("resume", "never")
    return EngineConfig(**fields)


def _in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` in a fresh thread, as the pipeline's stages run, and return its result.

    torch's intra-op (OpenMP) team of the main thread behaved very differently from a worker
    thread's on the shared 2-core machine (a ResNet-50 batch: 2.5 s in the main thread, 1.2 s in a
    worker), so every measurement that stands against a pipeline stage runs in a worker thread too.
    """
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=body, name="s2seg-bench")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _best(n: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Best wall time of ``n`` runs of ``fn`` (each in a worker thread) and the last result."""
    best, result = math.inf, None
    for _ in range(n):
        t0 = time.perf_counter()
        result = _in_thread(fn)
        best = min(best, time.perf_counter() - t0)
    return best, result


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ------------------------------------------------------------------ pipeline and floors

def _regime(key: str, tile: Path, model, config, work: Path) -> dict[str, Any]:
    from .config import EngineConfig
    from .grid import plan
    from .pipeline import _auto_chunk_size, segment
    from .sentinel2 import discover

    bandset = discover(tile)
    card = model.card
    chunk_size = config.chunk_size or _auto_chunk_size(card, bandset, model.device)
    batch = config.batch_size or EngineConfig.default_batch_size(model.device.type, card.patch_size)
    config = config.with_(chunk_size=chunk_size, batch_size=batch, overwrite=True)
    grid = plan(bandset.height, bandset.width, card.patch_size, chunk_size)

    out_dir = work / f"out-{key}-{bandset.width}"
    _sync(model.device)
    result = segment(tile, out_dir, model=model, config=config)
    io = _io_floor(bandset, card, grid, config, result.products, work / f"io-{key}-{bandset.width}")
    compute = _in_thread(_compute_floor, model, card, bandset, io["sample"], io["n_patches"], batch)
    return {
        "size": bandset.width, "chunk_size": chunk_size, "n_chunks": len(grid.chunks), "n_patches": io["n_patches"],
        "pipeline": result.seconds, "busy": {k: result.timings.get(k, 0.0) for k in BUSY_KEYS},
        "read": io["read"], "write": io["write"], "flush": io["flush"], "io_floor": io["read"] + io["write"], "compute_floor": compute,
        "products": result.products, "grid": grid, "bandset": bandset, "config": config,
    }


def _io_floor(bandset, card, grid, config, products: dict[str, Path], io_dir: Path) -> dict[str, Any]:
    """Read every chunk window the pipeline reads; write the pipeline's products again, window by window."""
    import rasterio
    from rasterio.windows import Window

    from .feed import patches_with_data
    from .reader import ChunkReader
    from .writer import ProductWriter

    shutil.rmtree(io_dir, ignore_errors=True)
    io_dir.mkdir(parents=True)
    s = card.stride
    t_read = t_write = t_flush = 0.0
    n_patches = 0
    sample = None
    sources = {k: rasterio.open(p) for k, p in products.items()}
    try:
        with ChunkReader(bandset, card.bands, card.name, card.resampling, config.read_threads) as reader:
            kwargs = dict(width=bandset.width, height=bandset.height, crs=bandset.crs, transform=bandset.transform,
                          class_names=card.class_names, class_colours=card.class_colours, write_probs=False,
                          compress=config.compress)
            try:  # the pipeline's GeoTIFF block size, where the writer takes one
                from .grid import block_size
                writer = ProductWriter(io_dir, bandset.name, block=block_size(grid.chunk_size), **kwargs)
            except (ImportError, TypeError):
                writer = ProductWriter(io_dir, bandset.name, **kwargs)
            try:
                for chunk in grid.chunks:
                    t0 = time.perf_counter()
                    pixels = reader.read(chunk.input_rows, chunk.input_cols)
                    t_read += time.perf_counter() - t0
                    todo = patches_with_data(pixels.valid, chunk.n_patches_y, chunk.n_patches_x, s)
                    n_patches += int(todo.sum())
                    if sample is None and todo.any():
                        sample = (pixels, np.argwhere(todo))
                    window = Window(chunk.col0, chunk.row0, chunk.width, chunk.height)
                    arrays = {k: src.read(1, window=window) for k, src in sources.items() if k != "probs"}
                    t0 = time.perf_counter()
                    for k, array in arrays.items():
                        writer.write(k, array, chunk.row0, chunk.col0)
                    if hasattr(writer, "flush"):  # as the pipeline does after every chunk (resume journal)
                        t1 = time.perf_counter()
                        writer.flush()
                        t_flush += time.perf_counter() - t1
                    t_write += time.perf_counter() - t0
                t0 = time.perf_counter()
                writer.commit()
                t_write += time.perf_counter() - t0
            except BaseException:
                writer.abort()
                raise
    finally:
        for src in sources.values():
            src.close()
    return {"read": t_read, "write": t_write, "flush": t_flush, "n_patches": n_patches, "sample": sample}


def _compute_floor(model, card, bandset, sample, n_patches: int, batch: int) -> float:
    """Forward passes alone on ``n_patches`` patches (cycled from the first chunk), already normalised on the device."""
    from .feed import Normaliser, PatchFeed

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
        _sync(model.device)
        t0 = time.perf_counter()
        for b in batches:
            model.predict(b)
        _sync(model.device)
        return time.perf_counter() - t0


#: Stage timings of SegmentResult.timings shown in the tables: threads' busy seconds.
BUSY_KEYS = ("read", "inference", "write", "flush", "sync")
BUSY_HEADER = "busy read / inference / write (flush) / journal sync"


def _busy_cells(b: dict[str, float]) -> str:
    return f"{_s(b['read'])} / {_s(b['inference'])} / {_s(b['write'])} ({_s(b['flush'])}) / {_s(b['sync'])}"


def _pipeline_note(r: dict[str, Any]) -> str:
    busy = r["busy"]
    floor = max(r["io_floor"], r["compute_floor"])
    ratio = r["pipeline"] / floor
    if ratio <= PIPELINE_OVER_FLOOR_MAX:
        return ""
    parts = [f"wall {_s(r['pipeline'])} s against floors of {_s(r['io_floor'])} s (I/O, of which {_s(r['flush'])} s "
             f"fsync) and {_s(r['compute_floor'])} s (compute)."]
    if busy["inference"] > 1.3 * r["compute_floor"]:
        parts.append(f"The inference stage was busy {_s(busy['inference'])} s for {_s(r['compute_floor'])} s of forward "
                     "passes: the rest is the stage's own per-batch work (gathering and normalising patches, adding dense "
                     "outputs into the chunk's canvas) and waiting for a core: the reader's decoding and the writer's "
                     "blending, confidence and encoding run on the same cores.")
    parts.append(f"The writer stage was busy {_s(busy['write'])} s ({_s(busy['flush'])} s flushing GDAL's cache; the "
                 f"journal thread's fsyncs took {_s(busy['sync'])} s beside it).")
    work = busy["read"] + busy["inference"] + busy["write"]
    cores = os.cpu_count() or 1
    if work > 0.8 * cores * r["pipeline"]:
        parts.append(f"The stages' busy seconds add up to {_s(work)} s of work for {cores} cores, so on this machine the "
                     "wall time cannot come down to the larger floor: the floors are each measured alone, with every "
                     "core to themselves.")
    else:
        outside = r["pipeline"] - max(busy["read"], busy["inference"], busy["write"])
        parts.append(f"The stages overlap; {_s(outside)} s of the wall time lie outside the busiest stage: loading the "
                     "model, opening the bands, filling the pipeline before the first batch and building overviews "
                     "after the last chunk, which a tile of 4 chunks cannot amortise.")
    return " ".join(parts)


# ------------------------------------------------------------------ blending + confidence

def seed_blend_confidence(grid: np.ndarray, chunk, patch_size: int, valid: np.ndarray) -> dict[str, np.ndarray]:
    """The seed's way, kept here as the reference: a Python loop over patches accumulating P·W and W into
    full-chunk arrays, then per-pixel argmax / max / sort / entropy with numpy."""
    s = patch_size // 2
    ny, nx, c = grid.shape[:3]
    dense = grid.ndim == 5
    w = np.sin(np.pi * (np.arange(patch_size) + 0.5) / patch_size).astype(np.float32)
    window = np.outer(w, w)
    height, width = (ny + 1) * s, (nx + 1) * s
    num = np.zeros((c, height, width), dtype=np.float32)
    den = np.zeros((height, width), dtype=np.float32)
    for iy in range(ny):
        for ix in range(nx):
            y, x = iy * s, ix * s
            pred = grid[iy, ix]
            if dense:
                num[:, y:y + patch_size, x:x + patch_size] += pred * window
            else:
                num[:, y:y + patch_size, x:x + patch_size] += pred[:, None, None] * window
            den[y:y + patch_size, x:x + patch_size] += window
    top, left = chunk.row0 - chunk.ky0 * s, chunk.col0 - chunk.kx0 * s
    probs = num[:, top:top + chunk.height, left:left + chunk.width] / den[top:top + chunk.height, left:left + chunk.width]
    classes = probs.argmax(axis=0).astype(np.uint8)
    maxprob = probs.max(axis=0)
    ordered = np.sort(probs, axis=0)
    gap = ordered[-1] - ordered[-2]
    q = probs / probs.sum(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(q > 0, q * np.log2(q), 0.0).sum(axis=0)
    invalid = ~valid
    classes[invalid] = 255
    for a in (maxprob, entropy, gap):
        a[invalid] = np.nan
    return {"probs": probs, "classes": classes, "maxprob": maxprob, "entropy": entropy.astype(np.float32), "gap": gap}


def plain_confidence(probs: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """The straightforward torch confidence (topk, xlogy over the whole array), used after MONAI's aggregation."""
    c = probs.shape[0]
    top = torch.topk(probs, 2, dim=0)
    total = probs.sum(dim=0).clamp_min(torch.finfo(probs.dtype).tiny)
    q = probs / total
    entropy = (-torch.special.xlogy(q, q).sum(dim=0) / math.log(2.0)).clamp(0.0, math.log2(c))
    invalid = ~valid
    nan = torch.tensor(float("nan"), dtype=probs.dtype, device=probs.device)
    return {"classes": top.indices[0].to(torch.uint8).masked_fill(invalid, 255),
            "maxprob": torch.where(invalid, nan, top.values[0]), "entropy": torch.where(invalid, nan, entropy),
            "gap": torch.where(invalid, nan, top.values[0] - top.values[1])}


def monai_blend_confidence(grid: torch.Tensor, chunk, patch_size: int, valid: torch.Tensor, batch: int) -> tuple[dict[str, torch.Tensor], float]:
    """MONAI's sliding-window aggregation over the chunk's input region (same window, 50 % overlap): the
    predictor hands back the precomputed patch outputs by window position. Returns the products and the
    seconds spent inside the predictor (to subtract: only the aggregation is MONAI's work)."""
    from monai.inferers import sliding_window_inference

    from .blend import window_1d

    s = patch_size // 2
    ny, nx, c = grid.shape[:3]
    dense = grid.ndim == 5
    image = torch.zeros((1, 1, (ny + 1) * s, (nx + 1) * s), dtype=torch.float32, device=grid.device)
    w = window_1d(patch_size, grid.device)
    weight = (w[:, None] * w[None, :])[None, None]
    in_predictor = [0.0]

    def predictor(window_data: torch.Tensor, coords) -> torch.Tensor:
        t0 = time.perf_counter()
        iy = torch.tensor([sl[2].start // s for sl in coords], device=grid.device)
        ix = torch.tensor([sl[3].start // s for sl in coords], device=grid.device)
        out = grid[iy, ix]
        if not dense:
            out = out[:, :, None, None].expand(-1, -1, patch_size, patch_size).contiguous()
        in_predictor[0] += time.perf_counter() - t0
        return out

    blended = sliding_window_inference(image, (patch_size, patch_size), batch, predictor, overlap=0.5, mode="constant",
                                       roi_weight_map=weight, with_coord=True)
    top, left = chunk.row0 - chunk.ky0 * s, chunk.col0 - chunk.kx0 * s
    probs = blended[0, :, top:top + chunk.height, left:left + chunk.width]
    products = plain_confidence(probs, valid)
    products["probs"] = probs
    return products, in_predictor[0]


def ours_blend_confidence(grid: torch.Tensor, chunk, patch_size: int, valid: torch.Tensor, keep: bool = False) -> dict[str, Any]:
    """What the pipeline's writer stage does: blend strip by strip, confidence per strip, products to numpy
    (patch-level without kept probabilities: blend and confidence fused, as the pipeline does without --probs)."""
    from .blend import blend_dense, blend_patch_level, blend_patch_level_confidence
    from .pipeline import STRIP_ROWS
    from .uncertainty import confidence

    dense = blend_dense(grid, chunk, patch_size) if grid.ndim == 5 else None
    strips = []
    for r0 in range(chunk.row0, chunk.row1, STRIP_ROWS):
        r1 = min(r0 + STRIP_ROWS, chunk.row1)
        strip_valid = valid[r0 - chunk.row0: r1 - chunk.row0]
        if dense is None and not keep:
            probs, conf = None, blend_patch_level_confidence(grid, chunk, patch_size, strip_valid, rows=(r0, r1))
        else:
            probs = blend_patch_level(grid, chunk, patch_size, rows=(r0, r1)) if dense is None else dense[:, r0 - chunk.row0: r1 - chunk.row0]
            conf = confidence(probs, strip_valid)
        strip = {k: getattr(conf, k).cpu().numpy() for k in ("classes", "maxprob", "entropy", "gap")}
        if keep:
            strip["probs"] = probs.cpu().numpy()
        strips.append(strip)
    return {k: np.concatenate([st[k] for st in strips], axis=-2) for k in strips[0]}


def _blend_case(kind: str, chunk_size: int, classes: int, patch: int, batch: int, seed: int = 0, monai_too: bool = True,
                quick: bool = False) -> dict[str, Any]:
    from .grid import plan

    # An interior chunk of a tile of three chunks a side (a full halo on every side).
    plan_ = plan(3 * chunk_size, 3 * chunk_size, patch, chunk_size)
    chunk = plan_.chunks[4]
    gen = torch.Generator().manual_seed(seed)
    shape = (chunk.n_patches_y, chunk.n_patches_x, classes) + ((patch, patch) if kind == "dense" else ())
    if kind == "dense":
        grid = torch.rand(shape, generator=gen)
        grid /= grid.sum(dim=2, keepdim=True)  # softmax-like: each pixel sums to 1
    else:
        grid = torch.sigmoid(torch.randn(shape, generator=gen) * 2)  # multi-label, like BigEarthNet models
    valid = torch.ones((chunk.height, chunk.width), dtype=torch.bool)
    valid_np = valid.numpy()

    runs = 1 if quick else 3
    t_ours, _ = _best(runs, lambda: ours_blend_confidence(grid, chunk, patch, valid))
    ours = ours_blend_confidence(grid, chunk, patch, valid, keep=True)  # untimed, for comparison

    grid_np = grid.numpy()
    t_seed, seed_out = _best(max(1, runs - 1), lambda: seed_blend_confidence(grid_np, chunk, patch, valid_np))
    agree_seed = _agreement(ours, seed_out)
    # The timed path's own products (fused for patch-level) must agree with the seed as well.
    for key, value in _agreement(ours_blend_confidence(grid, chunk, patch, valid), seed_out).items():
        agree_seed[key] = max(agree_seed.get(key, 0.0), value)
    del seed_out

    t_monai = float("nan")
    agree_monai: dict[str, float] = {}
    try:
        import monai  # noqa: F401
    except ImportError:
        monai = None
    if monai is not None and monai_too:
        def run_monai() -> tuple[dict[str, torch.Tensor], float, float]:
            t0 = time.perf_counter()
            out, in_predictor = monai_blend_confidence(grid, chunk, patch, valid, batch)
            return out, in_predictor, time.perf_counter() - t0 - in_predictor

        t_monai = math.inf
        for _ in range(max(1, runs - 1)):
            monai_out, _, seconds = _in_thread(run_monai)
            t_monai = min(t_monai, seconds)
        agree_monai = _agreement(ours, {k: v.numpy() for k, v in monai_out.items()})
        del monai_out
    return {"chunk": chunk, "n_patches": chunk.n_patches_y * chunk.n_patches_x, "ours": t_ours, "seed": t_seed,
            "monai": t_monai, "agree_seed": agree_seed, "agree_monai": agree_monai}


def _agreement(ours: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float]:
    """Max |difference| per float product, and the share of pixels whose class differs where the top-2 gap
    is not a tie (gap > tolerance)."""
    out = {}
    for key in ("probs", "maxprob", "entropy", "gap"):
        if key in ours and key in other:
            a, b = ours[key].astype(np.float64), np.asarray(other[key], dtype=np.float64)
            both = np.isfinite(a) & np.isfinite(b)
            out[key] = float(np.abs(a[both] - b[both]).max()) if both.any() else 0.0
            out[key + "_nan_mismatch"] = float((np.isnan(a) != np.isnan(b)).sum())
    decided = np.asarray(other["gap"]) > AGREEMENT_TOL
    out["class_mismatch"] = float((ours["classes"][decided] != np.asarray(other["classes"])[decided]).mean()) if decided.any() else 0.0
    return out


def _default_chunk(kind: str) -> int:
    """The pipeline's automatic chunk size on a full tile for a 19-class model of this output kind."""
    from types import SimpleNamespace

    from .models.builtin import BUILTIN_CARD
    from .pipeline import _auto_chunk_size

    card = BUILTIN_CARD if kind == "dense" else BUILTIN_CARD.__class__(**{**BUILTIN_CARD.to_dict(), "output_kind": "patch"})
    return _auto_chunk_size(card, SimpleNamespace(height=10980, width=10980), torch.device("cpu"))


def _blend_section(result: BenchResult, quick: bool, blend_chunk: int | None) -> None:
    from .config import EngineConfig

    section = Section("Blending + confidence on identical patch outputs (19 classes)", [
        "case", "chunk", "patches", "ours s", "seed loop s", "MONAI s", "seed ÷ ours", "MONAI ÷ ours",
        "max |Δ| vs seed", "max |Δ| vs MONAI"])
    batch = EngineConfig.CPU_BATCH_SIZE
    # One-time costs (loading the compiled kernels, first huge-page mappings) are not blending work.
    _blend_case("patch", 240, 19, 120, batch, monai_too=False, quick=True)
    _blend_case("dense", 120, 19, 120, batch, monai_too=False, quick=True)
    cases = [("patch", blend_chunk or (240 if quick else _default_chunk("patch"))),
             ("dense", blend_chunk or (120 if quick else _default_chunk("dense")))]
    worst_seed, worst_monai, worst_diff = math.inf, math.inf, 0.0
    bandwidth: dict[str, tuple[float, float, float]] = {}
    for kind, chunk_size in cases:
        r = _blend_case(kind, chunk_size, 19, 120, batch, quick=quick)
        if kind == "dense":
            gb = r["n_patches"] * 19 * 120 * 120 * 4 / 1e9
            bandwidth[kind] = (gb, r["ours"], r["seed"])
        seed_ratio = r["seed"] / r["ours"]
        monai_ratio = r["monai"] / r["ours"]
        d_seed = max(v for k, v in r["agree_seed"].items() if k in ("probs", "maxprob", "entropy", "gap"))
        d_monai = max((v for k, v in r["agree_monai"].items() if k in ("probs", "maxprob", "entropy", "gap")), default=float("nan"))
        result.ratios[f"blend_seed_over_ours_{kind}"] = seed_ratio
        result.ratios[f"blend_monai_over_ours_{kind}"] = monai_ratio
        result.agreement[f"{kind}_vs_seed"] = d_seed
        result.agreement[f"{kind}_vs_monai"] = d_monai
        result.agreement[f"{kind}_class_mismatch_seed"] = r["agree_seed"]["class_mismatch"]
        result.agreement[f"{kind}_class_mismatch_monai"] = r["agree_monai"].get("class_mismatch", float("nan"))
        label = "patch-level (BigEarthNet-style)" if kind == "patch" else "dense (built-in-style)"
        section.rows.append([label, f"{chunk_size}²", str(r["n_patches"]), _s(r["ours"]), _s(r["seed"]), _s(r["monai"]),
                             f"{seed_ratio:.1f}×", f"{monai_ratio:.1f}×", f"{d_seed:.1e}", f"{d_monai:.1e}"])
        worst_seed, worst_monai = min(worst_seed, seed_ratio), min(worst_monai, monai_ratio)
        worst_diff = max(worst_diff, d_seed, d_monai if not math.isnan(d_monai) else 0.0)
    section.notes += [
        "Best of 3 runs (ours) and 2 runs (seed, MONAI), each in a worker thread like the pipeline's stages. "
        "ours = the pipeline's calls (blend_patch_level per 512-row strip, or blend_dense per chunk, then confidence per "
        "strip, products to numpy). Seed = per-patch Python loop into full-chunk P·W and W arrays, then numpy "
        "argmax/max/sort/entropy. MONAI = sliding_window_inference (roi_weight_map = our sin window, overlap 0.5, "
        "sw_batch_size = CPU batch) fed the same patch outputs by window position (time inside the predictor is "
        "subtracted), then torch topk/xlogy confidence.",
        "Δ = largest difference of blended probabilities, maxprob, entropy (bits) and gap; class labels compared where the "
        "top-2 gap exceeds 1e-5.",
    ]
    result.sections.append(section)
    note = ""
    if worst_seed < SEED_SPEEDUP_MIN and "dense" in bandwidth:
        gb, seconds, seed_seconds = bandwidth["dense"]
        note = (f"the dense case reads {gb:.2f} GB of patch outputs (four P × P maps cover every pixel); ours takes "
                f"{_s(seconds)} s ({gb / seconds:.1f} GB/s, blend, confidence and product arrays included). 20× the seed "
                f"loop means {_s(seed_seconds / SEED_SPEEDUP_MIN)} s, i.e. streaming those bytes at "
                f"{gb / (seed_seconds / SEED_SPEEDUP_MIN):.1f} GB/s on one core, about what one core of this VM copies "
                "memory at, with no time left for the arithmetic. The patch-level case (compute-bound) meets it. "
                "The pipeline blends dense outputs as the patches arrive (blend.DenseCanvas, same bytes to read, 4× "
                "less memory per chunk in flight).")
    result.targets.append(Target("blending + confidence ≥ 20× the seed loop", f"{worst_seed:.1f}× (worst case)",
                                 f"≥ {SEED_SPEEDUP_MIN:.0f}×", worst_seed >= SEED_SPEEDUP_MIN, note))
    result.targets.append(Target("blending + confidence ≥ 2× MONAI aggregation", f"{worst_monai:.1f}× (worst case)",
                                 f"≥ {MONAI_SPEEDUP_MIN:.0f}×", None if math.isnan(worst_monai) else worst_monai >= MONAI_SPEEDUP_MIN))
    result.targets.append(Target("results equal within 1e-5", f"{worst_diff:.1e}", f"≤ {AGREEMENT_TOL:.0e}",
                                 worst_diff <= AGREEMENT_TOL))


# ------------------------------------------------------------------ nodata, RSS, encoding

def _nodata_section(result: BenchResult, work: Path, tile: Path, model, config, full: dict[str, Any]) -> None:
    from .pipeline import segment

    half = _half_nodata_tile(work, tile)
    r = segment(half, work / f"out-half-nodata-{tile.parent.name}", model=model, config=config.with_(overwrite=True))
    full_seconds, fb = full["pipeline"], full["busy"]
    ratio = r.seconds / full_seconds
    result.ratios["half_nodata_over_full"] = ratio
    busy = {k: r.timings.get(k, 0.0) for k in BUSY_KEYS}
    result.sections.append(Section("Nodata patches cost nothing", ["tile", "pipeline s", f"{BUSY_HEADER} s", "÷ full tile"], [
        [f"{tile.parent.name} (full)", _s(full_seconds), _busy_cells(fb), "1.00"],
        ["right half nodata", _s(r.seconds), _busy_cells(busy), f"{ratio:.2f}"],
    ]))
    note = ""
    if ratio > HALF_NODATA_MAX:
        note = (f"inference fell to {busy['inference'] / max(fb['inference'], 1e-9):.2f}× and writing to "
                f"{busy['write'] / max(fb['write'], 1e-9):.2f}× of the full tile, but reading did not "
                f"({_s(busy['read'])} vs {_s(fb['read'])} s: every band window is decoded before its nodata is known), "
                f"nodata chunks are still written and flushed ({_s(busy['flush'])} s), and chunks straddling "
                "the nodata edge blend and write in full.")
    result.targets.append(Target("half-nodata tile ≤ 0.6 × full tile (built-in)", f"{ratio:.2f}×", f"≤ {HALF_NODATA_MAX}×",
                                 ratio <= HALF_NODATA_MAX, note))


def _rss_child(tile: str, output: str) -> None:
    """Run in a fresh process by :func:`_rss_section`: segment with the defaults, print peak RSS as JSON."""
    from .pipeline import segment

    t0 = time.perf_counter()
    r = segment(tile, output, config=_config(overwrite=True))
    hwm_kb = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm_kb = int(line.split()[1])
    if not hwm_kb:  # not Linux: getrusage (kB on Linux, bytes on macOS)
        import resource
        hwm_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_kb": hwm_kb, "seconds": time.perf_counter() - t0, "chunk_size": r.chunk_size,
                      "n_chunks": r.n_chunks}))


def _rss_section(result: BenchResult, work: Path, sizes: tuple[int, ...], log: Log) -> None:
    section = Section("Peak RSS (built-in model, default chunk size, fresh process each)",
                      ["tile", "chunks", "peak RSS MB", "seconds", "÷ smallest tile"])
    peaks: dict[int, float] = {}
    for size in sizes:
        tile = _sample_tile(work, size, log)
        out = work / f"out-rss-{size}"
        code = f"from s2seg.core.bench import _rss_child; _rss_child({str(tile)!r}, {str(out)!r})"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            raise RuntimeError(f"RSS run on {size}² failed: {proc.stderr.strip()[-2000:]}")
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        peaks[size] = data["peak_rss_kb"] / 1024
        section.rows.append([f"{size}²", f"{data['n_chunks']} × {data['chunk_size']}", f"{peaks[size]:.0f}",
                             _s(data["seconds"]), ""])
    smallest = min(sizes)
    for row, size in zip(section.rows, sizes):
        row[-1] = f"{peaks[size] / peaks[smallest]:.2f}"
    result.sections.append(section)
    largest = max(sizes)
    growth = peaks[largest] / peaks[smallest]
    result.ratios["rss_growth"] = growth
    met = growth <= RSS_GROWTH_MAX if largest > smallest else None
    note = "" if met is not False else (
        f"{peaks[largest] - peaks[smallest]:.0f} MB more at {largest}²: GDAL's block cache, which holds one chunk "
        f"row of input blocks at {largest}² (no block decoded twice; the whole tile's few blocks at {smallest}²), "
        "and heap pages freed between two trims (see the peak RSS note below).")
    result.targets.append(Target(f"peak RSS({largest}²) ≤ 1.2 × peak RSS({smallest}²)", f"{growth:.2f}×",
                                 f"≤ {RSS_GROWTH_MAX}×", met, note))
    if 10980 in peaks:
        gb = peaks[10980] / 1024
        result.targets.append(Target("full tile (10980²) peak RSS < 4 GB", f"{gb:.2f} GB", f"< {RSS_FULL_TILE_MAX_GB} GB",
                                     gb < RSS_FULL_TILE_MAX_GB))
    else:
        result.targets.append(Target("full tile (10980²) peak RSS < 4 GB", "not run (s2seg bench --full)",
                                     f"< {RSS_FULL_TILE_MAX_GB} GB", None))


def _encoding_section(result: BenchResult, builtin: dict[str, Any], work: Path) -> None:
    """Write the built-in run's four products again with every codec, GDAL threads on and off."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    from .writer import _overview_factors, creation_options

    products = {k: p for k, p in builtin["products"].items() if k != "probs"}
    size = min(builtin["size"], ENCODING_MAX_SIZE)
    data = {}
    for key, path in products.items():
        with rasterio.open(path) as src:
            data[key] = (src.read(1, window=Window(0, 0, size, size)), src.profile)
    chunks = [c for c in builtin["grid"].chunks if c.row0 < size and c.col0 < size]
    out_dir = work / "encoding"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    section = Section(f"Output encoding ({len(products)} products of the built-in run, {size}² crop, with overviews)",
                      ["codec", "GDAL threads", "seconds", "MB", "÷ fastest time", "÷ smallest size"])
    try:
        from .grid import block_size
        block = {"blockxsize": block_size(builtin["chunk_size"]), "blockysize": block_size(builtin["chunk_size"])}
    except ImportError:
        block = {}
    rows = []
    for label, codec, extra in CODECS:
        for threads in ("ALL_CPUS", None):
            def encode() -> int:
                total = 0
                for key, (array, profile) in data.items():
                    options = creation_options(str(array.dtype), codec, categorical=key == "class")
                    options.update(block, **extra)
                    if threads is None:
                        options.pop("num_threads", None)
                    else:
                        options["num_threads"] = threads
                    options.update(width=size, height=size, count=1, dtype=str(array.dtype), crs=profile["crs"],
                                   transform=profile["transform"], nodata=profile["nodata"])
                    path = out_dir / f"{key}-{label.replace(' ', '')}-{threads or 'off'}.tif"
                    with rasterio.open(path, "w", **options) as ds:
                        for chunk in chunks:
                            r1, c1 = min(chunk.row1, size), min(chunk.col1, size)
                            ds.write(array[chunk.row0:r1, chunk.col0:c1], 1,
                                     window=Window(chunk.col0, chunk.row0, c1 - chunk.col0, r1 - chunk.row0))
                        factors = _overview_factors(ds.width, ds.height)
                        if factors:
                            ds.build_overviews(factors, Resampling.nearest if key == "class" else Resampling.average)
                    total += path.stat().st_size
                return total
            seconds, total = _best(1, encode)
            rows.append((label, threads or "off", seconds, total / 2**20))
    fastest = min(r[2] for r in rows)
    smallest = min(r[3] for r in rows)
    for codec, threads, seconds, mb in rows:
        section.rows.append([codec, threads, _s(seconds), f"{mb:.1f}", f"{seconds / fastest:.2f}", f"{mb / smallest:.2f}"])
        result.seconds[f"encode_{codec}_{threads}"] = seconds
        result.ratios[f"encode_size_{codec}_{threads}"] = mb / smallest
    # Default: the smallest output among the configurations within 20 % of the fastest.
    eligible = [r for r in rows if r[2] <= 1.2 * fastest]
    pick = min(eligible, key=lambda r: r[3])
    section.notes.append(
        f"Rule: the smallest output among configurations within 20 % of the fastest → **{pick[0]}, threads {pick[1]}** "
        f"on this run. Predictor 2 (uint8 class has none) / 3 (float32) as in writer.creation_options.")
    result.machine["encoding_pick"] = f"{pick[0]} threads {pick[1]}"
    result.sections.append(section)
