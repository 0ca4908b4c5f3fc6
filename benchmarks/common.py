"""Shared parts of the benchmark harness: the targets (as ratios), the inputs it builds (sample
tiles, a random-weight heavy model), the machine it runs on, and timing helpers."""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from s2seg.core import __version__

#: Where sample tiles, model folders and outputs are kept between runs (reused when present).
DEFAULT_WORK_DIR = Path("out") / "bench"
DOCS_PATH = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
#: Targets of issue 7, as ratios.
PIPELINE_OVER_FLOOR_MAX = 1.15
#: Issue 16: a one-pass model's pipeline (the built-in model) against its I/O floor alone.
ONE_PASS_OVER_IO_MAX = 1.3
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


def machine_info(dev: torch.device) -> dict[str, Any]:
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
        "load_start": load_average(), "s2seg": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "numpy": np.__version__, "rasterio": rasterio.__version__,
        "gdal": gdal.__version__, "monai": monai_version,
    }


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f}" if seconds < 10 else f"{seconds:.1f}"


def sample_tile(work: Path, size: int, log: Log, seed: int = 0, name: str = "tile") -> Path:
    """An L2A sample tile (with its scene classification) in ``work/<name>-<size>``, kept between runs."""
    from s2seg.core.sample import write_sample_tile

    folder = work / f"{name}-{size}"
    found = sorted(folder.glob("*.SAFE")) if folder.is_dir() else []
    if found:
        return found[0]
    log(f"[bench] writing a {size}² sample tile into {folder}")
    return write_sample_tile(folder, size=size, seed=seed, level="L2A", layout="safe")


def half_nodata_tile(work: Path, tile: Path) -> Path:
    """A copy of ``tile`` with DN 0 (nodata) in the right half of every band."""
    from rasterio.windows import Window
    import rasterio

    from s2seg.core.sentinel2 import discover

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


def heavy_model_folder(work: Path, arch: str, log: Log) -> Path:
    """A BigEarthNet v2 folder (config.json + model.safetensors) of ``arch`` with random weights."""
    import timm
    from safetensors.torch import save_file

    from s2seg.core.models.ben_v2 import KEY_PREFIX

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


def bench_config(**fields: Any):
    """An EngineConfig for benchmark runs: never resume an earlier run's partial outputs."""
    from s2seg.core.config import EngineConfig

    return EngineConfig(**{"resume": "never", **fields})


def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
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


def best_of(n: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Best wall time of ``n`` runs of ``fn`` (each in a worker thread) and the last result."""
    best, result = math.inf, None
    for _ in range(n):
        t0 = time.perf_counter()
        result = in_thread(fn)
        best = min(best, time.perf_counter() - t0)
    return best, result


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
