"""An area of interest: a bounding box or polygons, as a window of the tile's 10 m grid and a mask.

Accepted forms (one string, so the command line, the batch runner and QGIS share it):

* ``minx,miny,maxx,maxy`` in the tile's CRS, or ``minx,miny,maxx,maxy,EPSG:4326`` (any CRS
  string GDAL understands after the fourth comma);
* a vector file (GeoPackage, GeoJSON, Shapefile …) of polygons in any CRS, optionally with
  QGIS's data-source suffixes ``|layername=NAME`` and ``|subset=SQL WHERE`` (what a QGIS
  layer's ``source()`` returns for an OGR layer).

The window is the AOI's bounding box, in the tile's CRS, snapped outward to the 10 m pixel
grid and clipped to the tile; for polygons a mask marks the pixels whose centre lies inside
them (the rest are written as nodata). The engine computes on the tile's global patch grid,
so every pixel of the window equals the same pixel of a whole-tile run.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError

from .errors import ConfigError, InputError

#: Digits of a coordinate a bbox snaps through before flooring/ceiling: a bound that is a pixel
#: edge up to float noise (e.g. 600000.00000001) must not add a whole pixel.
_SNAP_DIGITS = 6
#: Points added per bbox edge when it is transformed to another CRS (its edges bend).
_DENSIFY = 21


@dataclass(frozen=True)
class PixelWindow:
    """Rows ``[row0, row0 + height)`` × cols ``[col0, col0 + width)`` of the tile's 10 m grid."""

    row0: int
    col0: int
    height: int
    width: int

    @property
    def row1(self) -> int:
        return self.row0 + self.height

    @property
    def col1(self) -> int:
        return self.col0 + self.width


@dataclass(frozen=True)
class AreaOfInterest:
    """Where a run computes and writes: ``window`` of the tile grid; ``mask`` (``height × width``
    bool, True inside the polygons) or None for a bounding box; ``transform`` of the window."""

    source: str
    window: PixelWindow
    transform: Affine
    mask: np.ndarray | None = None

    def fields(self) -> dict:
        """What changes the output pixels, as plain JSON values (for the resume journal)."""
        w = self.window
        digest = None if self.mask is None else hashlib.sha256(np.packbits(self.mask).tobytes()).hexdigest()
        return {"window": [w.row0, w.col0, w.height, w.width], "mask": digest}


@dataclass(frozen=True)
class _Bbox:
    bounds: tuple[float, float, float, float]
    crs: CRS | None  # None: the tile's


@dataclass(frozen=True)
class _Vector:
    path: str
    layer: str | None
    subset: str | None


