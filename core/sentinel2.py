"""Finding the bands of a Sentinel-2 tile and what its metadata says about them.

Accepted forms: a ``.SAFE`` folder or its ``.zip`` (read through GDAL's
``/vsizip/``, never unpacked), an ``IMG_DATA`` folder (L2A ``R10m/R20m/R60m``
or L1C flat), or any folder of per-band files (``*_B02*.jp2|tif``). Bands are
found by name, their resolution is read from the file, and files are opened by
content (some ``.jp2`` files in the wild are GeoTIFFs).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError

from .bands import BAND_BY_ID, Band, normalise_band_id
from .errors import InputError

_BAND_FILE = re.compile(r"(?:^|[_\-.])(B(?:0?[1-9]|1[0-2]|8A))(?:_(?:10|20|60)m)?\.(?:jp2|tiff?)$", re.IGNORECASE)
_SKIP_FILE = re.compile(r"(^MSK_|_TCI|_PVI|preview|QUICKLOOK)", re.IGNORECASE)
_TILE_STEM = re.compile(r"(T\d{2}[A-Z]{3}_\d{8}T\d{6})")
_METADATA_NAME = re.compile(r"^MTD_MSIL(1C|2A)\.xml$", re.IGNORECASE)
_OFFSET_TAGS = ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")


@dataclass(frozen=True)
class BandFile:
    """One band raster: where it is, its grid, and how it is stored."""

    band: Band
    path: str  # a path GDAL opens, possibly /vsizip/…
    width: int
    height: int
    transform: Affine
    crs: CRS
    block_shape: tuple[int, int]  # (rows, cols) of the blocks GDAL decodes and caches
    itemsize: int  # bytes per pixel of the stored data type

    @property
    def resolution(self) -> float:
        return abs(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform.c, self.transform.f
        return left, top + self.height * self.transform.e, left + self.width * self.transform.a, top


@dataclass(frozen=True)
class BandSet:
    """The bands of one tile, on a common 10 m reference grid."""

    name: str
    source: Path
    files: dict[str, BandFile]
    level: str | None  # "L1C", "L2A" or None when no metadata says
    baseline: str | None
    #: band id → additive offset turning product DN into pre-04.00 DN (reflectance × 10000).
    offsets: dict[str, float] = field(default_factory=dict)
    metadata_path: str | None = None

    @property
    def reference(self) -> BandFile:
        """The 10 m band that defines the output grid (B02 when present)."""
        tens = sorted((f for f in self.files.values() if f.band.resolution == 10), key=lambda f: f.band.band_index)
        return tens[0]

    @property
    def width(self) -> int:
        return self.reference.width

    @property
    def height(self) -> int:
        return self.reference.height

    @property
    def transform(self) -> Affine:
        return self.reference.transform

    @property
    def crs(self) -> CRS:
        return self.reference.crs

    def offset(self, band_id: str) -> float:
        return self.offsets.get(band_id, 0.0)

    def require(self, band_ids: Sequence[str], model_name: str) -> list[BandFile]:
        """The files of ``band_ids`` in that order; InputError naming the missing bands and the model."""
        missing = [b for b in band_ids if b not in self.files]
        if missing:
            raise InputError(
                f"tile {self.source} lacks band(s) {', '.join(missing)} that model {model_name!r} needs "
                f"(found: {', '.join(sorted(self.files)) or 'none'})"
            )
        return [self.files[b] for b in band_ids]


def discover(path: str | Path) -> BandSet:
    """Find every band of the tile at ``path`` and check they share CRS and footprint."""
    source = Path(path).expanduser()
    if not source.exists():
        raise InputError(f"tile {source} does not exist")
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise InputError(f"tile {source} is a file but not a zip archive; give a .SAFE folder, its .zip or a folder of band files")
        candidates, metadata = _list_zip(source)
    else:
        candidates, metadata = _list_folder(source)
    if not candidates:
        if source.is_dir() and not any(source.iterdir()):
            raise InputError(f"tile folder {source} is empty; give a .SAFE folder, its .zip or a folder of band files")
        raise InputError(f"no Sentinel-2 band files (*_B02.jp2, *_B8A.tif …) found in {source}")

    files: dict[str, BandFile] = {}
    for band_id, gdal_path in candidates:
        band_file = _open_band(BAND_BY_ID[band_id], gdal_path)
        previous = files.get(band_id)
        if previous is None or band_file.resolution < previous.resolution:
            files[band_id] = band_file  # L2A ships resampled copies in R20m/R60m: keep the finest
        elif band_file.resolution == previous.resolution and band_file.path != previous.path:
            raise InputError(f"band {band_id} found twice at {band_file.resolution:g} m: {previous.path} and {band_file.path}")
    if not any(f.band.resolution == 10 for f in files.values()):
        raise InputError(f"tile {source} has no 10 m band (B02, B03, B04 or B08); the output grid is defined by them")

    level, baseline, offsets = (None, None, {})
    if metadata is not None:
        level, baseline, offsets = _parse_metadata(metadata)
    level = level or _level_from_name(source.name)
    bandset = BandSet(
        name=_tile_name(source, [p for _, p in candidates]),
        source=source,
        files=files,
        level=level,
        baseline=baseline,
        offsets=offsets,
        metadata_path=metadata[0] if metadata else None,
    )
    _check_grids(bandset)
    return bandset


def _list_zip(source: Path) -> tuple[list[tuple[str, str]], tuple[str, bytes] | None]:
    try:
        with zipfile.ZipFile(source) as archive:
            names = archive.namelist()
            metadata = None
            for name in names:
                if _METADATA_NAME.match(Path(name).name):
                    metadata = (f"{source}!{name}", archive.read(name))
                    break
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"cannot read zip archive {source}: {exc}") from None
    candidates = []
    for name in names:
        band_id = _band_id_of(Path(name).name)
        if band_id:
            candidates.append((band_id, f"/vsizip/{source.resolve()}/{name}"))
    return candidates, metadata


def _list_folder(source: Path) -> tuple[list[tuple[str, str]], tuple[str, bytes] | None]:
    candidates = []
    metadata = None
    for file in sorted(source.rglob("*")):
        if not file.is_file():
            continue
        if metadata is None and _METADATA_NAME.match(file.name):
            metadata = (str(file), file.read_bytes())
        band_id = _band_id_of(file.name)
        if band_id and "QI_DATA" not in file.parts:
            candidates.append((band_id, str(file)))
    if metadata is None:
        # An IMG_DATA or R10m folder given directly: the product metadata sits a few levels up.
        for parent in list(source.resolve().parents)[:4]:
            found = [p for p in parent.glob("MTD_MSIL*.xml") if _METADATA_NAME.match(p.name)]
            if found:
                metadata = (str(found[0]), found[0].read_bytes())
                break
    return candidates, metadata


def _band_id_of(file_name: str) -> str | None:
    if _SKIP_FILE.search(file_name):
        return None
    match = _BAND_FILE.search(file_name)
    if not match:
        return None
    band_id = normalise_band_id(match.group(1))
    return band_id if band_id in BAND_BY_ID else None


def _open_band(band: Band, gdal_path: str) -> BandFile:
    try:
        with rasterio.open(gdal_path) as ds:  # GDAL picks the driver by content, not extension
            if ds.count < 1:
                raise InputError(f"band file {gdal_path} holds no raster band")
            if ds.crs is None:
                raise InputError(f"band file {gdal_path} has no coordinate reference system")
            if ds.dtypes[0] not in ("uint16", "uint8", "int16", "uint32", "float32"):
                raise InputError(f"band file {gdal_path} has data type {ds.dtypes[0]}; expected uint16 digital numbers")
            return BandFile(band, gdal_path, ds.width, ds.height, ds.transform, ds.crs, tuple(ds.block_shapes[0]),
                            np.dtype(ds.dtypes[0]).itemsize)
    except RasterioIOError as exc:
        raise InputError(f"cannot open band file {gdal_path}: {exc}") from None


def _parse_metadata(metadata: tuple[str, bytes]) -> tuple[str | None, str | None, dict[str, float]]:
    name, content = metadata
    try:
        root = ET.fromstring(content)
    except ET.ParseError as exc:
        raise InputError(f"product metadata {name} is not valid XML: {exc}") from None
    by_index = {b.band_index: b.id for b in BAND_BY_ID.values()}
    level = baseline = None
    offsets: dict[str, float] = {}
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        text = (element.text or "").strip()
        if tag == "PROCESSING_LEVEL" and text:
            level = "L2A" if "2A" in text else "L1C" if "1C" in text else None
        elif tag == "PROCESSING_BASELINE" and text:
            baseline = text
        elif tag in _OFFSET_TAGS:
            try:
                offsets[by_index[int(element.attrib["band_id"])]] = float(text)
            except (KeyError, ValueError):
                raise InputError(f"product metadata {name}: malformed {tag} element {ET.tostring(element, encoding='unicode').strip()!r}") from None
    return level, baseline, offsets


def _level_from_name(name: str) -> str | None:
    upper = name.upper()
    return "L2A" if "MSIL2A" in upper else "L1C" if "MSIL1C" in upper else None


def _tile_name(source: Path, paths: list[str]) -> str:
    for path in paths:
        match = _TILE_STEM.search(Path(path).name)
        if match:
            return match.group(1)
    name = source.name
    for suffix in (".zip", ".SAFE"):
        if name.upper().endswith(suffix.upper()):
            name = name[: -len(suffix)]
    return name or "tile"


def _check_grids(bandset: BandSet) -> None:
    """Every band must share the CRS and cover the reference footprint (to within one native pixel)."""
    ref = bandset.reference
    ref_bounds = ref.bounds
    for band_file in bandset.files.values():
        if band_file.crs != ref.crs:
            raise InputError(f"band {band_file.band.id} ({band_file.path}) is in {band_file.crs}, but {ref.band.id} ({ref.path}) is in {ref.crs}")
        if abs(band_file.transform.b) > 1e-9 or abs(band_file.transform.d) > 1e-9:
            raise InputError(f"band file {band_file.path} is rotated; only north-up grids are supported")
        tolerance = band_file.resolution + 1e-6
        if any(abs(a - b) > tolerance for a, b in zip(band_file.bounds, ref_bounds)):
            raise InputError(
                f"band {band_file.band.id} ({band_file.path}) covers {_fmt(band_file.bounds)}, "
                f"which does not match {ref.band.id} ({ref.path}) covering {_fmt(ref_bounds)}"
            )


def _fmt(bounds: tuple[float, float, float, float]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in bounds) + ")"
