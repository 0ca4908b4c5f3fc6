"""The class raster as polygons: ``<tile>_landcover.gpkg``, in bounded memory (issue 21).

1. Minimum mapping unit: GDAL's sieve filter (4-connected, like the polygons) gives every patch
   smaller than the MMU to its largest neighbour; nodata is masked, never merged into.
2. Pass 1, in strips of :data:`STRIP_ROWS` rows: in a strip each 4-connected piece of one class
   gets an id (``scipy.ndimage.label``, per class), and the maxprob and gap rasters give each piece
   its pixel sums (``bincount``). A region crossing strip borders is several pieces: pieces of one
   class that touch across a border (the last row of a strip against the first of the next) are
   joined (union-find), and the region's statistics are the sums over its pieces.
3. Pass 2, in strips again: the region id of every pixel goes into a temporary raster, which GDAL
   polygonises in one call (GDAL's polygoniser streams by rows and holds only the polygons still
   open): one polygon per region, exact pixel edges, no geometry union (unioning the pieces of
   regions spanning many strips cost more than everything else). Each polygon then gets its
   region's attributes (one SQL update).

Memory: a strip, the statistics of every piece (48 bytes each) and GDAL's open polygons.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .atomic import atomic_path
from .errors import OutputError
from .gdalprogress import cancellable
from .styles import store_default_style, vector_qml
from .uncertainty import CLASS_NODATA

#: Rows per strip: bounds the label image (int32) and the strip's polygons.
STRIP_ROWS = 512
LAYER = "landcover"
#: Attribute fields, in order.
FIELDS = ("class_id", "class_name", "area_ha", "mean_maxprob", "mean_gap")


@dataclass(frozen=True)
class VectorSummary:
    """What :func:`vectorize` wrote."""

    path: Path
    polygons: int
    sieve_pixels: int  # patches below this many pixels were merged (0: no sieve)


def mmu_pixels(mmu_ha: float, pixel_area_m2: float) -> int:
    """The minimum mapping unit in pixels (rounded; a patch of fewer pixels is merged)."""
    return int(round(mmu_ha * 1e4 / pixel_area_m2)) if mmu_ha > 0 else 0


def vectorize(class_path: Path, target: Path, names: Sequence[str], colours: Sequence[str], *, mmu_ha: float,
              maxprob_path: Path | None = None, gap_path: Path | None = None, strip_rows: int = STRIP_ROWS,
              check: Callable[[], None] = lambda: None) -> VectorSummary:
    """Polygons of ``class_path`` into ``target`` (GeoPackage, written under a temporary name and
    renamed when complete), styled with ``names``/``colours`` as the layer's default QGIS style.
    ``maxprob_path``/``gap_path`` (None: that mean stays NULL) give the mean of each polygon."""
    from osgeo import gdal

    class_path, target = Path(class_path), Path(target)
    source = gdal.OpenEx(str(class_path), gdal.OF_RASTER | gdal.OF_READONLY)
    if source is None:
        raise OutputError(f"cannot read the class raster {class_path} to make polygons")
    gt = source.GetGeoTransform()
    threshold = mmu_pixels(mmu_ha, abs(gt[1] * gt[5]))
    sieved_path = target.with_name(f".{target.name}.sieve.tif")
    try:
        if threshold > 1:
            classes = _sieve(source, sieved_path, threshold, check)
        else:
            classes = source
        with atomic_path(target) as tmp:
            tmp.unlink()  # GDAL creates the GeoPackage itself
            count = _polygonize(classes, tmp, names, colours, strip_rows, check,
                                _open_optional(maxprob_path), _open_optional(gap_path))
            classes = None
    finally:
        source = classes = None
        sieved_path.unlink(missing_ok=True)
    return VectorSummary(target, count, threshold if threshold > 1 else 0)


def _open_optional(path: Path | None):
    from osgeo import gdal

    if path is None or not Path(path).exists():
        return None
    ds = gdal.OpenEx(str(path), gdal.OF_RASTER | gdal.OF_READONLY)
    if ds is None:
        raise OutputError(f"cannot read {path} for the polygon attributes")
    return ds


def _sieve(source, path: Path, threshold: int, check: Callable[[], None]):
    """``source`` with patches under ``threshold`` pixels merged into their largest neighbour (a temporary file)."""
    from osgeo import gdal

    check()
    driver = gdal.GetDriverByName("GTiff")
    ds = driver.Create(str(path), source.RasterXSize, source.RasterYSize, 1, gdal.GDT_Byte,
                       ["TILED=YES", "COMPRESS=ZSTD", "ZSTD_LEVEL=1", "BIGTIFF=IF_SAFER"])
    if ds is None:
        raise OutputError(f"cannot create the temporary file {path}: {gdal.GetLastErrorMsg()}")
    ds.SetGeoTransform(source.GetGeoTransform())
    ds.SetProjection(source.GetProjection())
    band = source.GetRasterBand(1)
    out = ds.GetRasterBand(1)
    out.SetNoDataValue(CLASS_NODATA)

    progress = cancellable(check)

    # The mask (nodata = 255) keeps nodata out: never merged into, never growing into it.
    result = gdal.SieveFilter(band, band.GetMaskBand(), out, threshold, 4, callback=progress)
    check()
    if result != 0:
        raise OutputError(f"sieve filter failed on {path}: {gdal.GetLastErrorMsg()}")
    ds.FlushCache()
    return ds


class _UnionFind:
    """Union-find over region piece ids (only pieces that touch a strip border are ever joined)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:  # path compression
            self.parent[x], x = root, self.parent.get(x, x)
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _label(classes: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected regions of equal class (nodata excluded) numbered 1…n; a loop over the classes present."""
    from scipy import ndimage

    labels = np.zeros(classes.shape, dtype=np.int32)
    n = 0
    for value in np.unique(classes):
        if value == CLASS_NODATA:
            continue
        regions, found = ndimage.label(classes == value)
        np.add(labels, regions + n, out=labels, where=regions > 0)
        n += found
    return labels, n


def _read(ds, row0: int, rows: int, what: Path | str) -> np.ndarray:
    array = ds.GetRasterBand(1).ReadAsArray(0, row0, ds.RasterXSize, rows)
    if array is None:
        raise OutputError(f"cannot read rows {row0}–{row0 + rows} of {what}")
    return array


def _sums(labels: np.ndarray, n: int, ds, row0: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per label: Σ value and count of finite values of raster ``ds`` (zeros without a raster)."""
    if ds is None:
        return np.zeros(n + 1), np.zeros(n + 1)
    values = _read(ds, row0, rows, ds.GetDescription()).astype(np.float64)
    finite = np.isfinite(values)
    flat = labels.ravel()
    return (np.bincount(flat, weights=np.where(finite, values, 0.0).ravel(), minlength=n + 1),
            np.bincount(flat, weights=finite.ravel(), minlength=n + 1))


def _strips(classes, strip_rows: int, check: Callable[[], None]):
    """``(row0, rows, strip, labels, n, base)`` for every strip: pieces numbered ``base + 1 … base + n``
    over the raster (deterministic: both passes see the same ids)."""
    base = 0
    for row0 in range(0, classes.RasterYSize, strip_rows):
        check()
        rows = min(strip_rows, classes.RasterYSize - row0)
        strip = _read(classes, row0, rows, "the class raster")
        labels, n = _label(strip)
        yield row0, rows, strip, labels, n, base
        base += n


def _regions(classes, strip_rows: int, check: Callable[[], None], maxprob, gap) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1: every piece's statistics and the region (root piece) it belongs to.
    Returns ``root_of`` (piece id → region id, 0 → 0) and per region id the statistics
    ``[class, count, Σmaxprob, n maxprob, Σgap, n gap]`` (rows of non-root ids are zero)."""
    pieces = _UnionFind()
    stats_parts = [np.zeros((1, 6))]  # piece 0: nodata
    previous: tuple[np.ndarray, np.ndarray] | None = None  # global ids and classes of the previous strip's last row
    for row0, rows, strip, labels, n, base in _strips(classes, strip_rows, check):
        counts = np.bincount(labels.ravel(), minlength=n + 1)
        maxprob_sum, maxprob_n = _sums(labels, n, maxprob, row0, rows)
        gap_sum, gap_n = _sums(labels, n, gap, row0, rows)
        class_of = np.zeros(n + 1, dtype=np.float64)
        class_of[labels.ravel()] = strip.ravel()
        stats_parts.append(np.stack([class_of, counts, maxprob_sum, maxprob_n, gap_sum, gap_n], axis=1)[1:])
        top = np.where(labels[0] > 0, labels[0].astype(np.int64) + base, 0)
        if previous is not None:  # pieces of one class that touch across the border are one region
            above, above_class = previous
            joined = (above > 0) & (top > 0) & (above_class == strip[0])
            for a, b in np.unique(np.stack([above[joined], top[joined]]), axis=1).T.tolist():
                pieces.union(a, b)
        previous = (np.where(labels[-1] > 0, labels[-1].astype(np.int64) + base, 0), strip[-1])
    stats = np.concatenate(stats_parts)
    root_of = np.arange(len(stats), dtype=np.int64)
    joined_ids = np.fromiter(pieces.parent, dtype=np.int64, count=len(pieces.parent))
    root_of[joined_ids] = [pieces.find(int(x)) for x in joined_ids]
    regions = np.zeros_like(stats)
    np.add.at(regions, root_of, stats)  # sums over a region's pieces …
    regions[:, 0] = stats[:, 0]  # … but the class is its root piece's (every piece of a region has it)
    return root_of, regions


def create_geopackage(path: Path, named: Path | None = None):
    """A new, open OGR GeoPackage at ``path`` (often a temporary name that does not end in .gpkg, so
    GDAL's warning about it is silenced); an :class:`OutputError` naming ``named`` (else ``path``) when
    GDAL cannot create it."""
    from osgeo import gdal, ogr

    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    finally:
        gdal.PopErrorHandler()
    if ds is None:
        raise OutputError(f"cannot create GeoPackage {named or path}: {gdal.GetLastErrorMsg() or 'unknown GDAL error'}")
    return ds


def _polygonize(classes, path: Path, names: Sequence[str], colours: Sequence[str], strip_rows: int,
                check: Callable[[], None], maxprob, gap) -> int:
    """Pass 1 (:func:`_regions`), then pass 2: a temporary raster of region ids, strip by strip, that
    GDAL polygonises in one call (one polygon per region: no geometry is ever unioned), and each
    polygon's attributes from its region's statistics."""
    from osgeo import gdal, ogr, osr

    root_of, regions = _regions(classes, strip_rows, check, maxprob, gap)
    if len(root_of) > np.iinfo(np.int32).max:
        raise OutputError(f"too many regions ({len(root_of)}) to polygonise in {path}")
    width, height = classes.RasterXSize, classes.RasterYSize
    gt = classes.GetGeoTransform()
    pixel_ha = abs(gt[1] * gt[5]) / 1e4
    ids_path = path.with_name(f"{path.name}.ids.tif")
    ids = gdal.GetDriverByName("GTiff").Create(str(ids_path), width, height, 1, gdal.GDT_Int32,
                                               ["TILED=YES", "COMPRESS=ZSTD", "ZSTD_LEVEL=1", "BIGTIFF=IF_SAFER"])
    if ids is None:
        raise OutputError(f"cannot create the temporary file {ids_path}: {gdal.GetLastErrorMsg()}")
    try:
        ids.SetGeoTransform(gt)
        ids.SetProjection(classes.GetProjection())
        band = ids.GetRasterBand(1)
        band.SetNoDataValue(0)  # nodata: not polygonised
        for row0, rows, strip, labels, n, base in _strips(classes, strip_rows, check):
            band.WriteArray(np.where(labels > 0, root_of[labels + base], 0).astype(np.int32), 0, row0)
        ids.FlushCache()

        srs = osr.SpatialReference()
        srs.ImportFromWkt(classes.GetProjection())
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        out = create_geopackage(path)
        layer = out.CreateLayer(LAYER, srs, ogr.wkbPolygon, ["SPATIAL_INDEX=YES"])
        for name, kind in zip(FIELDS, (ogr.OFTInteger, ogr.OFTString, ogr.OFTReal, ogr.OFTReal, ogr.OFTReal)):
            layer.CreateField(ogr.FieldDefn(name, kind))

        progress = cancellable(check)

        # The region id goes into class_id for now; _set_attributes puts the attributes in its place.
        layer.StartTransaction()
        if gdal.Polygonize(band, band.GetMaskBand(), layer, 0, [], callback=progress) != 0:
            check()
            raise OutputError(f"cannot polygonise {ids_path}: {gdal.GetLastErrorMsg()}")
        layer.CommitTransaction()
        store_default_style(out, layer, vector_qml(names, colours, "class_id"), "s2seg classes",
                            "s2seg land cover classes")
        layer = None
        out = None  # closes (and finalises) the GeoPackage
    finally:
        band = ids = None
        ids_path.unlink(missing_ok=True)
    check()
    if not os.path.exists(path):
        raise OutputError(f"cannot write {path}")
    return _set_attributes(path, regions, names, pixel_ha)


def _set_attributes(path: Path, regions: np.ndarray, names: Sequence[str], pixel_ha: float) -> int:
    """Replace each polygon's region id (in ``class_id``) by its attributes, in one SQL ``UPDATE … FROM``
    joined with a temporary table of the regions (filled by ``executemany``): a loop over the features
    through OGR took 60 % of the time with a million polygons. Returns the number of polygons."""
    import sqlite3

    roots = np.flatnonzero(regions[:, 1] > 0)  # the regions (root pieces) that have pixels
    stats = regions[roots]
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 → NaN, which SQLite stores as NULL
        maxprob, gap = stats[:, 2] / stats[:, 3], stats[:, 4] / stats[:, 5]
    rows = zip(roots.tolist(), stats[:, 0].astype(np.int64).tolist(), (stats[:, 1] * pixel_ha).tolist(),
               maxprob.tolist(), gap.tolist())
    # The tables go in with sqlite3's executemany (fast); the UPDATE runs through GDAL, whose GeoPackage
    # driver provides the SQL functions (ST_IsEmpty …) that the GeoPackage's R-tree triggers call.
    try:
        con = sqlite3.connect(path)
        try:
            with con:
                con.execute("CREATE TABLE s2seg_classes (id INTEGER PRIMARY KEY, name TEXT)")
                con.executemany("INSERT INTO s2seg_classes VALUES (?, ?)", enumerate(names))
                con.execute("CREATE TABLE s2seg_regions (id INTEGER PRIMARY KEY, class_id INTEGER, area_ha REAL, "
                            "mean_maxprob REAL, mean_gap REAL)")
                con.executemany("INSERT INTO s2seg_regions VALUES (?, ?, ?, ?, ?)", rows)
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise OutputError(f"cannot write the polygon attributes to {path}: {exc}") from None
    from osgeo import gdal

    from .writer import _checked

    ds = _checked(path, lambda: gdal.OpenEx(str(path), gdal.OF_VECTOR | gdal.OF_UPDATE))
    if ds is None:
        raise OutputError(f"cannot reopen {path}")
    try:
        for sql in (f'UPDATE "{LAYER}" SET class_id = r.class_id, '
                    f'class_name = COALESCE(c.name, CAST(r.class_id AS TEXT)), area_ha = r.area_ha, '
                    f'mean_maxprob = r.mean_maxprob, mean_gap = r.mean_gap '
                    f'FROM s2seg_regions AS r LEFT JOIN s2seg_classes AS c ON c.id = r.class_id '
                    f'WHERE "{LAYER}".class_id = r.id',
                    "DROP TABLE s2seg_regions", "DROP TABLE s2seg_classes"):
            _checked(path, lambda: ds.ExecuteSQL(sql))
        count = ds.GetLayerByName(LAYER).GetFeatureCount()
    finally:
        ds = None
    return int(count)
