"""What a run produced: per-class statistics, the :class:`SegmentResult`, and the JSON report."""
from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .atomic import write_atomic
from .config import EngineConfig
from .urls import redact
from .models.card import ModelCard
from .sentinel2 import BandSet


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
    """What :func:`.pipeline.segment` produced, and how."""

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
    #: outputs made from the finished rasters: ``vector`` (GeoPackage), ``stac`` (item), style files
    #: (``"<product>.qml"``/``".sld"``)
    outputs: dict[str, Path] = field(default_factory=dict)
    #: the cloud/shadow/snow mask (:meth:`.mask.MaskSummary.to_dict`: source, masked share, pixels per
    #: mask class); None when the run did not mask. ``valid_pixels`` and the class statistics count
    #: the visible pixels only (unless the land cover was kept under the mask)
    mask: dict | None = None


def report_name(tile_name: str) -> str:
    """File name of the JSON report of ``tile_name``."""
    return f"{tile_name}_report.json"


def sum_chunk_stats(chunk_stats: dict[int, np.ndarray], num_classes: int) -> dict[str, np.ndarray]:
    """Per-class totals of the chunks' ``(3, C)`` statistics, added in chunk order: a resumed run
    sums exactly like an uninterrupted one."""
    total = np.zeros((3, num_classes), dtype=np.float64)
    for index in sorted(chunk_stats):
        total += chunk_stats[index]
    return {"count": total[0], "maxprob": total[1], "low_gap": total[2]}


def class_stats(card: ModelCard, stats: dict[str, np.ndarray], pixel_area_m2: float) -> list[ClassStat]:
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


def write_report(result: SegmentResult, bandset: BandSet, config: EngineConfig, batch_size: int) -> None:
    """``result.report``, written atomically (readers never see half a report)."""
    import rasterio
    from osgeo import gdal

    report = {
        "s2seg_version": __version__,
        "tile": {"name": bandset.name, "source": str(bandset.source), "level": bandset.level, "baseline": bandset.baseline,
                 "width": bandset.width, "height": bandset.height, "crs": bandset.crs.to_string(),
                 "offsets": bandset.offsets, "bands": {b: redact(f.path) for b, f in sorted(bandset.files.items())}},
        "model": result.card.to_dict(),
        "config": {**asdict(config), "chunk_size": result.chunk_size, "batch_size": batch_size},
        "device": result.device,
        "batch_size_final": result.batch_size_final,
        "n_chunks": result.n_chunks,
        "resumed_chunks": result.resumed_chunks,
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "valid_pixels": result.valid_pixels,
        "mask": result.mask,
        "classes": [asdict(s) for s in result.class_stats if s.pixels],
        "products": {k: str(v) for k, v in result.products.items()} | {"preview": str(result.preview)},
        "outputs": {k: str(v) for k, v in result.outputs.items()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "rasterio": rasterio.__version__, "gdal": gdal.__version__},
    }
    write_atomic(result.report, json.dumps(report, indent=2, default=str) + "\n")
