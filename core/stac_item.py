"""``<tile>_stac.json``: a STAC item describing a run's products (issue 21), built with pystac.

Geometry and bbox are the tile's footprint in WGS 84; ``datetime`` is the sensing time read
from the product's name (``…_YYYYMMDDTHHMMSS_…``). Extensions: ``proj`` (code, shape,
transform, bbox of the grid), ``raster`` (data type, nodata, scale, unit per band),
``classification`` (class values, names and colours on the class map and the polygons) and
``file`` (size and SHA-256 multihash of every asset). Links name the source product and the model.
Asset hrefs are relative (the file names): the item travels with its folder.
"""
from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from .atomic import write_atomic
from .errors import OutputError

#: Media types of the assets that are not rasters.
GEOPACKAGE = "application/geopackage+sqlite3"
#: ``…_20240612T103031_…``: the sensing start in Sentinel-2 product and band file names.
_SENSING = re.compile(r"(?<!\d)(\d{8}T\d{6})(?!\d)")
#: Per raster product: unit and description (band metadata of the raster extension).
_RASTER_BANDS = {
    "class": (None, "land-cover class index (255 = nodata)"),
    "maxprob": (None, "highest class probability"),
    "entropy": ("bit", "entropy of the class probabilities"),
    "gap": (None, "difference of the two highest class probabilities"),
    "probs": (None, "class probability"),
}


def available() -> bool:
    """Is pystac installed (the STAC item is skipped, with a note, where it is not)?"""
    try:
        import pystac  # noqa: F401
    except ImportError:
        return False
    return True


def sensing_time(*names: str) -> datetime | None:
    """The sensing start found in the first of ``names`` that has one (UTC)."""
    for name in names:
        match = _SENSING.search(name)
        if match:
            return datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    return None


def class_slug(name: str) -> str:
    """A class name as the classification extension's ``name`` (letters, digits, ``-`` and ``_`` only)."""
    return re.sub(r"[^0-9A-Za-z_-]+", "_", name).strip("_").lower() or "class"


def multihash_sha256(path: Path, chunk: int = 2**22) -> str:
    """``file:checksum``: the SHA-256 multihash (``1220`` + hex digest), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return "1220" + digest.hexdigest()


def build_item(*, tile_name: str, source: str, crs, transform, width: int, height: int,
               rasters: Mapping[str, Path], vector: Path | None, others: Mapping[str, Path], cog: bool,
               class_names: list[str], class_colours: list[str], model: Mapping[str, str], s2seg_version: str):
    """The pystac ``Item`` of a run. ``rasters``: product key → GeoTIFF; ``others``: key → file
    (preview, report, style files); ``model``: name, revision and (optional) source."""
    import pystac
    from pystac.extensions.classification import Classification, ClassificationExtension
    from pystac.extensions.file import FileExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import DataType, RasterBand, RasterExtension
    from rasterio.warp import transform_geom

    checksums = _checksums([*rasters.values(), *([vector] if vector is not None else []), *others.values()])
    left, top = transform.c, transform.f
    right, bottom = left + transform.a * width, top + transform.e * height
    ring = [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]
    geometry = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]}, antimeridian_cutting=True,
                              precision=7)
    xs = [p[0] for p in _points(geometry)]
    ys = [p[1] for p in _points(geometry)]
    sensed = sensing_time(Path(source).name, tile_name)
    item = pystac.Item(
        id=tile_name, geometry=geometry, bbox=[min(xs), min(ys), max(xs), max(ys)],
        datetime=sensed or datetime.now(timezone.utc),
        properties={"s2seg:version": s2seg_version, "s2seg:model": model["name"],
                    "s2seg:model_revision": model.get("revision", ""),
                    **({} if sensed else {"s2seg:datetime_is_processing_time": True})},
    )
    projection = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs.to_epsg()
    projection.code = f"EPSG:{epsg}" if epsg else None
    if not epsg:
        projection.wkt2 = crs.to_wkt()
    projection.shape = [height, width]
    projection.transform = [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f]
    projection.bbox = [left, bottom, right, top]
    RasterExtension.add_to(item)
    ClassificationExtension.add_to(item)
    FileExtension.add_to(item)
    classes = [Classification.create(value=i, name=class_slug(name), title=name, color_hint=colour.lstrip("#").upper())
               for i, (name, colour) in enumerate(zip(class_names, class_colours))]
    classes.append(Classification.create(value=255, name="nodata", title="no data", nodata=True))
    raster_type = pystac.MediaType.COG if cog else pystac.MediaType.GEOTIFF
    for key, path in rasters.items():
        asset = pystac.Asset(href=Path(path).name, media_type=raster_type, roles=["data"], title=f"{tile_name} {key}")
        item.add_asset(key, asset)
        unit, description = _RASTER_BANDS.get(key, (None, key))
        categorical = key == "class"
        count = len(class_names) if key == "probs" else 1
        bands = [RasterBand.create(nodata=255 if categorical else "nan",
                                   data_type=DataType.UINT8 if categorical else DataType.FLOAT32,
                                   scale=1.0, offset=0.0, unit=unit) for _ in range(count)]
        RasterExtension.ext(asset).bands = bands
        if categorical:
            ClassificationExtension.ext(asset).classes = classes
        _file_fields(asset, path, checksums)
    if vector is not None:
        asset = pystac.Asset(href=Path(vector).name, media_type=GEOPACKAGE, roles=["data"],
                             title=f"{tile_name} land-cover polygons")
        item.add_asset("vector", asset)
        ClassificationExtension.ext(asset).classes = classes
        _file_fields(asset, vector, checksums)
    for key, path in others.items():
        suffix = Path(path).suffix.lower()
        media = {".png": pystac.MediaType.PNG, ".json": pystac.MediaType.JSON, ".qml": pystac.MediaType.XML,
                 ".sld": pystac.MediaType.XML}.get(suffix)
        roles = ["overview"] if suffix == ".png" else ["metadata"]
        asset = pystac.Asset(href=Path(path).name, media_type=media, roles=roles, title=key)
        item.add_asset(key.replace(".", "_"), asset)
        _file_fields(asset, path, checksums)
    item.add_link(pystac.Link(rel="derived_from", target=Path(source).resolve().as_uri(),
                              title=f"Sentinel-2 product {Path(source).name}"))
    if model.get("source", "").startswith(("http://", "https://")):
        item.add_link(pystac.Link(rel="via", target=model["source"], title=f"model {model['name']}"))
    return item


def _points(geometry: Mapping) -> list:
    coords = geometry["coordinates"]
    rings = [ring for polygon in coords for ring in polygon] if geometry["type"] == "MultiPolygon" else coords
    return [point for ring in rings for point in ring]


def _checksums(paths: list[Path]) -> dict[Path, str]:
    """:func:`multihash_sha256` of each file, several at once (hashlib releases the GIL): the products of a
    full tile are gigabytes, hashed after the last chunk where nothing else runs."""
    from .config import map_on_cores

    paths = [Path(p) for p in paths]
    return dict(zip(paths, map_on_cores(multihash_sha256, paths, "s2seg-checksum")))


def _file_fields(asset, path: Path, checksums: Mapping[Path, str]) -> None:
    from pystac.extensions.file import FileExtension

    file = FileExtension.ext(asset)
    file.size = Path(path).stat().st_size
    file.checksum = checksums[Path(path)]


def write_item(item, path: Path) -> Path:
    """Write ``item`` to ``path`` atomically, self-contained (relative hrefs, no self link)."""
    import json

    try:
        text = json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=2) + "\n"
        write_atomic(path, text)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
