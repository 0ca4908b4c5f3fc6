"""Clouds, cloud shadows and snow: the mask of every run, chunk by chunk (``<tile>_mask.tif``).

Sources, chosen by :func:`resolve_mode` from ``EngineConfig.mask`` (:data:`.config.MASK_MODES`):

- ``scl``: the L2A Scene Classification Layer (``SCL_20m``), read as a categorical layer of the
  tile (:attr:`.sentinel2.BandSet.layers`) by nearest onto the 10 m grid, codes translated by
  :data:`SCL_TO_MASK`.
- ``spectral``: a per-pixel reflectance test, for tiles without SCL (L1C) — see
  :func:`spectral_mask`. It finds thick clouds and snow; it does not find shadows or thin cirrus.
- ``auto``: ``scl`` when the tile has an SCL, else ``spectral`` when the tile has its bands,
  else no mask.

The mask is computed on the chunk's output window only (every source is per pixel: no halo), in
the reader thread, and travels with the chunk's pixels to the writer, which writes it and sets the
land-cover products to nodata under :data:`HIDDEN` classes (unless ``keep_masked``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from .config import MASK_MODES
from .errors import ConfigError, InputError
from .grid import reflect_indices
from .reader import ChunkReader, read_nearest
from .scl import (CIRRUS, CLEAR, CLOUD, HIDDEN, MASK_CLASSES, MASK_COLOURS, MASK_NODATA,  # noqa: F401 (re-exported)
                  SCL_CODES, SHADOW, SNOW)
from .sentinel2 import BandSet
from .urls import redact

#: ESA Scene Classification (SCL) code → mask code (:data:`.scl.SCL_CODES`; other codes are clear).
SCL_TO_MASK = np.full(256, CLEAR, dtype=np.uint8)
SCL_TO_MASK[list(SCL_CODES)] = list(SCL_CODES.values())
_HIDDEN_LUT = np.zeros(256, dtype=bool)
_HIDDEN_LUT[list(HIDDEN)] = True

#: Bands of the spectral test, and its thresholds (reflectance, TOA or BOA alike).
SPECTRAL_BANDS = ("B02", "B03", "B04", "B08", "B11")
#: cloud: bright and white in the visible (blue, green and red all above this) and not snow
CLOUD_VISIBLE_MIN = 0.2
#: snow: normalised difference snow index (green − SWIR) / (green + SWIR) above this, as in MODIS
#: and Sen2Cor, with a bright NIR and green (water has a high NDSI too, but is dark)
NDSI_SNOW_MIN = 0.4
SNOW_NIR_MIN = 0.11
SNOW_GREEN_MIN = 0.1
SPECTRAL_NAME = "spectral cloud test"
_QUANTIFICATION = 10000.0  # DN per unit reflectance (after the baseline offset), as in feed.Normaliser


def resolve_mode(mode: str, bandset: BandSet) -> tuple[str, str]:
    """The concrete mask source (``scl``, ``spectral`` or ``none``) for ``mode`` on ``bandset``, and
    a sentence for the log. Raises :class:`ConfigError` for an unknown mode and :class:`InputError`
    when the tile lacks what an explicit mode needs."""
    if mode not in MASK_MODES:
        raise ConfigError(f"mask must be one of {', '.join(MASK_MODES)}, got {mode!r}")
    has_scl = "SCL" in bandset.layers
    has_bands = all(b in bandset.files for b in SPECTRAL_BANDS)
    if mode == "none":
        return "none", "no cloud/shadow/snow mask"
    if mode == "scl" or (mode == "auto" and has_scl):
        if not has_scl:
            raise InputError(f"tile {bandset.source} has no scene classification layer (SCL_20m of an L2A "
                             f"product) to mask clouds, shadows and snow with")
        return "scl", f"cloud/shadow/snow mask from the scene classification {redact(bandset.layers['SCL'].path)}"
    if mode == "spectral" or has_bands:
        bandset.require(SPECTRAL_BANDS, SPECTRAL_NAME)  # InputError naming the missing bands
        return "spectral", ("cloud/snow mask from a spectral test (no scene classification in the tile; "
                            "shadows and thin cirrus are not detected)")
    return "none", (f"warning: no cloud/shadow/snow mask: the tile has neither a scene classification nor the "
                    f"bands of the spectral test ({', '.join(SPECTRAL_BANDS)})")


def hidden(codes: np.ndarray) -> np.ndarray:
    """Where the land cover is set to nodata under mask ``codes``."""
    return _HIDDEN_LUT[codes]


def spectral_mask(reflectance: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mask codes from ``(5, rows, cols)`` reflectance of :data:`SPECTRAL_BANDS` (nodata: ``~valid``).

    Snow where the NDSI is above :data:`NDSI_SNOW_MIN` with a bright NIR and green; cloud where
    blue, green and red are all above :data:`CLOUD_VISIBLE_MIN` (white and bright) and it is not
    snow. Bright white roofs and sand can be flagged as cloud; shadows are not detected.
    """
    blue, green, red, nir, swir = reflectance
    with np.errstate(divide="ignore", invalid="ignore"):
        ndsi = (green - swir) / (green + swir)
    snow = (ndsi > NDSI_SNOW_MIN) & (nir > SNOW_NIR_MIN) & (green > SNOW_GREEN_MIN)
    cloud = (blue > CLOUD_VISIBLE_MIN) & (green > CLOUD_VISIBLE_MIN) & (red > CLOUD_VISIBLE_MIN) & ~snow
    codes = np.full(valid.shape, CLEAR, dtype=np.uint8)
    codes[snow] = SNOW
    codes[cloud] = CLOUD
    codes[~valid] = MASK_NODATA
    return codes


