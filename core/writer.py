"""GeoTIFF products written window by window, under temporary names until complete (DESIGN §7).

Every product is written as ``<name>.tif.part`` and renamed by :meth:`ProductWriter.commit`
once every chunk is written, overviews are built and the file is closed, so a
crash never leaves a file that looks finished.

For resume (:mod:`.journal`) a chunk must be on disk before it is journaled:
:meth:`ProductWriter.flush` writes GDAL's block cache and the TIFF directory of
every product (``FlushCache``) and ``fsync``\\ s the files. A killed run's
``.part`` files are reopened in update mode (``resume=True``) and the remaining
chunks written into them.

The files are written through GDAL's own bindings rather than rasterio because
rasterio 1.3 ignores errors raised while a dataset is flushed or closed (a full
disk would go unnoticed until the file is read back); here every GDAL call runs
under a thread-local error handler and any failure becomes an :class:`OutputError`
naming the file.
"""
from __future__ import annotations

import errno
import math
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .atomic import exclusive_file, fsync_folder
from .config import map_on_cores
from .errors import OutputError
from .nomenclature import hex_to_rgb
from .scl import MASK_CLASSES, MASK_COLOURS, MASK_NODATA
from .products import DEFAULT_PRODUCTS, RASTER_PRODUCTS
from .uncertainty import CLASS_NODATA

PARTIAL_SUFFIX = ".part"
FLOAT_PRODUCTS = ("maxprob", "entropy", "gap")
#: Products of codes, not measures: no predictor, and overviews that pick a pixel instead of averaging (:func:`_halve`).
CATEGORICAL_PRODUCTS = ("class", "mask")
BLOCK = 512
#: Overview block edge: a level holds back less than one block row before writing (_OverviewPyramid).
OVERVIEW_BLOCK = 128
#: Prefix of the empty file that shows an output folder is writable.
WRITE_TEST_PREFIX = ".s2seg-write-test-"


@dataclass(frozen=True)
class ProductSpec:
    """One output raster: its key, band count, dtype and nodata."""

    key: str
    count: int
    dtype: str
    nodata: float


def product_paths(output_dir: Path, tile_name: str, write_probs: bool, keys: Sequence[str] | None = None) -> dict[str, Path]:
    """Final paths of the raster products of a tile: ``keys`` (of :data:`RASTER_PRODUCTS`), or by
    default :data:`DEFAULT_PRODUCTS` plus ``probs`` with ``write_probs``."""
    if keys is None:
        keys = [*DEFAULT_PRODUCTS] + (["probs"] if write_probs else [])
    return {key: output_dir / f"{tile_name}_{key}.tif" for key in RASTER_PRODUCTS if key in keys}


