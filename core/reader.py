"""Windowed reads of every band of a chunk, resampled onto the 10 m grid.

Each band is read by geographic position, not by assuming exact nesting of the
10/20/60 m grids (real products and crops may be offset by a fraction of a
native pixel): the centre of every 10 m pixel is mapped into the band's own
grid, and the band is sampled there (nearest or bilinear). Pixels outside the
tile are filled by symmetric reflection in 10 m coordinates, so a chunk's halo
holds exactly the pixels a larger chunk would have read. For a model coarser than
10 m the region is then averaged into the model's pixels (:func:`.resample.block_mean`),
band by band, so only one band's 10 m values are held at a time per read thread.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from .config import ThreadBudget
from .errors import InputError
from .grid import reflect_indices
from .resample import block_mean
from .sentinel2 import BandFile, BandSet
from .stack import to_dn
from .urls import failed_read_reason, redact


@dataclass
class ChunkPixels:
    """Band values of one chunk's input region on the model's grid.

    ``data`` holds the product's digital numbers as ``(bands, rows, cols)``: on the
    10 m grid uint16 for nearest resampling, float32 for bilinear; on a coarser
    model grid float32 block means. ``valid`` (model grid) is False where any band
    is 0 (nodata) — for a coarser model, where its whole block is. ``output_valid``
    is the 10 m mask of the same region (``valid`` itself on the 10 m grid).
    """

    data: np.ndarray
    valid: np.ndarray
    output_valid: np.ndarray | None = None
    #: the cloud / shadow / snow mask codes of the chunk's output window (:mod:`.mask`), when masking
    mask: np.ndarray | None = None
    #: the cloud model's inputs of the same chunk (mask source ``model``), turned into ``mask`` by inference
    mask_input: "ChunkPixels | None" = None

    def __post_init__(self) -> None:
        if self.output_valid is None:
            self.output_valid = self.valid


@dataclass(frozen=True)
class _Sampling:
    """Where the 10 m pixel centres of a region fall in one band's grid (one axis)."""

    lo: int  # first native pixel read
    hi: int  # one past the last native pixel read
    index: np.ndarray  # nearest native pixel, relative to lo
    index0: np.ndarray  # bilinear: first neighbour, relative to lo
    index1: np.ndarray  # bilinear: second neighbour, relative to lo
    weight1: np.ndarray  # bilinear: weight of index1 (float32)

