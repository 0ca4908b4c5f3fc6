"""Windowed reads of every band of a chunk, resampled onto the 10 m grid.

Each band is read by geographic position, not by assuming exact nesting of the
10/20/60 m grids (real products and crops may be offset by a fraction of a
native pixel): the centre of every 10 m pixel is mapped into the band's own
grid, and the band is sampled there (nearest or bilinear). Pixels outside the
tile are filled by symmetric reflection in 10 m coordinates, so a chunk's halo
holds exactly the pixels a larger chunk would have read. For a model coarser than
10 m the region is then averaged into the model's pixels (:func:`.resample.block_mean`); with
nearest sampling and numba that is one compiled pass from the native pixels to the model's
(:func:`.resample.nearest_block_means`: the same bytes, no 10 m values made).
Each read thread resamples its band in strips of rows straight into the chunk's array and
ANDs its validity into the chunk's mask, so its scratch is a few MB whatever the region
(whole-region temporaries of a 3072 × 2304 region were about 60 MB per thread and band).
"""
from __future__ import annotations

import contextlib
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from . import kernels
from .config import ThreadBudget
from .errors import InputError
from .grid import reflect_indices
from .memory import release_freed_memory
from .resample import block_any, block_mean, exact_block_sums, nearest_block_means
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

    def rows(self, start: int, stop: int) -> "_Sampling":
        """The sampling of output pixels ``start … stop-1`` only (same native window)."""
        part = slice(start, stop)
        return _Sampling(self.lo, self.hi, self.index[part], self.index0[part], self.index1[part], self.weight1[part])

#: 10 m pixels a read thread resamples at once (a strip of rows, a multiple of the model's factor).
STRIP_PIXELS = 1 << 18