def partial_path(path: Path) -> Path:
    """The temporary name a product is written under until it is complete."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def creation_options(dtype: str, compress: str, categorical: bool, block: int = BLOCK) -> dict[str, object]:
    """Tiled, compressed GeoTIFF options (rasterio keywords); the predictor fits the data (none for class ids)."""
    options: dict[str, object] = {
        "driver": "GTiff", "tiled": True, "blockxsize": block, "blockysize": block,
        "bigtiff": "IF_SAFER", "num_threads": "ALL_CPUS", "compress": compress,
        # Blocks never written stay absent (read as nodata). Without it GDAL writes every absent block when
        # the file is closed, e.g. when a run stops: ~2.7 kB per float block, 33 GB for a tile declared
        # 10⁶ × 10⁶ px, whatever was computed. Blocks of nodata only are not stored either.
        "sparse_ok": True,
    }
    if compress == "ZSTD":
        options["zstd_level"] = 1  # measured (docs/benchmarks.md): level 9 is 3× slower for <1 % smaller files
    if compress in ("ZSTD", "DEFLATE", "LZW") and not categorical:
        options["predictor"] = 3 if dtype == "float32" else 2
    return options


def _gdal_creation_options(dtype: str, compress: str, categorical: bool, block: int) -> list[str]:
    options = creation_options(dtype, compress, categorical, block)
    options.pop("driver")
    return [f"{key.upper()}={'YES' if value is True else value}" for key, value in options.items()]


class _GdalErrors:
    """Collects the GDAL errors (CE_Failure and worse) raised on this thread while active.

    GDAL error handlers are thread-local, so the writer thread sees its own errors only.
    Works whether or not ``gdal.UseExceptions()`` is on (then the call also raises RuntimeError).
    """

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, err_class: int, err_no: int, message: str) -> None:
        from osgeo import gdal

        if err_class >= gdal.CE_Failure and message not in self.messages:
            self.messages.append(message)

    def __enter__(self) -> "_GdalErrors":
        from osgeo import gdal

        gdal.PushErrorHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        from osgeo import gdal

        gdal.PopErrorHandler()


def _checked(path: Path, action: Callable[[], Any]) -> Any:
    """Run a GDAL call; an error GDAL reports (by handler or exception) becomes an OutputError naming ``path``."""
    with _GdalErrors() as errors:
        try:
            result = action()
        except RuntimeError as exc:  # gdal.UseExceptions() is on
            errors.messages.append(str(exc))
            result = None
    if errors.messages:
        raise _output_error(path, "; ".join(errors.messages))
    return result


class ProductWriter:
    """Opens every product under ``<name>.tif.part``, writes windows, and renames on :meth:`commit`.

    ``block`` is the GeoTIFF block edge (see :func:`s2seg.core.grid.block_size`);
    ``resume=True`` reopens the ``.part`` files of an interrupted run instead of
    creating them (an :class:`OutputError` when they are missing or do not fit).
    ``origin`` is the tile pixel ``(row, col)`` of the products' corner (an area of interest):
    :meth:`write`, :meth:`read` and :meth:`flush` take tile pixel coordinates.
    """

    def __init__(self, output_dir: Path, tile_name: str, *, width: int, height: int, crs, transform,
                 class_names: Sequence[str], class_colours: Sequence[str], write_probs: bool, compress: str = "ZSTD",
                 block: int = BLOCK, resume: bool = False, origin: tuple[int, int] = (0, 0),
                 products: Sequence[str] | None = None):
        self.output_dir = Path(output_dir)
        self.origin = origin
        self.paths = product_paths(self.output_dir, tile_name, write_probs, products)
        self.class_names = list(class_names)
        self.class_colours = list(class_colours)
        self.width, self.height = width, height
        self._datasets: dict[str, Any] = {}
        #: the overviews of a new file, fed as its windows are written (:class:`_OverviewFeed`; not ``probs``:
        #: its first level, 19 bands of a chunk row, is too large to hold)
        self._feeds: dict[str, _OverviewFeed] = {}
        specs = [ProductSpec("class", 1, "uint8", CLASS_NODATA)] + [ProductSpec(k, 1, "float32", math.nan) for k in FLOAT_PRODUCTS]
        specs.append(ProductSpec("probs", len(self.class_names), "float32", math.nan))
        specs.append(ProductSpec("mask", 1, "uint8", MASK_NODATA))
        specs = [spec for spec in specs if spec.key in self.paths]  # the selected products only
        self.specs = {spec.key: spec for spec in specs}
        try:
            for spec in specs:
                if resume:
                    self._datasets[spec.key] = self._reopen(spec, transform)
                else:
                    self._datasets[spec.key] = self._create(spec, crs, transform, compress, block)
        except OutputError as exc:
            release_frames(exc)
            if resume:
                self._close_all()  # leave the files: the caller decides to start over
            else:
                self.abort()
            raise OutputError(f"cannot {'reopen' if resume else 'create'} outputs in {self.output_dir}: {exc}") from None

    # --- opening ------------------------------------------------------------------------
    def _create(self, spec: ProductSpec, crs, transform, compress: str, block: int):
        from osgeo import gdal

        path = self._partial(spec.key)
        for stale in (path, Path(str(path) + ".aux.xml")):  # of another run; a link is removed, never written through
            stale.unlink(missing_ok=True)
        dtype = gdal.GDT_Byte if spec.dtype == "uint8" else gdal.GDT_Float32
        options = _gdal_creation_options(spec.dtype, compress, spec.key in CATEGORICAL_PRODUCTS, block)
        driver = gdal.GetDriverByName("GTiff")
        ds = _checked(path, lambda: driver.Create(str(path), self.width, self.height, spec.count, dtype, options))
        if ds is None:
            raise OutputError(f"cannot create {path}")
        self._datasets[spec.key] = ds  # closed by abort() should describing it fail

        def describe() -> None:
            ds.SetGeoTransform(transform.to_gdal())
            ds.SetProjection(crs.to_wkt())
            for i in range(1, spec.count + 1):
                band = ds.GetRasterBand(i)
                band.SetNoDataValue(spec.nodata)
                if spec.key == "class":
                    table = gdal.ColorTable()
                    for index, colour in enumerate(self.class_colours):
                        table.SetColorEntry(index, (*hex_to_rgb(colour), 255))
                    band.SetRasterColorTable(table)
                    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
                    band.SetDescription("class")
                elif spec.key == "mask":  # codes of mask.MASK_CLASSES: a palette of their own
                    table = gdal.ColorTable()
                    for index, colour in enumerate(MASK_COLOURS):
                        table.SetColorEntry(index, (*hex_to_rgb(colour), 255))
                    band.SetRasterColorTable(table)
                    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
                    band.SetDescription("mask")
                elif spec.key == "probs":
                    band.SetDescription(self.class_names[i - 1])
                else:
                    band.SetDescription(spec.key)

        _checked(path, describe)
        if spec.key != "probs":
            levels = _checked(path, lambda: _empty_overviews(ds))
            if levels:
                pyramid = _OverviewPyramid(levels, self.width, self.height, nearest=spec.key in CATEGORICAL_PRODUCTS)
                self._feeds[spec.key] = _OverviewFeed(pyramid, spec.count, self.width, self.height, spec.dtype)
        return ds

    def _reopen(self, spec: ProductSpec, transform):
        from osgeo import gdal

        path = self._partial(spec.key)
        if path.is_symlink() or not path.is_file():
            raise OutputError(f"{path.name} is {'a symbolic link' if path.is_symlink() else 'missing'}")
        ds = _checked(path, lambda: gdal.OpenEx(str(path), gdal.OF_RASTER | gdal.OF_UPDATE, open_options=["NUM_THREADS=ALL_CPUS"]))
        if ds is None:
            raise OutputError(f"cannot open {path.name}")
        dtype = gdal.GetDataTypeName(ds.GetRasterBand(1).DataType).lower()
        expected_dtype = "byte" if spec.dtype == "uint8" else spec.dtype
        found = (ds.RasterXSize, ds.RasterYSize, ds.RasterCount, dtype)
        if found != (self.width, self.height, spec.count, expected_dtype) or not np.allclose(ds.GetGeoTransform(), transform.to_gdal()):
            ds = None
            raise OutputError(f"{path.name} is not the partial product of this tile ({found[0]} × {found[1]} px, "
                              f"{found[2]} band(s) of {found[3]})")
        return ds

    def _partial(self, key: str) -> Path:
        return partial_path(self.paths[key])

    @property
    def partial_paths(self) -> list[Path]:
        return [self._partial(key) for key in self.paths]

    # --- writing --------------------------------------------------------------------------
    def write(self, key: str, array: np.ndarray, row0: int, col0: int) -> None:
        """Write ``array`` (2-D, or 3-D bands-first for probs) at global pixel (row0, col0)."""
        row0, col0 = row0 - self.origin[0], col0 - self.origin[1]
        # No local reference to the dataset: a traceback must not keep it open (see release_frames).
        if array.ndim == 2:
            _checked(self.paths[key], lambda: self._datasets[key].GetRasterBand(1).WriteArray(array, xoff=col0, yoff=row0))
        else:
            _checked(self.paths[key], lambda: self._datasets[key].WriteArray(array, xoff=col0, yoff=row0))
        if key in self._feeds:
            _checked(self.paths[key], lambda: self._feeds[key].add(array.reshape(-1, *array.shape[-2:]), row0, col0))

    def read(self, key: str, row0: int, col0: int, height: int, width: int) -> np.ndarray:
        """Read back a window of a product (band 1) — used to rebuild the preview of resumed chunks."""
        row0, col0 = row0 - self.origin[0], col0 - self.origin[1]
        array = _checked(self._partial(key), lambda: self._datasets[key].GetRasterBand(1).ReadAsArray(col0, row0, width, height))
        if array is None:  # a decoding error raised on one of GDAL's worker threads
            raise OutputError(f"cannot read back rows {row0}–{row0 + height}, cols {col0}–{col0 + width} of {self._partial(key)}")
        return array

    def flush(self, windows: Sequence[tuple[int, int, int, int]] = (), sync: bool = True) -> None:
        """Put every written window on disk: GDAL block cache and TIFF directory, then ``fsync``.

        ``windows`` (``row0, col0, height, width``) are then checked on disk: a separate
        read-only handle must find every block they cover. GDAL 3.6's ``FlushCache``
        writes the TIFF directory *before* the blocks it flushes, so one call leaves the
        newest blocks unreferenced on disk; the second call writes the directory again.
        Should a GDAL version still leave a block out, the files are closed and reopened.
        """
        windows = [(r - self.origin[0], c - self.origin[1], h, w) for r, c, h, w in windows]
        for attempt in range(2):
            for _ in range(2):
                for key in self._datasets:
                    _checked(self._partial(key), lambda: self._datasets[key].FlushCache())
            missing = self._missing_blocks(windows)
            if not missing:
                break
            if attempt == 0:
                self._reopen_all()
        else:
            raise OutputError(f"cannot get {missing} onto disk: GDAL does not write its block offsets")
        if sync:
            self.sync()

    def sync(self) -> None:
        """``fsync`` every partial product: what :meth:`flush` put into the page cache reaches the disk.
        Safe from another thread than the one writing (it works on paths, not on GDAL handles)."""
        for key in list(self.paths):
            _fsync(self._partial(key))

    def _missing_blocks(self, windows: Sequence[tuple[int, int, int, int]]) -> str:
        """'' when every block of ``windows`` has an offset in every file as read from disk, else what is missing."""
        if not windows:
            return ""
        from osgeo import gdal

        for key in self._datasets:
            path = self._partial(key)
            ds = _checked(path, lambda: gdal.OpenEx(str(path), gdal.OF_RASTER | gdal.OF_READONLY))
            if ds is None:
                return str(path)
            band = ds.GetRasterBand(1)
            bw, bh = band.GetBlockSize()
            for row0, col0, height, width in windows:
                for by in range(row0 // bh, (row0 + height - 1) // bh + 1):
                    for bx in range(col0 // bw, (col0 + width - 1) // bw + 1):
                        item = f"BLOCK_OFFSET_{bx}_{by}"
                        # Absent on disk is right only for a block GDAL did not store (nodata only, sparse
                        # file): then the writing handle, which knows every block it wrote, has none either.
                        if not band.GetMetadataItem(item, "TIFF") and \
                                self._datasets[key].GetRasterBand(1).GetMetadataItem(item, "TIFF"):
                            return f"block {bx}, {by} of {path}"
            del band
            ds = None
        return ""

    def _reopen_all(self) -> None:
        from osgeo import gdal

        keys = list(self._datasets)
        self._close_all(raise_errors=True)  # the feeds too: the commit builds the overviews from the files
        for key in keys:
            path = self._partial(key)
            self._datasets[key] = _checked(path, lambda: gdal.OpenEx(str(path), gdal.OF_RASTER | gdal.OF_UPDATE,
                                                                   open_options=["NUM_THREADS=ALL_CPUS"]))
            if self._datasets[key] is None:
                raise OutputError(f"cannot reopen {path}")

    # --- finishing --------------------------------------------------------------------------
    def commit(self, check: Callable[[], None] | None = None) -> dict[str, Path]:
        """Build overviews, close, then rename every product to its final name.

        ``check`` is called between steps (every strip of overviews) and raises to stop. On any
        failure the ``.part`` files are left as they are, for the caller to keep or :meth:`abort`:
        an interrupted commit is done again from the start (overviews are rebuilt, see :meth:`_finish`).
        """
        check = check or (lambda: None)
        try:
            self.flush(sync=False)  # the overviews are computed from the files as they are on disk
            for key in list(self._datasets):
                check()
                self._finish(key, check)
            self._close_all(raise_errors=True)
        except BaseException as exc:
            release_frames(exc)
            raise
        for key in self.paths:
            for suffix in ("", ".aux.xml"):
                partial = Path(str(self._partial(key)) + suffix)
                if partial.exists():
                    os.replace(partial, Path(str(self.paths[key]) + suffix))
        fsync_folder(self.output_dir)
        return dict(self.paths)

    def _finish(self, key: str, check: Callable[[], None] = lambda: None) -> None:
        """Overviews and, for the class raster, class names as GDAL category names (kept in the standard
        .aux.xml beside the GeoTIFF).

        A new file's overviews were filled as it was written (:class:`_OverviewFeed`). Otherwise (a resumed
        run, ``probs``, a broken feed, an earlier failed commit) the levels are made again, empty, by GDAL and
        :class:`_OverviewPyramid` fills them from the full-resolution rows, read back strip by strip. Not
        ``BuildOverviews("AVERAGE")``: GDAL 3.6 reads the file back with the dataset's decoding threads and,
        once its block cache is full, can deadlock (a decoding thread evicts a dirty overview block whose
        compression waits for a free thread of the same pool; seen here on 2 cores with GDAL_CACHEMAX set
        empty, i.e. no cache). Here a second, read-only handle decodes on the calling thread, and only whole
        block rows of a level are written. Measured on a full tile's four products: 31 s against 44 s for
        BuildOverviews.
        """
        ds = self._datasets[key]
        path = self._partial(key)
        feed = self._feeds.pop(key, None)
        if feed is None or not feed.complete:
            del feed  # its band handles, before GDAL removes the levels
            levels = _checked(path, lambda: _empty_overviews(ds, replace=True))
            if levels:
                pyramid = _OverviewPyramid(levels, ds.RasterXSize, ds.RasterYSize, nearest=key in CATEGORICAL_PRODUCTS)
                _checked(path, lambda: self._fill_overviews(key, pyramid, check))
                del pyramid, levels
        if key == "class":
            names = self.class_names + [""] * (CLASS_NODATA - len(self.class_names)) + ["nodata"]
            _checked(path, lambda: ds.GetRasterBand(1).SetCategoryNames(names))
        elif key == "mask":
            names = list(MASK_CLASSES) + [""] * (MASK_NODATA - len(MASK_CLASSES)) + ["nodata"]
            _checked(path, lambda: ds.GetRasterBand(1).SetCategoryNames(names))

    def _fill_overviews(self, key: str, pyramid: _OverviewPyramid, check: Callable[[], None] = lambda: None) -> None:
        """Fill the empty levels of ``pyramid`` from the full-resolution pixels of ``key`` on disk."""
        from osgeo import gdal

        ds = self._datasets[key]
        path = self._partial(key)
        source = gdal.OpenEx(str(path), gdal.OF_RASTER | gdal.OF_READONLY)  # no NUM_THREADS: see _finish
        if source is None:
            raise OutputError(f"cannot read back {path}")
        rows = 2 * OVERVIEW_BLOCK  # one block row of the first level
        for row0 in range(0, ds.RasterYSize, rows):
            check()
            height = min(rows, ds.RasterYSize - row0)
            strip = source.ReadAsArray(0, row0, ds.RasterXSize, height)
            if strip is None:
                raise OutputError(f"cannot read back rows {row0}–{row0 + height} of {path}")
            pyramid.push(strip.reshape(ds.RasterCount, height, ds.RasterXSize), last=row0 + height == ds.RasterYSize)

    def close(self) -> bool:
        """Close every file and keep it (a resumable stop); True when GDAL reported no error."""
        try:
            self._close_all(raise_errors=True)
        except OutputError:
            return False
        return True

    def abort(self) -> None:
        """Close and delete every temporary file: nothing that looks finished is left."""
        self._close_all()
        for key in self.paths:
            for suffix in ("", ".aux.xml"):
                Path(str(self._partial(key)) + suffix).unlink(missing_ok=True)

    def _close_all(self, raise_errors: bool = False) -> None:
        self._feeds.clear()  # their band handles keep a dataset open
        holders = {key: [self._datasets.pop(key)] for key in list(self._datasets)}

        def close(key: str) -> OutputError | None:
            try:
                # The last reference going away closes the dataset (GDAL 3.6 has no Close()):
                # drop it inside the error handler (per thread) so that errors of the final write are seen.
                _checked(self._partial(key), holders[key].clear)
            except OutputError as exc:
                return exc
            return None

        # Side by side: GDAL takes ~0.1 s to close each product of a 5040² tile (0.42 → 0.22 s for four, measured)
        # and nothing else runs then. Each dataset is closed by one thread only.
        errors = [e for e in map_on_cores(close, holders, "s2seg-close") if e is not None]
        if errors and raise_errors:
            raise errors[0]


def release_frames(exc: BaseException | None) -> None:
    """Clear the local variables of the (finished) frames an exception and its causes went through.

    A traceback keeps its frames, and their locals may hold a GDAL dataset: the file would stay
    open — and be flushed later, behind the back of a run resuming it — until the exception is
    garbage. Call before closing or deleting the files after a failure.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def _fsync(path: Path) -> None:
    try:
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
    except OSError as exc:
        raise _output_error(path, exc.strerror or str(exc)) from None