class ChunkMasker:
    """Mask codes of any 10 m window of ``bandset`` from ``source`` (``scl`` or ``spectral``).
    Open it with ``with``; one instance per thread (it holds open datasets)."""

    def __init__(self, bandset: BandSet, source: str):
        if source not in ("scl", "spectral"):
            raise ValueError(f"mask source must be scl or spectral, got {source!r}")
        self.bandset, self.source = bandset, source
        self._dataset = None
        self._reader = ChunkReader(bandset, SPECTRAL_BANDS, SPECTRAL_NAME, threads=1) if source == "spectral" else None
        if self._reader is not None:
            self._offsets = np.array([bandset.offset(b) for b in SPECTRAL_BANDS], dtype=np.float32)[:, None, None]

    def __enter__(self) -> "ChunkMasker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """uint8 mask codes of 10 m rows ``[rows[0], rows[1])`` × cols ``[cols[0], cols[1])``."""
        if self._reader is not None:
            pixels = self._reader.read(rows, cols)
            reflectance = (pixels.data.astype(np.float32) + self._offsets) / np.float32(_QUANTIFICATION)
            return spectral_mask(reflectance, pixels.valid)
        return SCL_TO_MASK[self._read_scl(rows, cols)]

    def _read_scl(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        layer, ref = self.bandset.layers["SCL"], self.bandset.reference
        ys = ref.transform.f + (reflect_indices(rows[0], rows[1], ref.height) + 0.5) * ref.transform.e
        xs = ref.transform.c + (reflect_indices(cols[0], cols[1], ref.width) + 0.5) * ref.transform.a
        try:
            if self._dataset is None:
                self._dataset = rasterio.open(layer.path)
            return read_nearest(self._dataset, layer.transform, layer.width, layer.height, ys, xs)
        except RasterioIOError as exc:
            raise InputError(f"cannot read the scene classification {redact(layer.path)} (rows {rows[0]}–{rows[1]}, "
                             f"cols {cols[0]}–{cols[1]}): {redact(str(exc))}") from None


@dataclass(frozen=True)
class MaskSummary:
    """What a run's mask covered: pixel counts per :data:`MASK_CLASSES` over the pixels with data."""

    source: str
    counts: tuple[int, ...]
    kept: bool  # land cover kept under the mask (``keep_masked``)

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def masked_share(self) -> float:
        """Share of the pixels with data under a class that hides the land cover."""
        hidden_count = sum(n for code, n in enumerate(self.counts) if code in HIDDEN)
        return hidden_count / self.total if self.total else 0.0

    def shares(self) -> dict[str, float]:
        return {name: (n / self.total if self.total else 0.0) for name, n in zip(MASK_CLASSES, self.counts)}

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "kept_under_mask": self.kept, "masked_share": self.masked_share,
                "pixels": dict(zip(MASK_CLASSES, self.counts)), "shares": self.shares()}


def summarise(path: Path, source: str, kept: bool, strip_rows: int = 1024) -> MaskSummary:
    """Count the mask classes of a finished ``<tile>_mask.tif`` (strip by strip: bounded memory).
    Counted from the file, so a resumed run counts exactly like an uninterrupted one."""
    counts = np.zeros(256, dtype=np.int64)
    with rasterio.open(path) as ds:
        for row0 in range(0, ds.height, strip_rows):
            window = rasterio.windows.Window(0, row0, ds.width, min(strip_rows, ds.height - row0))
            counts += np.bincount(ds.read(1, window=window).ravel(), minlength=256)
    return MaskSummary(source, tuple(int(n) for n in counts[:len(MASK_CLASSES)]), kept)