#: GDAL's option for reading uncompressed GeoTIFF pixels without its block cache (:func:`direct_io`).
DIRECT_IO = "GTIFF_DIRECT_IO"

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
        self._remote = remote
        workers = min(ThreadBudget.for_machine(threads, remote=remote).read, len(self.files))
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="s2seg-read")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for ds in self._datasets:
            if ds is not None:
                ds.close()
        self._datasets = [None] * len(self.files)
        release_freed_memory()

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
        h, w = len(row_idx), len(col_idx)
        dtype = np.uint16 if self.resampling == "nearest" and f == 1 else np.float32
        data = np.empty((len(self.files), h // f, w // f), dtype=dtype)
        valid = np.ones((h, w), dtype=bool)
        lock = threading.Lock()
        if not self._remote:
            # Local files open here, on the caller's thread: opening on a fresh read thread also paid for that
            # thread's first use of GDAL and PROJ (6 bands: 16–19 ms against 5 ms here, measured). Remote files
            # open on the read threads, side by side: there the network's latency dominates.
            for i in range(len(self.files)):
                self._dataset(i)
        # list(): re-raises a band's error; each says whether it found nodata (ANDed into ``valid``)
        nodata = list(self._pool.map(lambda i: self._read_band(i, ys, xs, data[i], valid, lock), range(len(self.files))))
        # The decoders' buffers were freed on the read threads' own heaps, which the other stages never
        # reuse: hand them back now, not after the chunk (a 3072 × 2304 region: 190 MB kept until then).
        release_freed_memory()
        if f == 1:
            return ChunkPixels(data, valid)
        model_valid = block_any(valid, f) if any(nodata) else np.ones((h // f, w // f), dtype=bool)
        return ChunkPixels(data, model_valid, valid)

    def native_windows(self, rows: tuple[int, int], cols: tuple[int, int]) -> list[Window]:
        """The window of native pixels each band file is read in for :meth:`read` of the same region
        (for comparing the read with other tools on the same pixels)."""
        ref = self.bandset.reference
        ys = ref.transform.f + (reflect_indices(rows[0], rows[1], ref.height) + 0.5) * ref.transform.e
        xs = ref.transform.c + (reflect_indices(cols[0], cols[1], ref.width) + 0.5) * ref.transform.a
        windows = []
        for band in self.files:
            t = band.transform
            r, c = _sampling((ys - t.f) / t.e, band.height), _sampling((xs - t.c) / t.a, band.width)
            windows.append(Window(c.lo, r.lo, c.hi - c.lo, r.hi - r.lo))
        return windows

    def _dataset(self, i: int):
        if self._datasets[i] is None:
            try:
                with (contextlib.nullcontext() if self._remote else direct_io()):
                    self._datasets[i] = rasterio.open(self.files[i].path)
            except RasterioIOError as exc:
                raise InputError(f"cannot open band file {redact(self.files[i].path)}: "
                                 f"{failed_read_reason(self.files[i].path, str(exc))}") from None
        return self._datasets[i]

    def _read_band(self, i: int, ys: np.ndarray, xs: np.ndarray, out: np.ndarray, valid: np.ndarray,
                   lock: threading.Lock) -> bool:
        """Band ``i`` into ``out`` (model grid), its 10 m validity ANDed into ``valid``, strip by strip;
        False where the band has no nodata in its window (``valid`` then left alone)."""
        band = self.files[i]
        t = band.transform
        rows = _sampling((ys - t.f) / t.e, band.height)
        cols = _sampling((xs - t.c) / t.a, band.width)
        block = self._read_window(band, i, rows, cols)
        f = self.factor
        h = len(rows.index)
        step = max(f, STRIP_PIXELS // max(len(cols.index), 1) // f * f)
        if f > 1 and self._samples_nearest(band) and exact_block_sums(block.dtype, f) and kernels.enabled():
            # Straight from the native pixels to the model's (no 10 m values made); the 10 m validity only
            # where the band has nodata in its window: elsewhere every 10 m pixel of it is valid.
            if np.count_nonzero(block) == block.size:
                nearest_block_means(block, rows.index, cols.index, f, out, None)
                return False
            band_valid = np.empty((min(step, h), len(cols.index)), dtype=bool)
            for r0 in range(0, h, step):
                r1 = min(h, r0 + step)
                nearest_block_means(block, rows.index[r0:r1], cols.index, f, out[r0 // f: r1 // f], band_valid[: r1 - r0])
                with lock:
                    valid[r0:r1] &= band_valid[: r1 - r0]
            return True
        for r0 in range(0, h, step):
            r1 = min(h, r0 + step)
            values, band_valid = self._resample(block, band, rows.rows(r0, r1), cols)
            out[r0 // f: r1 // f] = block_mean(values, band_valid, f)[0] if f > 1 else values
            with lock:
                valid[r0:r1] &= band_valid
        return True

    def _read_window(self, band: BandFile, i: int, rows: "_Sampling", cols: "_Sampling") -> np.ndarray:
        """The native pixels of band ``i`` the samplings need, as digital numbers."""
        window = Window(cols.lo, rows.lo, cols.hi - cols.lo, rows.hi - rows.lo)
        try:
            block = self._dataset(i).read(band.index, window=window)
        except RasterioIOError as exc:
            raise InputError(f"cannot read band {band.band.id} from {redact(band.path)} (window rows {rows.lo}–{rows.hi}, "
                             f"cols {cols.lo}–{cols.hi}): {failed_read_reason(band.path, str(exc))}") from None  # without tokens
        if not band.stored_as_dn:  # a stack's reflectance, NaN or nodata value: DN, 0 = nodata
            block = to_dn(block, band)
        return block

    def _samples_nearest(self, band: BandFile) -> bool:
        """Is ``band`` sampled at its nearest native pixel (bilinear only applies to coarser bands)?"""
        return self.resampling == "nearest" or band.band.resolution == 10

    def _resample(self, block: np.ndarray, band: BandFile, rows: "_Sampling", cols: "_Sampling") -> tuple[np.ndarray, np.ndarray]:
        """The 10 m values and validity of the pixels ``rows`` × ``cols`` sample from ``block``."""
        nearest = np.take(np.take(block, rows.index, axis=0), cols.index, axis=1)  # = block[np.ix_(…)], 3× faster
        valid = nearest != 0
        if self._samples_nearest(band):
            return nearest, valid
        # Bilinear, separable: interpolate along rows, then along columns (only the native rows this strip needs).
        first, second = block[rows.index0], block[rows.index1]
        wr = rows.weight1[:, None]
        along_rows = first.astype(np.float32) * (1 - wr) + second.astype(np.float32) * wr
        wc = cols.weight1[None, :]
        values = along_rows[:, cols.index0] * (1 - wc) + along_rows[:, cols.index1] * wc
        # A neighbour at 0 (nodata) would drag values down: mark those pixels invalid too.
        zero0, zero1 = first == 0, second == 0
        if zero0.any() or zero1.any():
            touched = zero0[:, cols.index0] | zero1[:, cols.index0] | zero0[:, cols.index1] | zero1[:, cols.index1]
            valid &= ~touched
        return values, valid


@contextlib.contextmanager
def direct_io() -> Iterator[None]:
    """Datasets opened inside read uncompressed GeoTIFF pixels straight from the file into the caller's
    array (GDAL's ``GTIFF_DIRECT_IO``, set for this thread only and read by GDAL at open), not through
    GDAL's block cache: there is nothing to decode, so caching only copied every pixel once more and held
    it (the demo scene's 6 bands: decoding 21–28 → 13 ms, 32 MB of cache → 0). Other formats and
    compressed GeoTIFFs (JPEG 2000, COGs) ignore it and keep the cache, which spares them decoding a
    block twice. Left alone where the user set the option."""
    from osgeo import gdal  # the GDAL rasterio uses where both are linked to one (else a no-op)

    if gdal.GetConfigOption(DIRECT_IO) is not None:
        yield
        return
    before = gdal.GetThreadLocalConfigOption(DIRECT_IO)
    gdal.SetThreadLocalConfigOption(DIRECT_IO, "YES")
    try:
        yield
    finally:
        gdal.SetThreadLocalConfigOption(DIRECT_IO, before)


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