class _OverviewPyramid:
    """Overview levels filled top to bottom, each level made from the one above by halving
    (:func:`_halve`). A level holds back less than one of its block rows and writes whole block rows
    only, so no block is written twice and the memory is a few strips, whatever the tile size."""

    def __init__(self, levels: Sequence[Sequence[Any]], width: int, height: int, nearest: bool):
        self.levels = levels
        self.nearest = nearest
        self.pending: list[np.ndarray | None] = [None] * len(levels)
        self.written = [0] * len(levels)
        for bands in levels:  # GDAL sizes level k as ceil(size / 2^k): what halving gives, level by level
            width, height = math.ceil(width / 2), math.ceil(height / 2)
            if (bands[0].XSize, bands[0].YSize) != (width, height):
                raise OutputError(f"overview of {bands[0].XSize} × {bands[0].YSize} px where {width} × {height} was expected")

    def push(self, rows: np.ndarray, last: bool = False) -> None:
        """Add full-resolution ``rows`` (bands, rows, cols), an even number unless ``last`` (nothing follows)."""
        self.add(_halve(rows, self.nearest), 0, last)

    def add(self, rows: np.ndarray, level: int = 0, last: bool = False) -> None:
        """Add ``rows`` (bands, rows, cols) of overview ``level`` (0: the first, half the full resolution).
        Whole block rows are written from ``rows`` itself: only the rows held back are copied (a feed hands
        over a chunk row of the first level at once)."""
        if level == len(self.levels):
            return
        block = self.levels[level][0].GetBlockSize()[1]  # even: the next level halves whole row pairs
        held = self.pending[level]
        if held is not None and held.shape[1]:
            take = min(rows.shape[1], block - held.shape[1])
            head, rows = np.concatenate([held, rows[:, :take]], axis=1), rows[:, take:]
            if head.shape[1] < block and not last:
                self.pending[level] = head
                return
            self.pending[level] = None
            self._write(head, level, last and not rows.shape[1])
            if last and not rows.shape[1]:
                return
        n = rows.shape[1] if last else rows.shape[1] // block * block
        self.pending[level] = rows[:, n:].copy()
        if n or last:
            self._write(rows[:, :n], level, last)

    def _write(self, rows: np.ndarray, level: int, last: bool) -> None:
        """Write ``rows`` (whole block rows unless ``last``) into ``level`` and pass them on, halved."""
        if rows.shape[1]:
            for band, plane in zip(self.levels[level], rows):
                band.WriteArray(plane, 0, self.written[level])
            self.written[level] += rows.shape[1]
        self.add(_halve(rows, self.nearest), level + 1, last)


