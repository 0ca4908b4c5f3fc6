"""The class raster as polygons: ``<tile>_landcover.gpkg``, in bounded memory (issue 21).

1. Minimum mapping unit: GDAL's sieve filter (4-connected, like the polygons) gives every patch
   smaller than the MMU to its largest neighbour; nodata is masked, never merged into.
2. The (sieved) class raster is read in strips of :data:`STRIP_ROWS` rows. In a strip, each
   4-connected region of one class gets a label (``scipy.ndimage.label``, per class) and GDAL
   polygonises the labels; the maxprob and gap rasters give each label its pixel sums (``bincount``).
3. A region crossing a strip border is several pieces: pieces of the same class that touch across
   the border (the last row of one strip against the first of the next) are joined (union-find),
   and a group is written, as the union of its pieces' geometries and the sum of their pixel
   statistics, once no piece of it touches the latest strip's last row. Only open groups are held,
   so memory is a strip plus the polygons that cross its lower edge.

Strip geotransforms are the raster's with the origin moved by whole rows; for a transform of
whole metres (every Sentinel-2 grid) the pieces' shared edges are bit-identical and dissolve.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .atomic import atomic_path
from .errors import OutputError
from .styles import vector_qml
from .uncertainty import CLASS_NODATA

#: Rows per strip: bounds the label image (int32) and the strip's polygons.
STRIP_ROWS = 512
LAYER = "landcover"
#: Attribute fields, in order.
FIELDS = ("class_id", "class_name", "area_ha", "mean_maxprob", "mean_gap")
#: Features written per GeoPackage transaction.
TRANSACTION = 20000


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

    def progress(fraction, message, data) -> int:
        try:
            check()
        except BaseException:
            return 0  # GDAL stops; the cancel is raised below
        return 1

    # The mask (nodata = 255) keeps nodata out: never merged into, never growing into it.
    result = gdal.SieveFilter(band, band.GetMaskBand(), out, threshold, 4, callback=progress)
    check()
    if result != 0:
        raise OutputError(f"sieve filter failed on {path}: {gdal.GetLastErrorMsg()}")
    ds.FlushCache()
    return ds


class _Groups:
    """Union-find over piece ids, with each open piece's geometry and statistics."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.geometry: dict[int, object] = {}
        self.stats: dict[int, np.ndarray] = {}  # [class, count, Σmaxprob, n maxprob, Σgap, n gap]

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

    def close(self, open_roots: set[int]) -> list[tuple[list[object], np.ndarray]]:
        """Remove and return (geometries, summed statistics) of every group not in ``open_roots``."""
        by_root: dict[int, list[int]] = {}
        for piece in self.geometry:
            by_root.setdefault(self.find(piece), []).append(piece)
        closed = []
        for root, pieces in by_root.items():
            if root in open_roots:
                continue
            stats = np.sum([self.stats.pop(p) for p in pieces], axis=0)
            stats[0] /= len(pieces)  # every piece has the same class
            closed.append(([self.geometry.pop(p) for p in pieces], stats))
            for p in pieces:
                self.parent.pop(p, None)
        return closed


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