def parse(text: str) -> _Bbox | _Vector:
    """The form of an AOI string; ConfigError naming it when it is neither a bbox nor a file."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"area of interest must be 'minx,miny,maxx,maxy[,CRS]' or a vector file, got {text!r}")
    parts = [p.strip() for p in text.split(",", 4)]
    numbers = _floats(parts[:4]) if len(parts) >= 4 else None
    if numbers is not None:
        minx, miny, maxx, maxy = numbers
        if not all(map(math.isfinite, numbers)) or minx >= maxx or miny >= maxy:
            raise ConfigError(f"area of interest {text!r}: the bounding box must be finite with minx < maxx and "
                              f"miny < maxy (order: minx,miny,maxx,maxy)")
        crs = None
        if len(parts) == 5:
            try:
                crs = CRS.from_user_input(parts[4])
            except CRSError as exc:
                raise ConfigError(f"area of interest {text!r}: unknown CRS {parts[4]!r} ({exc})") from None
        return _Bbox((minx, miny, maxx, maxy), crs)
    path, *options = text.split("|")
    values = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key.strip() not in ("layername", "subset"):
            raise ConfigError(f"area of interest {text!r}: unknown option {option!r} (expected layername=… or subset=…)")
        values[key.strip()] = value
    if not Path(path).expanduser().exists():
        raise ConfigError(f"area of interest {text!r} is neither a bounding box 'minx,miny,maxx,maxy[,CRS]' "
                          f"nor an existing vector file")
    return _Vector(str(Path(path).expanduser()), values.get("layername"), values.get("subset"))


def resolve(text: str, width: int, height: int, transform: Affine, crs: CRS) -> AreaOfInterest:
    """The AOI ``text`` on a tile of ``width × height`` 10 m pixels at ``transform`` in ``crs``.

    InputError when it lies outside the tile (naming both extents) or a vector file holds no
    polygon; ConfigError for a malformed string.
    """
    spec = parse(text)
    if isinstance(spec, _Bbox):
        bounds = spec.bounds if spec.crs is None or spec.crs == crs else _transform_bounds(spec.bounds, spec.crs, crs)
        geometries = None
    else:
        geometries, bounds = _read_polygons(spec, crs, text)
    window = _window(bounds, width, height, transform)
    if window is None:
        tile = (transform.c, transform.f + height * transform.e, transform.c + width * transform.a, transform.f)
        raise InputError(f"area of interest {text!r} covers {_fmt(bounds)} in {crs.to_string()}, outside the tile "
                         f"{_fmt(tile)}")
    window_transform = transform * Affine.translation(window.col0, window.row0)
    mask = None
    if geometries is not None:
        from rasterio.features import rasterize

        mask = rasterize(((g, 1) for g in geometries), out_shape=(window.height, window.width),
                         transform=window_transform, fill=0, dtype="uint8").astype(bool)
        if not mask.any():  # polygons thinner than a pixel (no pixel centre inside them)
            raise InputError(f"area of interest {text!r}: its polygons contain no 10 m pixel centre of the tile")
    return AreaOfInterest(text, window, window_transform, mask)


def _floats(parts: list[str]) -> tuple[float, float, float, float] | None:
    try:
        return tuple(float(p) for p in parts)  # type: ignore[return-value]
    except ValueError:
        return None


def _window(bounds: tuple[float, float, float, float], width: int, height: int, transform: Affine) -> PixelWindow | None:
    """The pixels of a north-up grid that ``bounds`` touches (snapped outward), clipped; None when none."""
    minx, miny, maxx, maxy = bounds
    inverse = ~transform
    cols = sorted(round(v, _SNAP_DIGITS) for v in ((inverse * (minx, maxy))[0], (inverse * (maxx, miny))[0]))
    rows = sorted(round(v, _SNAP_DIGITS) for v in ((inverse * (minx, maxy))[1], (inverse * (maxx, miny))[1]))
    col0, col1 = max(0, math.floor(cols[0])), min(width, math.ceil(cols[1]))
    row0, row1 = max(0, math.floor(rows[0])), min(height, math.ceil(rows[1]))
    if col0 >= col1 or row0 >= row1:
        return None
    return PixelWindow(row0, col0, row1 - row0, col1 - col0)


def _transform_bounds(bounds: tuple[float, float, float, float], src: CRS, dst: CRS) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    return transform_bounds(src, dst, *bounds, densify_pts=_DENSIFY)


def _read_polygons(spec: _Vector, crs: CRS, text: str) -> tuple[list[dict], tuple[float, float, float, float]]:
    """The polygons of the layer as GeoJSON-like dicts in ``crs`` (OGR reads and reprojects them),
    and their bounds."""
    import json

    from osgeo import ogr, osr

    ogr.UseExceptions()
    osr.UseExceptions()
    try:
        source = ogr.Open(spec.path)
    except RuntimeError as exc:
        raise InputError(f"area of interest {spec.path}: cannot open it as a vector file ({exc})") from None
    if source is None:
        raise InputError(f"area of interest {spec.path}: cannot open it as a vector file")
    if spec.layer is not None:
        layer = source.GetLayerByName(spec.layer)
        if layer is None:
            names = [source.GetLayerByIndex(i).GetName() for i in range(source.GetLayerCount())]
            raise InputError(f"area of interest {spec.path} has no layer {spec.layer!r} (layers: {', '.join(names)})")
    else:
        if source.GetLayerCount() != 1:
            names = [source.GetLayerByIndex(i).GetName() for i in range(source.GetLayerCount())]
            raise InputError(f"area of interest {spec.path} holds {source.GetLayerCount()} layers ({', '.join(names)}); "
                             f"name one with {spec.path}|layername=NAME")
        layer = source.GetLayerByIndex(0)
    if spec.subset:
        try:
            layer.SetAttributeFilter(spec.subset)
        except RuntimeError as exc:
            raise InputError(f"area of interest {text!r}: bad subset {spec.subset!r} ({exc})") from None
    layer_srs = layer.GetSpatialRef()
    if layer_srs is None:
        raise InputError(f"area of interest {spec.path}: layer {layer.GetName()!r} has no coordinate reference system")
    target = osr.SpatialReference()
    target.ImportFromWkt(crs.to_wkt())
    for srs in (layer_srs, target):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)  # x = easting/longitude, as rasterio
    to_tile = osr.CoordinateTransformation(layer_srs, target)
    geometries, envelopes = [], []
    for feature in layer:
        geometry = feature.GetGeometryRef()
        if geometry is None:
            continue
        if ogr.GT_Flatten(geometry.GetGeometryType()) not in (ogr.wkbPolygon, ogr.wkbMultiPolygon):
            raise InputError(f"area of interest {spec.path}: feature {feature.GetFID()} is a "
                             f"{geometry.GetGeometryName()}; only polygons are accepted")
        geometry = geometry.Clone()
        geometry.Transform(to_tile)
        geometries.append(json.loads(geometry.ExportToJson()))
        envelopes.append(geometry.GetEnvelope())  # (minx, maxx, miny, maxy)
    if not geometries:
        raise InputError(f"area of interest {text!r} holds no polygon" + (" matching the subset" if spec.subset else ""))
    e = np.array(envelopes)
    return geometries, (float(e[:, 0].min()), float(e[:, 2].min()), float(e[:, 1].max()), float(e[:, 3].max()))


def _fmt(bounds: tuple[float, float, float, float]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in bounds) + ")"