#: Band paths read over the network (latency-bound: they keep every thread asked for).
REMOTE_PREFIXES = ("/vsicurl", "/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "http://", "https://")


class ChunkReader:
    """Reads ``band_ids`` of ``bandset`` for any 10 m region, bands in parallel (GDAL releases the GIL),
    onto the grid of a model whose pixel is ``factor × factor`` 10 m pixels."""

    def __init__(self, bandset: BandSet, band_ids: Sequence[str], model_name: str, resampling: str = "nearest",
                 threads: int = 4, factor: int = 1):
        self.bandset = bandset
        self.files: list[BandFile] = bandset.require(band_ids, model_name)
        self.resampling = resampling
        self.factor = factor
        self._datasets = [None] * len(self.files)
        # Local files: at most one band thread per core (config.ThreadBudget).
        remote = any(str(f.path).startswith(REMOTE_PREFIXES) for f in self.files)
        workers = min(ThreadBudget.for_machine(threads, remote=remote).read, len(self.files))
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="s2seg-read")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for ds in self._datasets:
            if ds is not None:
                ds.close()
        self._datasets = [None] * len(self.files)

    def __enter__(self) -> "ChunkReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> ChunkPixels:
        """Read 10 m rows ``[rows[0], rows[1])`` × cols ``[cols[0], cols[1])`` (may exceed the tile;
        with a ``factor`` above 1 both spans must be multiples of it)."""
        ref = self.bandset.reference
        row_idx = reflect_indices(rows[0], rows[1], ref.height)
        col_idx = reflect_indices(cols[0], cols[1], ref.width)
        # Centres of those 10 m pixels in map coordinates.
        ys = ref.transform.f + (row_idx + 0.5) * ref.transform.e
        xs = ref.transform.c + (col_idx + 0.5) * ref.transform.a
        f = self.factor
        if f > 1 and (len(row_idx) % f or len(col_idx) % f):
            raise ValueError(f"region {rows} × {cols} does not split into {f} × {f} blocks")
        results = list(self._pool.map(lambda i: self._read_band(i, ys, xs), range(len(self.files))))
        dtype = np.uint16 if self.resampling == "nearest" and f == 1 else np.float32
        data = np.empty((len(results), len(row_idx) // f, len(col_idx) // f), dtype=dtype)
        valid = np.ones((len(row_idx), len(col_idx)), dtype=bool)
        for i, (values, band_valid) in enumerate(results):
            data[i] = values
            valid &= band_valid
        if f == 1:
            return ChunkPixels(data, valid)
        return ChunkPixels(data, valid.reshape(len(row_idx) // f, f, len(col_idx) // f, f).any(axis=(1, 3)), valid)

    def _dataset(self, i: int):
        if self._datasets[i] is None:
            try:
                self._datasets[i] = rasterio.open(self.files[i].path)
            except RasterioIOError as exc:
                raise InputError(f"cannot open band file {redact(self.files[i].path)}: "
                                 f"{failed_read_reason(self.files[i].path, str(exc))}") from None
        return self._datasets[i]

    def _read_band(self, i: int, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Band ``i`` on the model grid and its 10 m validity."""
        values, valid = self._read_band_10m(i, ys, xs)
        if self.factor > 1:
            values = block_mean(values, valid, self.factor)[0]
        return values, valid

    def _read_band_10m(self, i: int, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        band = self.files[i]
        t = band.transform
        rows = _sampling((ys - t.f) / t.e, band.height)
        cols = _sampling((xs - t.c) / t.a, band.width)
        window = Window(cols.lo, rows.lo, cols.hi - cols.lo, rows.hi - rows.lo)
        try:
            block = self._dataset(i).read(band.index, window=window)
        except RasterioIOError as exc:
            raise InputError(f"cannot read band {band.band.id} from {redact(band.path)} (window rows {rows.lo}–{rows.hi}, "
                             f"cols {cols.lo}–{cols.hi}): {failed_read_reason(band.path, str(exc))}") from None  # without tokens
        if not band.stored_as_dn:  # a stack's reflectance, NaN or nodata value: DN, 0 = nodata
            block = to_dn(block, band)
        nearest = block[np.ix_(rows.index, cols.index)]
        valid = nearest != 0
        if self.resampling == "nearest" or band.band.resolution == 10:
            return nearest, valid
        # Bilinear, separable: interpolate along rows, then along columns.
        b = block.astype(np.float32)
        wr = rows.weight1[:, None]
        along_rows = b[rows.index0] * (1 - wr) + b[rows.index1] * wr
        wc = cols.weight1[None, :]
        values = along_rows[:, cols.index0] * (1 - wc) + along_rows[:, cols.index1] * wc
        # A neighbour at 0 (nodata) would drag values down: mark those pixels invalid too.
        zero = block == 0
        if zero.any():
            touched = (zero[rows.index0][:, cols.index0] | zero[rows.index1][:, cols.index0] |
                       zero[rows.index0][:, cols.index1] | zero[rows.index1][:, cols.index1])
            valid &= ~touched
        return values, valid


def read_nearest(dataset, transform, width: int, height: int, ys: np.ndarray, xs: np.ndarray,
                 index: int = 1) -> np.ndarray:
    """The stored values of band ``index`` of an open ``dataset`` (grid ``transform``, ``width`` ×
    ``height``) nearest to the map coordinates ``ys`` × ``xs``, as stored: no conversion, so
    categorical layers keep their codes. Raises RasterioIOError as GDAL reports it."""
    rows = _sampling((ys - transform.f) / transform.e, height)
    cols = _sampling((xs - transform.c) / transform.a, width)
    block = dataset.read(index, window=Window(cols.lo, rows.lo, cols.hi - cols.lo, rows.hi - rows.lo))
    return block[np.ix_(rows.index, cols.index)]


def input_cache_bytes(bandset: BandSet, band_ids: Sequence[str], model_name: str, rows: int, cols: int) -> int:
    """Bytes of GDAL block cache that reading chunk regions of ``rows`` × ``cols`` 10 m pixels
    (halo included) row after row needs so that no input block is decoded twice.

    A block row straddling two chunk rows (JPEG 2000 tiles are 1024², seldom aligned with the
    chunks) is read again by the next chunk row, so the cache holds a full-width strip of the
    block rows under one chunk row, plus the blocks of one more chunk: the first chunk of the
    next row then reads in its new blocks before LRU eviction reaches that strip. Capped at the
    size of every band.
    """
    total = 0
    reference = bandset.reference
    for band in bandset.require(band_ids, model_name):
        (block_h, block_w), itemsize = band.block_shape, band.itemsize
        scale = reference.resolution / band.resolution  # native pixels per 10 m pixel
        tile_rows, tile_cols = math.ceil(band.height / block_h), math.ceil(band.width / block_w)
        # + 2 native pixels: bilinear neighbours; + 1 block: a region seldom starts on a block edge
        chunk_rows = min(math.ceil((math.ceil(rows * scale) + 2) / block_h) + 1, tile_rows)
        chunk_cols = min(math.ceil((math.ceil(cols * scale) + 2) / block_w) + 1, tile_cols)
        blocks = min(chunk_rows * (tile_cols + chunk_cols), tile_rows * tile_cols)
        total += blocks * block_h * block_w * itemsize
    return total


def _sampling(position: np.ndarray, n: int) -> _Sampling:
    """``position`` is the pixel-centre coordinate in native pixel units (edges at integers)."""
    nearest = np.clip(np.floor(position).astype(np.int64), 0, n - 1)
    f = position - 0.5  # bilinear: neighbours are the native pixel centres around the point
    i0 = np.floor(f).astype(np.int64)
    weight1 = (f - i0).astype(np.float32)
    i1 = np.clip(i0 + 1, 0, n - 1)
    i0 = np.clip(i0, 0, n - 1)
    lo = int(min(nearest.min(), i0.min()))
    hi = int(max(nearest.max(), i1.max())) + 1
    return _Sampling(lo, hi, nearest - lo, i0 - lo, i1 - lo, weight1)