def _polygonize(classes, path: Path, names: Sequence[str], colours: Sequence[str], strip_rows: int,
                check: Callable[[], None], maxprob, gap) -> int:
    from osgeo import gdal, ogr, osr

    width, height = classes.RasterXSize, classes.RasterYSize
    gt = classes.GetGeoTransform()
    pixel_ha = abs(gt[1] * gt[5]) / 1e4
    srs = osr.SpatialReference()
    srs.ImportFromWkt(classes.GetProjection())
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    gdal.PushErrorHandler("CPLQuietErrorHandler")  # silence "extension should be gpkg": a temporary name
    try:
        out = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    finally:
        gdal.PopErrorHandler()
    if out is None:
        raise OutputError(f"cannot create {path}: {gdal.GetLastErrorMsg()}")
    layer = out.CreateLayer(LAYER, srs, ogr.wkbMultiPolygon, ["SPATIAL_INDEX=YES"])
    for name, kind in zip(FIELDS, (ogr.OFTInteger, ogr.OFTString, ogr.OFTReal, ogr.OFTReal, ogr.OFTReal)):
        layer.CreateField(ogr.FieldDefn(name, kind))
    definition = layer.GetLayerDefn()
    written = 0

    def emit(geometries: list, stats: np.ndarray) -> None:
        nonlocal written
        if len(geometries) == 1:
            geometry = geometries[0]
        else:
            union = ogr.Geometry(ogr.wkbMultiPolygon)
            for g in geometries:
                union.AddGeometry(g)
            geometry = union.UnionCascaded()
        feature = ogr.Feature(definition)
        feature.SetGeometry(ogr.ForceToMultiPolygon(geometry))
        cls = int(stats[0])
        feature.SetField("class_id", cls)
        feature.SetField("class_name", names[cls] if cls < len(names) else str(cls))
        feature.SetField("area_ha", float(stats[1]) * pixel_ha)
        if stats[3]:
            feature.SetField("mean_maxprob", float(stats[2] / stats[3]))
        if stats[5]:
            feature.SetField("mean_gap", float(stats[4] / stats[5]))
        if layer.CreateFeature(feature) != 0:
            raise OutputError(f"cannot write polygon {written + 1} to {path}: {gdal.GetLastErrorMsg()}")
        written += 1
        if written % TRANSACTION == 0:
            layer.CommitTransaction()
            layer.StartTransaction()

    groups = _Groups()
    mem_raster = gdal.GetDriverByName("MEM")
    mem_vector = ogr.GetDriverByName("Memory")
    previous_bottom: np.ndarray | None = None  # global ids of the last row of the previous strip
    previous_bottom_class: np.ndarray | None = None
    base = 0
    layer.StartTransaction()
    for row0 in range(0, height, strip_rows):
        check()
        rows = min(strip_rows, height - row0)
        strip = _read(classes, row0, rows, "the class raster")
        labels, n = _label(strip)
        counts = np.bincount(labels.ravel(), minlength=n + 1)
        maxprob_sum, maxprob_n = _sums(labels, n, maxprob, row0, rows)
        gap_sum, gap_n = _sums(labels, n, gap, row0, rows)
        class_of = np.zeros(n + 1, dtype=np.int64)
        class_of[labels.ravel()] = strip.ravel()
        stats = np.stack([class_of, counts, maxprob_sum, maxprob_n, gap_sum, gap_n], axis=1).astype(np.float64)

        # Pieces touching this strip's top (joined to the strip above) or bottom (may join the next).
        top, bottom = labels[0], labels[-1]
        touching = np.zeros(n + 1, dtype=bool)
        touching[top] = True
        if row0 + rows < height:
            touching[bottom] = True
        touching[0] = False

        # GDAL polygonises the labels: one polygon per label (4-connected, like the labels).
        ds = mem_raster.Create("", width, rows, 1, gdal.GDT_Int32)
        ds.SetGeoTransform((gt[0], gt[1], gt[2], gt[3] + row0 * gt[5], gt[4], gt[5]))
        ds.GetRasterBand(1).WriteArray(labels)
        mask = mem_raster.Create("", width, rows, 1, gdal.GDT_Byte)
        mask.GetRasterBand(1).WriteArray((labels > 0).view(np.uint8))
        pieces = mem_vector.CreateDataSource("")
        piece_layer = pieces.CreateLayer("pieces", None, ogr.wkbPolygon)
        piece_layer.CreateField(ogr.FieldDefn("id", ogr.OFTInteger))
        if gdal.Polygonize(ds.GetRasterBand(1), mask.GetRasterBand(1), piece_layer, 0, []) != 0:
            raise OutputError(f"cannot polygonise rows {row0}–{row0 + rows}: {gdal.GetLastErrorMsg()}")
        ds = mask = None
        for feature in piece_layer:
            label = feature.GetField(0)
            if touching[label]:
                gid = base + label
                groups.geometry[gid] = feature.GetGeometryRef().Clone()
                groups.stats[gid] = stats[label]
            else:
                emit([feature.GetGeometryRef().Clone()], stats[label])
        pieces = piece_layer = None

        if previous_bottom is not None:  # join pieces of one class that touch across the border
            joined = (previous_bottom > 0) & (top > 0) & (previous_bottom_class == strip[0])
            pairs = np.unique(np.stack([previous_bottom[joined], top[joined].astype(np.int64) + base]), axis=1)
            for a, b in pairs.T.tolist():
                groups.union(a, b)
        bottom_ids = np.where(bottom > 0, bottom.astype(np.int64) + base, 0)
        open_roots = {groups.find(g) for g in np.unique(bottom_ids[bottom_ids > 0]).tolist()} \
            if row0 + rows < height else set()
        for geometries, group_stats in groups.close(open_roots):
            emit(geometries, group_stats)
        previous_bottom, previous_bottom_class = bottom_ids, strip[-1]
        base += n
    layer.CommitTransaction()
    _add_default_style(out, names, colours)
    out = None  # closes (and finalises) the GeoPackage
    if not os.path.exists(path):
        raise OutputError(f"cannot write {path}")
    return written


def _add_default_style(ds, names: Sequence[str], colours: Sequence[str]) -> None:
    """The class colours as the layer's default style, in QGIS's ``layer_styles`` table: QGIS
    applies it whenever the GeoPackage is opened, from the plugin or by hand."""
    from osgeo import ogr

    styles = ds.CreateLayer("layer_styles", None, ogr.wkbNone)
    for name, kind in (("f_table_catalog", ogr.OFTString), ("f_table_schema", ogr.OFTString),
                       ("f_table_name", ogr.OFTString), ("f_geometry_column", ogr.OFTString),
                       ("styleName", ogr.OFTString), ("styleQML", ogr.OFTString), ("styleSLD", ogr.OFTString),
                       ("useAsDefault", ogr.OFTInteger), ("description", ogr.OFTString), ("owner", ogr.OFTString),
                       ("ui", ogr.OFTString), ("update_time", ogr.OFTDateTime)):
        field = ogr.FieldDefn(name, kind)
        if name == "useAsDefault":
            field.SetSubType(ogr.OFSTBoolean)
        styles.CreateField(field)
    feature = ogr.Feature(styles.GetLayerDefn())
    for name, value in (("f_table_catalog", ""), ("f_table_schema", ""), ("f_table_name", LAYER),
                        ("f_geometry_column", "geom"), ("styleName", "s2seg classes"),
                        ("styleQML", vector_qml(names, colours, "class_id")), ("styleSLD", ""),
                        ("useAsDefault", 1), ("description", "s2seg land cover classes"), ("owner", ""), ("ui", "")):
        feature.SetField(name, value)
    styles.CreateFeature(feature)
