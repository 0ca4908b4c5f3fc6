"""Measure how well the engine feeds a GPU, on a machine that may lack GDAL's Python bindings.

``make bench`` (:mod:`s2seg.benchmarks.bench`) needs ``osgeo`` (the products are written through GDAL's bindings). A lent GPU
machine has torch and CUDA but no GDAL bindings, so this tool runs the engine's own stages
and leaves only the GeoTIFF encoding out:

* **compute floor**: the model's forward passes alone, on as many patches as the tile sends,
  inputs already normalised on the device, same batch size (issue 7's definition);
* **inference stage**: the engine's per-chunk inference (:meth:`.engine_parts.StageRun.infer_chunk`) over every chunk, pixels already in memory
  (patch gathering, normalisation, host→device copies, forward passes, dense blending);
* **pipeline, GDAL writes discarded**: the engine's stages (:meth:`.engine_parts.StageRun.execute`) with the real reader thread (rasterio)
  and the real writer thread (blending, confidence, statistics, preview), whose GeoTIFF
  writer keeps the class map and sums of the float products instead of encoding them.

``--compare-cpu`` reruns the built-in model's pipeline on the CPU and reports how far the
GPU's products are from it. Prints a table and writes JSON to ``--json``.

    python -m s2seg.benchmarks.measure_gpu --size 5040 --models builtin,resnet50 --half --json out/gpu.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from s2seg.benchmarks.common import bench_config, heavy_model_folder, sample_tile
from s2seg.benchmarks.engine_parts import StageRun, auto_chunk_size
from s2seg.core.config import EngineConfig
from s2seg.core.feed import Normaliser, patches_with_data
from s2seg.core.grid import plan
from s2seg.core.models import load_model, resolve_card
from s2seg.core.reader import ChunkReader
from s2seg.core.sentinel2 import discover


class DiscardingWriter:
    """Stands in for ProductWriter: keeps the class map and sums of the float products, encodes nothing."""

    def __init__(self, width: int, height: int) -> None:
        self.classes = np.full((height, width), 255, dtype=np.uint8)
        self.sums: dict[str, float] = {}
        self.maxprob = np.full((height, width), np.nan, dtype=np.float32)

    def write(self, key: str, array: np.ndarray, row0: int, col0: int) -> None:
        h, w = array.shape[-2:]
        if key == "class":
            self.classes[row0: row0 + h, col0: col0 + w] = array
        elif key == "maxprob":
            self.maxprob[row0: row0 + h, col0: col0 + w] = array
        self.sums[key] = self.sums.get(key, 0.0) + float(np.nansum(array, dtype=np.float64))

    def flush(self, windows, sync: bool = True) -> None:
        pass

    def sync(self) -> None:
        pass

    def commit(self) -> dict[str, Path]:
        return {}

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class NullJournal:
    def record(self, chunks) -> None:
        pass

    def delete(self) -> None:
        pass

    def close(self) -> None:
        pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def read_all(bandset, card, grid, config: EngineConfig) -> tuple[list, float]:
    t0 = time.perf_counter()
    with ChunkReader(bandset, card.bands, card.name, card.resampling, config.read_threads) as reader:
        chunks = [(c, reader.read(c.input_rows, c.input_cols)) for c in grid.chunks]
    return chunks, time.perf_counter() - t0


def normalised_pool(model, bandset, chunks, batch: int) -> torch.Tensor:
    """2 × batch real patches of the first chunk, normalised on the device (the floor's inputs)."""
    card = model.card
    normaliser = Normaliser(card, bandset, model.device)
    chunk, pixels = chunks[0]
    p, s = card.patch_size, card.stride
    data = torch.from_numpy(pixels.data.astype(np.float32))
    windows = data.unfold(1, p, s).unfold(2, p, s)  # (bands, ny, nx, P, P)
    flat = windows.permute(1, 2, 0, 3, 4).reshape(-1, len(card.bands), p, p)
    pick = torch.linspace(0, len(flat) - 1, 2 * batch).long()
    return normaliser(flat[pick].contiguous().to(model.device))


def compute_floor(model, pool: torch.Tensor, n_patches: int, batch: int, half: bool) -> float:
    sizes = [batch] * (n_patches // batch) + ([n_patches % batch] if n_patches % batch else [])
    precision = torch.autocast("cuda", dtype=torch.float16) if half else contextlib.nullcontext()
    with torch.inference_mode(), precision:
        for _ in range(3):
            model.predict(pool[:batch])  # warm-up: cuDNN autotuning, lazy initialisation
        sync(model.device)
        t0 = time.perf_counter()
        for i, n in enumerate(sizes):
            model.predict(pool[:n] if i % 2 == 0 else pool[len(pool) - n:])
        sync(model.device)
    return time.perf_counter() - t0


def floor_variants(model, pool: torch.Tensor, batches: tuple[int, ...], repeats: int = 20) -> list[dict]:
    """Forward passes per second of one full batch, by batch size, precision and memory format."""
    module = getattr(model, "module", None)
    rows = []
    for layout in ("nchw", "channels_last"):
        if layout == "channels_last":
            if module is None:
                break
            module.to(memory_format=torch.channels_last)
        for batch in batches:
            x = pool.repeat(math.ceil(batch / len(pool)), 1, 1, 1)[:batch].contiguous()
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            for half in (False, True):
                precision = torch.autocast("cuda", dtype=torch.float16) if half else contextlib.nullcontext()
                with torch.inference_mode(), precision:
                    for _ in range(3):
                        model.predict(x)
                    sync(model.device)
                    times = []
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        model.predict(x)
                        sync(model.device)
                        times.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    for _ in range(repeats):
                        model.predict(x)
                    sync(model.device)
                    queued = (time.perf_counter() - t0) / repeats
                median = sorted(times)[len(times) // 2]
                rows.append({"layout": layout, "batch": batch, "half": half, "ms_per_batch": round(median * 1e3, 2),
                             "patches_per_s_synced": round(batch / median), "patches_per_s_queued": round(batch / queued)})
    if module is not None:
        module.to(memory_format=torch.contiguous_format)
    return rows


def inference_stage(run: StageRun, chunks) -> float:
    run.infer_chunk(*chunks[0], len(chunks))  # warm-up
    sync(run.model.device)
    t0 = time.perf_counter()
    outputs = [run.infer_chunk(chunk, pixels, len(chunks)) for chunk, pixels in chunks]
    sync(run.model.device)
    seconds = time.perf_counter() - t0
    del outputs
    return seconds


def pipeline_without_encoding(bandset, model, grid, config: EngineConfig, batch: int) -> tuple[float, dict, DiscardingWriter]:
    run = StageRun(bandset, model, grid, config, batch)
    writer = DiscardingWriter(bandset.width, bandset.height)
    t0 = time.perf_counter()
    run.execute(writer, NullJournal())
    sync(model.device)
    return time.perf_counter() - t0, run.busy, writer


def compare_cpu_gpu(work: Path, size: int, log) -> dict:
    """The built-in model's products on CUDA against the CPU's, on a ``size``² tile."""
    small = discover(sample_tile(work, size, log))
    products, report = {}, {"size": size}
    for dev in ("cuda", "cpu"):
        model = load_model(resolve_card("builtin"), torch.device(dev))
        chunk_size = auto_chunk_size(model.card, small, model.device)
        grid = plan(small.height, small.width, model.card.patch_size, chunk_size)
        batch = EngineConfig.default_batch_size(dev, model.card.patch_size)
        try:
            seconds, _, products[dev] = pipeline_without_encoding(small, model, grid, bench_config(chunk_size=chunk_size), batch)
            report[f"{dev}_s"] = round(seconds, 2)
        except Exception as exc:  # noqa: BLE001 - reported, the other device still runs
            report[f"{dev}_error"] = f"{type(exc).__name__}: {exc}"
    if len(products) == 2:
        gpu, cpu = products["cuda"], products["cpu"]
        valid = cpu.classes != 255
        report.update(class_agreement=float((gpu.classes[valid] == cpu.classes[valid]).mean()),
                      same_nodata=bool(np.array_equal(gpu.classes == 255, ~valid)),
                      maxprob_max_abs_diff=float(np.nanmax(np.abs(gpu.maxprob - cpu.maxprob))))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=5040)
    parser.add_argument("--models", default="builtin,resnet50")
    parser.add_argument("--half", action="store_true", help="also run with float16 autocast")
    parser.add_argument("--batch", type=int, default=0, help="patches per batch (default: the engine's GPU default)")
    parser.add_argument("--read-threads", type=int, default=0, help="reader threads (default: the engine's)")
    parser.add_argument("--compare-cpu", type=int, default=0, help="tile size of a CPU/GPU comparison (built-in model)")
    parser.add_argument("--skip", default="", help="comma list of: floor, stage, pipeline")
    parser.add_argument("--variants", default="", help="batch sizes for the forward-pass variants table (e.g. 64,256)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its kernels per input shape")
    parser.add_argument("--work", default="out/bench")
    parser.add_argument("--json", default="")
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(args.work).resolve()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    info = {"label": args.label, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "cores": os.cpu_count(), "size": args.size, "engine": "s2seg"}
    log(f"[gpu] {info}")
    t0 = time.perf_counter()
    tile = sample_tile(work, args.size, log)
    info["sample_tile_s"] = round(time.perf_counter() - t0, 1)
    bandset = discover(tile)
    rows = []
    for name in args.models.split(","):
        folder = resolve_card("builtin") if name == "builtin" else resolve_card(heavy_model_folder(work, name, log))
        model = load_model(folder, device)
        card = model.card
        batch = args.batch or EngineConfig.default_batch_size(device.type, card.patch_size)
        base = bench_config(**({"read_threads": args.read_threads} if args.read_threads else {}))
        chunk_size = auto_chunk_size(card, bandset, device)
        grid = plan(bandset.height, bandset.width, card.patch_size, chunk_size)
        chunks, read_s = read_all(bandset, card, grid, base)
        n_patches = int(sum(
            patches_with_data(px.valid, c.n_patches_y, c.n_patches_x, card.stride).sum() for c, px in chunks))
        pool = normalised_pool(model, bandset, chunks, batch)
        if args.variants and device.type == "cuda":
            for v in floor_variants(model, pool, tuple(int(b) for b in args.variants.split(","))):
                v["model"] = name
                info.setdefault("variants", []).append(v)
                log(f"[gpu] variant {v}")
        for half in ([False, True] if args.half and device.type == "cuda" else [False]):
            config = base.with_(half=half, chunk_size=chunk_size, batch_size=batch)
            row = {"model": name, "half": half, "chunks": len(grid.chunks), "chunk_size": chunk_size, "patches": n_patches,
                   "batch": batch, "read_s": round(read_s, 2)}
            if "floor" not in skip:
                row["floor_s"] = compute_floor(model, pool, n_patches, batch, half)
                row["floor_patches_per_s"] = n_patches / row["floor_s"]
            if "stage" not in skip:
                run = StageRun(bandset, model, grid, config, batch)
                row["stage_s"] = inference_stage(run, chunks)
                row["stage_patches_per_s"] = n_patches / row["stage_s"]
                if "floor_s" in row:
                    row["stage_over_floor"] = row["stage_s"] / row["floor_s"]
            if "pipeline" not in skip:
                wall, busy, writer = pipeline_without_encoding(bandset, model, grid, config, batch)
                row["pipeline_s"] = wall
                row["busy"] = {k: round(v, 2) for k, v in busy.items()}
                row["sums"] = writer.sums
                row["classes_hist"] = np.bincount(writer.classes.ravel(), minlength=256).tolist()
            rows.append({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
            log(f"[gpu] { {k: v for k, v in rows[-1].items() if k != 'classes_hist'} }")
        del chunks, pool, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.compare_cpu and device.type == "cuda":
        info["cpu_vs_gpu"] = compare_cpu_gpu(work, args.compare_cpu, log)
        log(f"[gpu] cpu vs gpu: {info['cpu_vs_gpu']}")
    result = {"info": info, "rows": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    for v in info.get("variants", []):
        print(f"variant {v['model']:9s} {v['layout']:13s} batch {v['batch']:4d} half {str(v['half']):5s} "
              f"{v['ms_per_batch']:7.2f} ms  {v['patches_per_s_synced']:7d} patches/s synced  {v['patches_per_s_queued']:7d} queued")
    print(f"\n{info['label'] or info['engine']}: {info['device']}, tile {args.size}², sample tile written in {info['sample_tile_s']} s")
    print(f"{'model':10s} {'half':5s} {'patches':>8s} {'read s':>7s} {'floor s':>8s} {'stage s':>8s} {'stage/floor':>11s} "
          f"{'pipeline s':>10s}  busy")
    for r in rows:
        print(f"{r['model']:10s} {str(r['half']):5s} {r['patches']:8d} {r['read_s']:7.2f} {r.get('floor_s', math.nan):8.2f} "
              f"{r.get('stage_s', math.nan):8.2f} {r.get('stage_over_floor', math.nan):11.2f} {r.get('pipeline_s', math.nan):10.2f}  "
              f"{r.get('busy', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
