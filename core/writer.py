"""GeoTIFF products written window by window, under temporary names until complete (DESIGN §7)."""
from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from .errors import OutputError
from .nomenclature import hex_to_rgb
from .uncertainty import CLASS_NODATA

PARTIAL_SUFFIX = ".part"
FLOAT_PRODUCTS = ("maxprob", "entropy", "gap")
BLOCK = 512


@dataclass(frozen=True)
class ProductSpec:
    """One output raster: its key, band count, dtype and nodata."""

    key: str
    count: int
    dtype: str
    nodata: float


def product_paths(output_dir: Path, tile_name: str, write_probs: bool) -> dict[str, Path]:
    """Final paths of every raster product of a tile."""
    keys = ["class", *FLOAT_PRODUCTS] + (["probs"] if write_probs else [])
    return {key: output_dir / f"{tile_name}_{key}.tif" for key in keys}


def creation_options(dtype: str, compress: str, categorical: bool) -> dict[str, object]:
    """Tiled, compressed GeoTIFF options; the predictor fits the data (none for class ids)."""
    options: dict[str, object] = {
        "driver": "GTiff", "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK,
        "bigtiff": "IF_SAFER", "num_threads": "ALL_CPUS", "compress": compress,
    }
    if compress in ("ZSTD", "DEFLATE", "LZW") and not categorical:
        options["predictor"] = 3 if dtype == "float32" else 2
    return options


class ProductWriter:
    """Opens every product under ``<name>.tif.part``, writes windows, and renames on :meth:`commit`."""

    def __init__(self, output_dir: Path, tile_name: str, *, width: int, height: int, crs, transform,
                 class_names: Sequence[str], class_colours: Sequence[str], write_probs: bool, compress: str = "ZSTD"):
        self.paths = product_paths(output_dir, tile_name, write_probs)
        self.class_names = list(class_names)
        self.class_colours = list(class_colours)
        self._datasets: dict[str, rasterio.io.DatasetWriter] = {}
        specs = [ProductSpec("class", 1, "uint8", CLASS_NODATA)] + [ProductSpec(k, 1, "float32", math.nan) for k in FLOAT_PRODUCTS]
        if write_probs:
            specs.append(ProductSpec("probs", len(self.class_names), "float32", math.nan))
        try:
            for spec in specs:
                profile = creation_options(spec.dtype, compress, categorical=spec.key == "class")
                profile.update(width=width, height=height, count=spec.count, dtype=spec.dtype, crs=crs, transform=transform, nodata=spec.nodata)
                ds = rasterio.open(self._partial(spec.key), "w", **profile)
                self._datasets[spec.key] = ds
                if spec.key == "class":
                    ds.write_colormap(1, {i: (*hex_to_rgb(c), 255) for i, c in enumerate(self.class_colours)})
                    ds.set_band_description(1, "class")
                elif spec.key == "probs":
                    for i, name in enumerate(self.class_names, start=1):
                        ds.set_band_description(i, name)
                else:
                    ds.set_band_description(1, spec.key)
        except (RasterioIOError, OSError) as exc:
            self.abort()
            raise OutputError(f"cannot create outputs in {output_dir}: {exc}") from None

    def _partial(self, key: str) -> Path:
        path = self.paths[key]
        return path.with_name(path.name + PARTIAL_SUFFIX)

    def write(self, key: str, array: np.ndarray, row0: int, col0: int) -> None:
        """Write ``array`` (2-D, or 3-D bands-first for probs) at global pixel (row0, col0)."""
        ds = self._datasets[key]
        h, w = array.shape[-2:]
        window = Window(col0, row0, w, h)
        try:
            if array.ndim == 2:
                ds.write(array, 1, window=window)
            else:
                ds.write(array, window=window)
        except (RasterioIOError, OSError) as exc:
            raise _output_error(self.paths[key], exc) from None

    def commit(self, progress=None) -> dict[str, Path]:
        """Build overviews, close, then rename every product to its final name."""
        try:
            for i, (key, ds) in enumerate(self._datasets.items()):
                if progress:
                    progress(i / len(self._datasets), f"overviews of {self.paths[key].name}")
                factors = _overview_factors(ds.width, ds.height)
                if factors:
                    ds.build_overviews(factors, Resampling.nearest if key == "class" else Resampling.average)
                ds.close()
            self._set_category_names()
        except (RasterioIOError, OSError) as exc:
            self.abort()
            raise _output_error(self.paths["class"].parent, exc) from None
        for key in self._datasets:
            for suffix in ("", ".aux.xml"):
                partial = Path(str(self._partial(key)) + suffix)
                if partial.exists():
                    os.replace(partial, Path(str(self.paths[key]) + suffix))
        self._datasets = {}
        return dict(self.paths)

    def abort(self) -> None:
        """Close and delete every temporary file: nothing that looks finished is left."""
        for key, ds in self._datasets.items():
            try:
                ds.close()
            except Exception:  # noqa: BLE001 - cleaning up after an earlier error; keep going
                pass
        for key in self.paths:
            for suffix in ("", ".aux.xml"):
                Path(str(self._partial(key)) + suffix).unlink(missing_ok=True)
        self._datasets = {}

    def _set_category_names(self) -> None:
        """Class names as GDAL category names (kept in the standard .aux.xml beside the GeoTIFF)."""
        from osgeo import gdal

        ds = gdal.Open(str(self._partial("class")), gdal.GA_Update)
        if ds is None:
            raise OSError(f"cannot reopen {self._partial('class')}")
        names = self.class_names + [""] * (CLASS_NODATA - len(self.class_names)) + ["nodata"]
        ds.GetRasterBand(1).SetCategoryNames(names)
        ds = None  # flush (GDAL closes on dereference)


def _overview_factors(width: int, height: int) -> list[int]:
    factors = []
    factor = 2
    while max(width, height) / factor >= 256:
        factors.append(factor)
        factor *= 2
    return factors


def _output_error(path: Path, exc: Exception) -> OutputError:
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "No space left" in text:
        return OutputError(f"disk full while writing {path}: free some space or choose another output folder")
    return OutputError(f"cannot write {path}: {text}")


def check_output_folder(output_dir: Path, paths: dict[str, Path], overwrite: bool) -> None:
    """Refuse before any work: existing products without overwrite, a folder we cannot write to."""
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"output folder {output_dir} is a file")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {output_dir}: {exc.strerror or exc}") from None
    existing = [p for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise OutputError(f"outputs already exist ({', '.join(p.name for p in existing)}) in {output_dir}; use --overwrite to replace them")
    probe = output_dir / f".s2seg-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"output folder {output_dir} is not writable: {exc.strerror or exc}") from None