class _OverviewFeed:
    """The first overview level of one product, halved from the windows as they are written (:meth:`add`)
    and handed to its :class:`_OverviewPyramid` as soon as its rows are complete across the product.
    No product is read back at the commit then; with chunks in row order, one chunk row of the first level
    is held. A window that breaks the 2 × 2 pairs (odd origin or size inside the product) or covers pixels
    written before stops the feed (:attr:`broken`): the commit then builds the overviews from the file."""

    def __init__(self, pyramid: _OverviewPyramid, bands: int, width: int, height: int, dtype: str):
        self.pyramid = pyramid
        self.width, self.height = width, height
        self.half_width, self.half_height = math.ceil(width / 2), math.ceil(height / 2)
        self.top = 0  # the first row of the first level not yet handed over
        self.rows = np.empty((bands, 0, self.half_width), dtype=dtype)  # from ``top`` on
        self.filled = np.zeros(0, dtype=np.int64)  # pixels written in each of those rows
        #: the windows in those rows (first-level rows from ``top``, cols): a row is complete when its windows,
        #: which may not overlap, add up to its width; a few dozen a chunk row, so a list is enough
        self.windows: list[tuple[int, int, int, int]] = []
        self.broken = False

    @property
    def complete(self) -> bool:
        return not self.broken and self.top == self.half_height

    def add(self, array: np.ndarray, row0: int, col0: int) -> None:
        """``array`` (bands, rows, cols) was written at product pixel ``(row0, col0)``."""
        if self.broken:
            return
        _, h, w = array.shape
        if row0 % 2 or col0 % 2 or (h % 2 and row0 + h != self.height) or (w % 2 and col0 + w != self.width):
            return self._break()
        half = _halve(array, self.pyramid.nearest)
        r0, c0 = row0 // 2 - self.top, col0 // 2
        r1 = r0 + half.shape[1]
        if r0 < 0:
            return self._break()  # rows already handed over
        if r1 > self.rows.shape[1]:  # a new row of chunks: room for it
            grown = np.empty((self.rows.shape[0], r1, self.half_width), dtype=self.rows.dtype)
            grown[:, : self.rows.shape[1]] = self.rows
            self.rows = grown
            self.filled = np.concatenate([self.filled, np.zeros(r1 - len(self.filled), dtype=np.int64)])
        c1 = c0 + half.shape[2]
        if any(r0 < b1 and b0 < r1 and c0 < d1 and d0 < c1 for b0, b1, d0, d1 in self.windows):
            return self._break()  # a pixel written twice
        self.windows.append((r0, r1, c0, c1))
        self.rows[:, r0:r1, c0:c1] = half
        self.filled[r0:r1] += half.shape[2]
        done = int(np.argmin(self.filled == self.half_width)) if (self.filled < self.half_width).any() else len(self.filled)
        if done:
            self.top += done
            self.pyramid.add(self.rows[:, :done], 0, last=self.top == self.half_height)
            # Views, not copies: the last chunk of a row hands its rows over strip by strip, and copying what
            # remains each time would copy most of a chunk row again per strip (no row handed over is written again).
            self.rows, self.filled = self.rows[:, done:], self.filled[done:]
            self.windows = [(b0 - done, b1 - done, d0, d1) for b0, b1, d0, d1 in self.windows if b1 > done]

    def _break(self) -> None:
        self.broken = True
        self.rows, self.filled, self.windows = self.rows[:, :0], self.filled[:0], []


