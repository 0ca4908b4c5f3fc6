"""Finding the bands of a Sentinel-2 tile and what its metadata says about them.

Accepted forms: a ``.SAFE`` folder or its ``.zip`` (read through GDAL's
``/vsizip/``, never unpacked), an ``IMG_DATA`` folder (L2A ``R10m/R20m/R60m``
or L1C flat), or any folder of per-band files (``*_B02*.jp2|tif``). Bands are
found by name, their resolution is read from the file, and files are opened by
content (some ``.jp2`` files in the wild are GeoTIFFs).
"""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
from typing import BinaryIO, Callable, Sequence, TypeVar

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError

from .bands import BAND_BY_ID, TILE_SIZE_PX, Band, normalise_band_id
from .config import map_on_cores
from .errors import InputError, ModelError

#: The L2A scene classification and cloud / snow probabilities, read as categorical layers of the tile
#: (never offset or scaled, always sampled by nearest): SCL in IMG_DATA/R20m, the masks in QI_DATA.
LAYER_IDS = ("SCL", "MSK_CLDPRB", "MSK_SNWPRB")
_LAYER_FILE = re.compile(r"(?:^|[_\-.])(SCL|MSK_CLDPRB|MSK_SNWPRB)_(20|60)m\.(?:jp2|tiff?)$", re.IGNORECASE)
_BAND_FILE = re.compile(r"(?:^|[_\-.])(B(?:0?[1-9]|1[0-2]|8A))(?:_(?:10|20|60)m)?\.(?:jp2|tiff?)$", re.IGNORECASE)
_SKIP_FILE = re.compile(r"(^MSK_|_TCI|_PVI|preview|QUICKLOOK)", re.IGNORECASE)
_TILE_STEM = re.compile(r"(T\d{2}[A-Z]{3}_\d{8}T\d{6})")
_METADATA_NAME = re.compile(r"^MTD_MSIL(1C|2A)\.xml$", re.IGNORECASE)
_OFFSET_TAGS = ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")
_RESOLUTION_FOLDER = re.compile(r"^R(10|20|60)m$", re.IGNORECASE)
#: Most bytes of product metadata read (MTD_MSIL1C.xml/MTD_MSIL2A.xml weigh 45–55 kB): a bigger
#: member is damaged or a zip bomb, and is refused before it is inflated.
MAX_METADATA_BYTES = 4 * 2**20
_CRC_CHUNK = 4 * 2**20  # bytes per read while checking a zip member's CRC
_CRC_THREADS = 8  # members checked at once (one thread checks ~1.5 GB/s of page-cached zip)
#: Plausible processing-baseline offsets (BOA_ADD_OFFSET / RADIO_ADD_OFFSET, in DN): -1000 since
#: baseline 04.00, 0 before; anything outside is a damaged or forged product.
PLAUSIBLE_OFFSETS = (-2000.0, 0.0)
#: The data type of a Sentinel-2 product's band files (digital numbers = reflectance × 10000 + offset).
PRODUCT_DTYPE = "uint16"
_T = TypeVar("_T")


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
    #: the band of the file that holds it (a stacked raster's bands share one file)
    index: int = 1
    #: digital numbers per stored unit (10000 for a stack of float reflectance), see :func:`.stack.to_dn`
    scale: float = 1.0
    #: the file's nodata value (0 always means nodata)
    nodata: float | None = None
    dtype: str = "uint16"

    @property
    def stored_as_dn(self) -> bool:
        """Are the stored values the engine's uint16 digital numbers as they are (no conversion)?"""
        return self.dtype == "uint16" and self.scale == 1.0 and self.nodata in (None, 0)

    @property
    def resolution(self) -> float:
        return abs(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform.c, self.transform.f
        return left, top + self.height * self.transform.e, left + self.width * self.transform.a, top


@dataclass(frozen=True)
class LayerFile:
    """A categorical layer of an L2A product (:data:`LAYER_IDS`): class codes or percentages, uint8."""

    id: str  # "SCL", "MSK_CLDPRB" or "MSK_SNWPRB"
    path: str  # a path GDAL opens, possibly /vsizip/…
    width: int
    height: int
    transform: Affine
    crs: CRS

    resolution = BandFile.resolution
    bounds = BandFile.bounds


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
    #: the product metadata that gave level, baseline and offsets (``<zip>!<member>`` inside a zip);
    #: None when no metadata belongs to the product (then no offset is applied)
    metadata_path: str | None = None
    #: what discovery learnt that the run's log should say (a stack's band identification and scale)
    notes: tuple[str, ...] = ()
    #: the product's categorical layers by id (:data:`LAYER_IDS`, finest resolution kept); empty for L1C
    layers: dict[str, LayerFile] = field(default_factory=dict)

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
        """The files of ``band_ids`` in that order; InputError naming the missing bands and the model.

        ``band_ids`` must be a list of band ids: a string such as ``"B02"`` (which Python would
        iterate as ``"B", "0", "2"``) or an unknown id is a ModelError naming the model.
        """
        if isinstance(band_ids, (str, bytes)):
            raise ModelError(f"model {model_name!r}: bands must be a list of band ids such as ['B02', 'B03'], "
                             f"got the string {band_ids!r}")
        unknown = [b for b in band_ids if not isinstance(b, str) or normalise_band_id(b) not in BAND_BY_ID]
        if unknown:
            hint = ""
            if all(isinstance(b, str) and len(b) == 1 for b in band_ids):
                joined = "".join(band_ids)
                hint = f" (a band id split into characters: give the list ['{joined}'], not the string '{joined}')"
            raise ModelError(f"model {model_name!r} asks for unknown band id(s) {', '.join(map(repr, unknown))}{hint}; "
                             f"known: {', '.join(BAND_BY_ID)}")
        band_ids = [normalise_band_id(b) for b in band_ids]
        missing = [b for b in band_ids if b not in self.files]
        if missing:
            raise InputError(
                f"tile {self.source} lacks band(s) {', '.join(missing)} that model {model_name!r} needs "
                f"(found: {', '.join(sorted(self.files)) or 'none'})"
            )
        return [self.files[b] for b in band_ids]


def discover(path: str | Path) -> BandSet:
    """Find every band of the tile at ``path`` and check they share CRS and footprint.

    Raises :class:`InputError` naming the file before any output exists: for a path GDAL cannot
    open (not UTF-8), a band file larger than a tile, a damaged zip member or oversized metadata,
    band files of different products, and bands whose grids disagree.
    """
    source = Path(path).expanduser()
    _check_utf8(str(source), "tile path")
    if not source.exists():
        raise InputError(f"tile {source} does not exist")
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise InputError(f"tile {source} is a file but not a zip archive; give a .SAFE folder, its .zip or a folder of band files")
        candidates, metadata_in, layer_candidates = _list_zip(source)
    else:
        candidates, metadata_in, layer_candidates = _list_folder(source)
    if not candidates:
        if source.is_dir() and not any(source.iterdir()):
            raise InputError(f"tile folder {source} is empty; give a .SAFE folder, its .zip or a folder of band files")
        raise InputError(f"no Sentinel-2 band files (*_B02.jp2, *_B8A.tif …) found in {source}")

    kept: dict[str, _Candidate] = {}
    files: dict[str, BandFile] = {}
    for candidate in candidates:
        _check_utf8(candidate.path, "band file path")
        try:
            band_file = _open_band(BAND_BY_ID[candidate.band_id], candidate.path)
        except InputError:
            if candidate.member is not None:
                _verify_members(source, [candidate.member])  # a damaged member explains a failed open best
            raise
        previous = files.get(candidate.band_id)
        if previous is None or band_file.resolution < previous.resolution:
            files[candidate.band_id] = band_file  # L2A ships resampled copies in R20m/R60m: keep the finest
            kept[candidate.band_id] = candidate
        elif band_file.resolution == previous.resolution and band_file.path != previous.path:
            raise InputError(f"band {candidate.band_id} found twice at {band_file.resolution:g} m: {previous.path} and {band_file.path}")
    if not any(f.band.resolution == 10 for f in files.values()):
        raise InputError(f"tile {source} has no 10 m band (B02, B03, B04 or B08); the output grid is defined by them")
    layers, layer_members = _pick_layers(layer_candidates, {c.home for c in kept.values()})
    members = [c.member for c in kept.values() if c.member is not None] + layer_members
    if members:
        _verify_members(source, members)

    metadata = _product_metadata(source, kept, metadata_in)
    level, baseline, offsets = _parse_metadata(metadata) if metadata is not None else (None, None, {})
    level = level or _level_from_name(source.name)
    bandset = BandSet(
        name=_tile_name(source, [c.path for c in candidates], level, baseline),
        source=source,
        files=files,
        level=level,
        baseline=baseline,
        offsets=offsets,
        metadata_path=metadata[0] if metadata else None,
        layers=layers,
    )
    _check_grids(bandset)
    return bandset


@dataclass(frozen=True)
class _Candidate:
    """A file whose name says it holds a band, and where its product metadata must be."""

    band_id: str
    path: str  # a path GDAL opens, possibly /vsizip/…
    home: PurePath  # the folder (or zip member folder) whose MTD_MSIL*.xml describes it
    member: zipfile.ZipInfo | None = None  # its zip member, for a zipped product


#: Reads a metadata file from its folder (or zip member folder): (label, content), or None when absent.
_MetadataReader = Callable[[PurePath], "tuple[str, bytes] | None"]


def _check_utf8(path: str, what: str) -> None:
    """GDAL takes UTF-8 paths: a name holding a byte that is not UTF-8 (decoded by Python as a
    surrogate escape) would crash rasterio with a UnicodeEncodeError."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} {path!r} is not valid UTF-8 (a byte of another encoding in a file or folder name); "
                         "GDAL cannot open it: rename it") from None


def _metadata_home(folder: PurePath) -> PurePath:
    """The folder whose MTD_MSIL*.xml describes the band files in ``folder``: the .SAFE root for a
    folder of the granule structure (``GRANULE/<granule>/IMG_DATA[/R10m]``), else ``folder`` itself,
    so that a metadata file outside the product is never used."""
    inner = folder.parent if _RESOLUTION_FOLDER.match(folder.name) else folder
    if inner.name.upper() in ("IMG_DATA", "QI_DATA") and inner.parent.parent.name.upper() == "GRANULE":
        return inner.parent.parent.parent
    return folder


def _product_metadata(source: Path, kept: dict[str, _Candidate], read: _MetadataReader) -> tuple[str, bytes] | None:
    """The metadata of the product the kept band files belong to (None when there is none)."""
    found = {home: read(home) for home in sorted({c.home for c in kept.values()}, key=str)}
    labels = {home: m[0] if m else None for home, m in found.items()}
    if len(set(labels.values())) > 1:
        by_home = {home: sorted((b for b, c in kept.items() if c.home == home), key=lambda b: BAND_BY_ID[b].band_index)
                   for home in found}
        described = "; ".join(f"{', '.join(bands)} with {labels[home] or 'no product metadata'}"
                              for home, bands in by_home.items())
        raise InputError(f"the band files of tile {source} belong to different products ({described}); "
                         "give the bands of one product")
    return next(iter(found.values()))


def _read_capped(stream: BinaryIO, label: str, declared: int) -> bytes:
    if declared > MAX_METADATA_BYTES:
        raise InputError(_too_large(label, declared))
    content = stream.read(MAX_METADATA_BYTES + 1)  # the declared size may lie
    if len(content) > MAX_METADATA_BYTES:
        raise InputError(_too_large(label, len(content)))
    return content


def _too_large(label: str, size: int) -> str:
    return (f"product metadata {label} is {size} bytes or more (real ones weigh about 50 kB; at most "
            f"{MAX_METADATA_BYTES} bytes are read): a damaged or forged product")


def _list_zip(source: Path) -> tuple[list[_Candidate], _MetadataReader]:
    try:
        with zipfile.ZipFile(source) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"cannot read zip archive {source}: {exc}") from None
    candidates, metadata, layers = [], {}, []
    for info in infos:
        member = PurePosixPath(info.filename)
        if _METADATA_NAME.match(member.name):
            metadata.setdefault(member.parent, []).append(info)
        if layer := _LAYER_FILE.search(member.name):
            layers.append(_Candidate(layer.group(1).upper(), f"/vsizip/{source.resolve()}/{info.filename}",
                                     _metadata_home(member.parent), info))
        band_id = _band_id_of(member.name)
        if band_id and "QI_DATA" not in member.parts:
            candidates.append(_Candidate(band_id, f"/vsizip/{source.resolve()}/{info.filename}",
                                         _metadata_home(member.parent), info))

    def read(home: PurePath) -> tuple[str, bytes] | None:
        infos = metadata.get(home, [])
        if not infos:
            return None
        info = _only_one(infos, [i.filename for i in infos], f"{source}!{home}")
        label = f"{source}!{info.filename}"
        try:
            with zipfile.ZipFile(source) as archive, archive.open(info) as stream:
                return label, _read_capped(stream, label, info.file_size)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:  # zipfile checks the CRC at the end
            raise InputError(f"cannot read product metadata {label}: {exc}") from None

    return candidates, read, layers


def _list_folder(source: Path) -> tuple[list[_Candidate], _MetadataReader, list[_Candidate]]:
    candidates, layers = [], []
    for file in sorted(source.rglob("*")):
        if not file.is_file():
            continue
        if layer := _LAYER_FILE.search(file.name):
            layers.append(_Candidate(layer.group(1).upper(), str(file),
                                     _metadata_home(Path(os.path.abspath(file)).parent)))
        band_id = _band_id_of(file.name)
        if band_id and "QI_DATA" not in file.parts:
            # abspath, not resolve: a band symlinked from elsewhere still belongs to this folder
            candidates.append(_Candidate(band_id, str(file), _metadata_home(Path(os.path.abspath(file)).parent)))

    def read(home: PurePath) -> tuple[str, bytes] | None:
        folder = Path(home)
        try:
            found = sorted(p for p in folder.iterdir() if _METADATA_NAME.match(p.name) and p.is_file())
        except OSError as exc:
            raise InputError(f"cannot list {folder} for the product metadata: {exc}") from None
        if not found:
            return None
        path = _only_one(found, [str(p) for p in found], str(folder))
        try:
            with open(path, "rb") as stream:
                return str(path), _read_capped(stream, str(path), os.fstat(stream.fileno()).st_size)
        except OSError as exc:
            raise InputError(f"cannot read product metadata {path}: {exc}") from None

    return candidates, read, layers


def _pick_layers(candidates: list[_Candidate], homes: set[PurePath]) -> tuple[dict[str, LayerFile], list[zipfile.ZipInfo]]:
    """The layers that belong to the same product as the bands (same metadata home), the finest
    resolution of each, and their zip members (to be checked like the bands')."""
    layers: dict[str, LayerFile] = {}
    members: dict[str, zipfile.ZipInfo] = {}
    for candidate in candidates:
        if candidate.home not in homes:
            continue  # beside another product's bands
        _check_utf8(candidate.path, "layer file path")
        try:
            with rasterio.open(candidate.path) as ds:
                if ds.crs is None:
                    raise InputError(f"layer file {candidate.path} has no coordinate reference system")
                if ds.dtypes[0] != "uint8":
                    raise InputError(f"layer {candidate.band_id} ({candidate.path}) has data type {ds.dtypes[0]}; "
                                     "expected uint8 class codes")
                layer = LayerFile(candidate.band_id, candidate.path, ds.width, ds.height, ds.transform, ds.crs)
        except RasterioIOError as exc:
            raise InputError(f"cannot open layer file {candidate.path}: {exc}") from None
        previous = layers.get(layer.id)
        if previous is None or layer.resolution < previous.resolution:
            layers[layer.id] = layer
            if candidate.member is not None:
                members[layer.id] = candidate.member
    return layers, list(members.values())


def _only_one(found: list[_T], names: list[str], where: str) -> _T:
    if len(found) > 1:
        raise InputError(f"{where} holds {len(found)} product metadata files ({', '.join(names)}); expected one")
    return found[0]


def _verify_members(source: Path, members: list[zipfile.ZipInfo]) -> None:
    """Stream each member through zipfile, which checks its CRC-32 at the end: GDAL's /vsizip/
    never does, so damaged bytes would otherwise be classified as if they were data. Members are
    checked in parallel (reads and zlib.crc32 release the GIL), each thread with its own handle."""

    def verify(info: zipfile.ZipInfo) -> None:
        try:
            with zipfile.ZipFile(source) as archive, archive.open(info) as stream:
                while stream.read(_CRC_CHUNK):
                    pass
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            detail = "its CRC-32 does not match its bytes" if "CRC-32" in str(exc) else str(exc)
            raise InputError(f"member {info.filename} of zip archive {source} is damaged: {detail}") from None
        except OSError as exc:
            raise InputError(f"cannot read member {info.filename} of zip archive {source}: {exc}") from None

    map_on_cores(verify, members, "s2seg-crc", limit=_CRC_THREADS)  # re-raises the first member's error, in member order


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
            if ds.width > TILE_SIZE_PX or ds.height > TILE_SIZE_PX:
                # refused before planning: a forged header would otherwise plan (and write) terabytes
                raise InputError(f"band file {gdal_path} is {ds.width} × {ds.height} px, larger than a whole Sentinel-2 "
                                 f"tile ({TILE_SIZE_PX} × {TILE_SIZE_PX} px at 10 m): not a Sentinel-2 tile or crop")
            if ds.count < 1:
                raise InputError(f"band file {gdal_path} holds no raster band")
            if ds.crs is None:
                raise InputError(f"band file {gdal_path} has no coordinate reference system")
            _check_product_dtype(band, gdal_path, ds)
            return BandFile(band, gdal_path, ds.width, ds.height, ds.transform, ds.crs, tuple(ds.block_shapes[0]),
                            np.dtype(ds.dtypes[0]).itemsize, dtype=ds.dtypes[0])
    except RasterioIOError as exc:
        raise InputError(f"cannot open band file {gdal_path}: {exc}") from None


def _check_product_dtype(band: Band, gdal_path: str, ds) -> None:
    """A band file of a product holds uint16 DN (int16 without negatives is read as such); anything
    else would wrap around or be read as DN when it is reflectance: refused, naming band and type."""
    dtype = ds.dtypes[0]
    if dtype == "int16":
        low = ds.statistics(1, approx=False).min  # a full read: only for this rare type
        if low < 0:
            raise InputError(f"band {band.id} ({gdal_path}) has data type int16 with negative values (minimum "
                             f"{low:g}); expected {PRODUCT_DTYPE} digital numbers (0 = nodata)")
        return
    if dtype != PRODUCT_DTYPE:
        hint = (" (float reflectance is read from a stacked raster: give one multi-band file)"
                if dtype.startswith("float") else "")
        raise InputError(f"band {band.id} ({gdal_path}) has data type {dtype}; expected {PRODUCT_DTYPE} "
                         f"digital numbers{hint}")
    scale, offset = ds.scales[0], ds.offsets[0]
    if (scale, offset) != (1.0, 0.0):
        raise InputError(f"band {band.id} ({gdal_path}) declares a scale of {scale:g} and an offset of {offset:g}; "
                         f"expected {PRODUCT_DTYPE} digital numbers without scaling (give such bands as a stacked raster)")


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
                band_id, value = by_index[int(element.attrib["band_id"])], float(text)
            except (KeyError, ValueError):
                raise InputError(f"product metadata {name}: malformed {tag} element {ET.tostring(element, encoding='unicode').strip()!r}") from None
            low, high = PLAUSIBLE_OFFSETS
            if not low <= value <= high:  # NaN fails too
                raise InputError(f"product metadata {name}: {tag} of band {band_id} is {text}; expected a value "
                                 f"from {low:g} to {high:g} (baselines 04.00 and later use -1000)")
            offsets[band_id] = value
    return level, baseline, offsets


def _level_from_name(name: str) -> str | None:
    upper = name.upper()
    return "L2A" if "MSIL2A" in upper else "L1C" if "MSIL1C" in upper else None


def _tile_name(source: Path, paths: list[str], level: str | None, baseline: str | None) -> str:
    """The products' name. A band file's stem (tile and sensing time) is the same in the L1C and the
    L2A product of a scene, and in two processing baselines of it: level and baseline, where known,
    are appended so that their products never share a name in one folder."""
    for path in paths:
        match = _TILE_STEM.search(Path(path).name)
        if match:
            digits = re.sub(r"\D", "", baseline or "")
            return "_".join([match.group(1)] + [part for part in (level, digits and f"N{digits}") if part])
    name = source.name
    for suffix in (".zip", ".SAFE"):
        if name.upper().endswith(suffix.upper()):
            name = name[: -len(suffix)]
    return name or "tile"


def _check_grids(bandset: BandSet) -> None:
    """Every band must share the CRS and cover the reference footprint (to within one native pixel)."""
    ref = bandset.reference
    ref_bounds = ref.bounds
    for band_file in [*bandset.files.values(), *bandset.layers.values()]:
        label = f"layer {band_file.id}" if isinstance(band_file, LayerFile) else f"band {band_file.band.id}"
        if band_file.crs != ref.crs:
            raise InputError(f"{label} ({band_file.path}) is in {band_file.crs}, but {ref.band.id} ({ref.path}) is in {ref.crs}")
        if abs(band_file.transform.b) > 1e-9 or abs(band_file.transform.d) > 1e-9:
            raise InputError(f"band file {band_file.path} is rotated; only north-up grids are supported")
        tolerance = band_file.resolution + 1e-6
        if any(abs(a - b) > tolerance for a, b in zip(band_file.bounds, ref_bounds)):
            raise InputError(
                f"{label} ({band_file.path}) covers {_fmt(band_file.bounds)}, "
                f"which does not match {ref.band.id} ({ref.path}) covering {_fmt(ref_bounds)}"
            )


def _fmt(bounds: tuple[float, float, float, float]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in bounds) + ")"
