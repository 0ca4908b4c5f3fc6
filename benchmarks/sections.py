"""Sections 5–7: nodata patches, peak RSS in fresh processes, output encoding."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import (CODECS, ENCODING_MAX_SIZE, HALF_NODATA_MAX, RSS_FULL_TILE_MAX_GB, RSS_GROWTH_MAX, Log,
                     bench_config, best_of, fmt_s, half_nodata_tile, sample_tile)
from .engine_parts import overview_factors
from .floors import BUSY_HEADER, BUSY_KEYS, busy_cells
from .report import BenchResult, Section, Target


def nodata_section(result: BenchResult, work: Path, tile: Path, model, config, full: dict[str, Any]) -> None:
    from s2seg.core.pipeline import segment

    half = half_nodata_tile(work, tile)
    r = segment(half, work / f"out-half-nodata-{tile.parent.name}", model=model, config=config.with_(overwrite=True))
    full_seconds, fb = full["pipeline"], full["busy"]
    ratio = r.seconds / full_seconds
    result.ratios["half_nodata_over_full"] = ratio
    busy = {k: r.timings.get(k, 0.0) for k in BUSY_KEYS}
    result.sections.append(Section("Nodata patches cost nothing", ["tile", "pipeline s", f"{BUSY_HEADER} s", "÷ full tile"], [
        [f"{tile.parent.name} (full)", fmt_s(full_seconds), busy_cells(fb), "1.00"],
        ["right half nodata", fmt_s(r.seconds), busy_cells(busy), f"{ratio:.2f}"],
    ]))
    note = ""
    if ratio > HALF_NODATA_MAX:
        note = (f"inference fell to {busy['inference'] / max(fb['inference'], 1e-9):.2f}× and writing to "
                f"{busy['write'] / max(fb['write'], 1e-9):.2f}× of the full tile, but reading did not "
                f"({fmt_s(busy['read'])} vs {fmt_s(fb['read'])} s: every band window is decoded before its nodata is known), "
                f"nodata chunks are still written and flushed ({fmt_s(busy['flush'])} s), and chunks straddling "
                "the nodata edge blend and write in full.")
    result.targets.append(Target("half-nodata tile ≤ 0.6 × full tile (built-in)", f"{ratio:.2f}×", f"≤ {HALF_NODATA_MAX}×",
                                 ratio <= HALF_NODATA_MAX, note))


def rss_child(tile: str, output: str) -> None:
    """Run in a fresh process by :func:`rss_section`: segment with the defaults, print peak RSS as JSON."""
    from s2seg.core.pipeline import segment

    t0 = time.perf_counter()
    r = segment(tile, output, config=bench_config(overwrite=True))
    hwm_kb = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm_kb = int(line.split()[1])
    if not hwm_kb:  # not Linux: getrusage (kB on Linux, bytes on macOS)
        import resource
        hwm_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_kb": hwm_kb, "seconds": time.perf_counter() - t0, "chunk_size": r.chunk_size,
                      "n_chunks": r.n_chunks}))


def rss_section(result: BenchResult, work: Path, sizes: tuple[int, ...], log: Log) -> None:
    section = Section("Peak RSS (built-in model, default chunk size, fresh process each)",
                      ["tile", "chunks", "peak RSS MB", "seconds", "÷ smallest tile"])
    peaks: dict[int, float] = {}
    for size in sizes:
        tile = sample_tile(work, size, log)
        out = work / f"out-rss-{size}"
        code = f"from s2seg.benchmarks.sections import rss_child; rss_child({str(tile)!r}, {str(out)!r})"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            raise RuntimeError(f"RSS run on {size}² failed: {proc.stderr.strip()[-2000:]}")
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        peaks[size] = data["peak_rss_kb"] / 1024
        section.rows.append([f"{size}²", f"{data['n_chunks']} × {data['chunk_size']}", f"{peaks[size]:.0f}",
                             fmt_s(data["seconds"]), ""])
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
        result.targets.append(Target("full tile (10980²) peak RSS < 4 GB", "not run (make bench BENCH_ARGS=--full)",
                                     f"< {RSS_FULL_TILE_MAX_GB} GB", None))


def encoding_section(result: BenchResult, builtin: dict[str, Any], work: Path) -> None:
    """Write the built-in run's four products again with every codec, GDAL threads on and off."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    from s2seg.core.grid import block_size
    from s2seg.core.writer import creation_options

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
    block = {"blockxsize": block_size(builtin["chunk_size"]), "blockysize": block_size(builtin["chunk_size"])}
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
                        factors = overview_factors(ds.width, ds.height)
                        if factors:
                            ds.build_overviews(factors, Resampling.nearest if key == "class" else Resampling.average)
                    total += path.stat().st_size
                return total
            seconds, total = best_of(1, encode)
            rows.append((label, threads or "off", seconds, total / 2**20))
    fastest = min(r[2] for r in rows)
    smallest = min(r[3] for r in rows)
    for codec, threads, seconds, mb in rows:
        section.rows.append([codec, threads, fmt_s(seconds), f"{mb:.1f}", f"{seconds / fastest:.2f}", f"{mb / smallest:.2f}"])
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


#: The output options measured against the default products, on the built-in model (issue 21).
OUTPUT_OPTIONS = (("default products", {}), ("--products class", {"products": ("class",)}),
                  ("--cog", {"cog": True}), ("--vector", {"vector": True}))


def outputs_section(result: BenchResult, work: Path, tile: Path, model, config, log: Log) -> None:
    """Each output option's run against the default products' run, one after the other in this run: whole
    seconds, the step it adds (``SegmentResult.timings``), and the products' size."""
    from s2seg.core.pipeline import segment

    rows = []
    for label, fields in OUTPUT_OPTIONS:
        log(f"[bench] outputs: {label}")
        out = work / f"out-options-{label.strip('-').split()[0]}"
        shutil.rmtree(out, ignore_errors=True)
        r = segment(tile, out, model=model, config=config.with_(overwrite=True, **fields))
        size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
        step = sum(r.timings.get(k, 0.0) for k in ("cog", "vector"))
        rows.append((label, r.seconds, step, size / 2**20))
    base = rows[0][1]
    section = Section(f"Output options ({tile.parent.name}, built-in model)",
                      ["option", "run s", "added step s", "products MB", "÷ default run"])
    for label, seconds, step, mb in rows:
        section.rows.append([label, fmt_s(seconds), fmt_s(step) if step else "–", f"{mb:.1f}", f"{seconds / base:.2f}"])
        result.ratios[f"outputs_{label.strip('-').split()[0]}_over_default"] = seconds / base
    section.notes.append("The default path writes plain tiled GeoTIFFs; --cog copies each finished raster with GDAL's "
                         "COG driver after the run, --vector polygonises the class map after the run.")
    result.sections.append(section)