def _halve(x: np.ndarray, nearest: bool) -> np.ndarray:
    """One overview level down: a 2 × 2 NaN-ignoring mean, or for class ids the top-left pixel (which GDAL's
    NEAREST also picks where a size is even); an odd last row or column is halved with its missing pair."""
    if nearest:
        return np.ascontiguousarray(x[:, ::2, ::2])
    bands, h, w = x.shape
    if not h % 2 and not w % 2 and not np.isnan(x).any():  # the common case, in a third of the time
        total = x[:, 0::2, 0::2] + np.float32(0)  # the same additions as below, from 0 (so -0.0 + 0 = +0.0)
        total += x[:, 0::2, 1::2]
        total += x[:, 1::2, 0::2]
        total += x[:, 1::2, 1::2]
        total /= np.float32(4)
        return total
    if h % 2 or w % 2:  # an odd last row or column: its pair is missing (NaN, ignored)
        padded = np.full((bands, h + h % 2, w + w % 2), np.nan, dtype=np.float32)
        padded[:, :h, :w] = x
        x = padded
    total = np.zeros((bands, x.shape[1] // 2, x.shape[2] // 2), dtype=np.float32)
    count = np.zeros_like(total)
    for quarter in (x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]):
        valid = quarter == quarter  # not NaN
        count += valid
        total += np.where(valid, quarter, np.float32(0))
    with np.errstate(invalid="ignore"):
        total /= count  # 0 / 0: NaN where no pixel of the four is valid
    return total


def _empty_overviews(ds: Any, replace: bool = False) -> list[list[Any]]:
    """Empty overview levels of ``ds`` (bands of each level), of :data:`OVERVIEW_BLOCK` px blocks, made by
    GDAL; ``replace``: any levels the file has are removed first. None below 512 px (:func:`_overview_factors`)."""
    from osgeo import gdal

    if replace and ds.GetRasterBand(1).GetOverviewCount():
        ds.BuildOverviews("NONE", [])
    factors = _overview_factors(ds.RasterXSize, ds.RasterYSize)
    if not factors:
        return []
    previous = gdal.GetThreadLocalConfigOption("GDAL_TIFF_OVR_BLOCKSIZE", None)
    gdal.SetThreadLocalConfigOption("GDAL_TIFF_OVR_BLOCKSIZE", str(OVERVIEW_BLOCK))
    try:
        ds.BuildOverviews("NONE", factors)
    finally:
        gdal.SetThreadLocalConfigOption("GDAL_TIFF_OVR_BLOCKSIZE", previous)
    return [[ds.GetRasterBand(b).GetOverview(i) for b in range(1, ds.RasterCount + 1)] for i in range(len(factors))]


def _overview_factors(width: int, height: int) -> list[int]:
    factors = []
    factor = 2
    while max(width, height) / factor >= 256:
        factors.append(factor)
        factor *= 2
    return factors


def _output_error(path: Path, exc: Exception | str) -> OutputError:
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "No space left" in text or "disk full" in text.lower():
        return OutputError(f"disk full while writing {path}: free some space or choose another output folder")
    return OutputError(f"cannot write {path}: {text}")


def check_output_folder(output_dir: Path) -> None:
    """Refuse before any work a folder we cannot write to; create it when missing."""
    try:
        str(output_dir).encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in the name (surrogate escapes): GDAL takes UTF-8 names only
        shown = os.fsencode(output_dir).decode("utf-8", "backslashreplace")
        raise OutputError(f"output folder {shown}: its name is not valid UTF-8, which GDAL needs for file names; "
                          f"choose a folder whose name is") from None
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"output folder {output_dir} is a file")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {output_dir}: {exc.strerror or exc}") from None
    try:
        with exclusive_file(output_dir, WRITE_TEST_PREFIX):  # a new file: a planted link is never written through
            pass
    except OSError as exc:
        raise OutputError(f"output folder {output_dir} is not writable: {exc.strerror or exc}") from None
