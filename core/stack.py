"""Stacked rasters: one multi-band GeoTIFF or VRT (a Google Earth Engine or SCP export) as a :class:`BandSet`.

Which file band is which Sentinel-2 band comes from the band descriptions (``B2``, ``B02``,
``SR_B8A``, ``blue``, ``nir08`` … as GEE, SCP and STAC name them) or from an explicit list of
band ids in file order (``-`` skips a band). The pixel scale is detected and stated: the file's
own scale/offset metadata; else integer values are reflectance × 10000 (GEE's export); else float
values are reflectance 0–1 when the largest sampled value is at most :data:`MAX_REFLECTANCE`,
else reflectance × 10000. An explicit scale and offset (reflectance = value × scale + offset,
GDAL's convention) override all of that. The reader turns stored values into the engine's
digital numbers (:func:`to_dn`): NaN, the file's nodata value and 0 become nodata.
"""
from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from .bands import BAND_BY_COMMON_NAME, BAND_BY_ID, TILE_SIZE_PX, normalise_band_id
from .errors import ConfigError, InputError
from .sentinel2 import BandFile, BandSet, _level_from_name

#: Digital numbers per unit reflectance (the engine reads reflectance × 10000, as products store it).
DN_PER_REFLECTANCE = 10000
#: Largest value a float band of reflectance 0–1 holds (bright clouds and snow reach ~1.6).
MAX_REFLECTANCE = 2.5
#: Data types a stack may hold.
STACK_DTYPES = ("uint16", "int16", "float32", "float64")
#: The skip marker of a band list.
SKIP = "-"
#: Pixel size of the engine's grid, and how far a stack's may be from it (metres).
GRID_RESOLUTION, RESOLUTION_TOLERANCE = 10.0, 0.01
#: Band names of Element 84's Earth Search that are not STAC common names.
EARTH_SEARCH_NAMES = {"rededge1": "B05", "rededge2": "B06", "rededge3": "B07"}
_DESCRIBED_ID = re.compile(r"(?:^|[^a-z0-9])b0?(8a|1[0-2]|[1-9])(?:$|[^a-z0-9])")


def band_id_of_name(name: str) -> str | None:
    """The band id a band description or asset name stands for (``B2``, ``SR_B02``, ``blue``,
    ``rededge1`` …), or None."""
    key = name.strip().lower()
    if key in EARTH_SEARCH_NAMES:
        return EARTH_SEARCH_NAMES[key]
    if key in BAND_BY_COMMON_NAME:
        return BAND_BY_COMMON_NAME[key].id
    match = _DESCRIBED_ID.search(key)
    return normalise_band_id("B" + match.group(1)) if match else None


def is_stack(path: str | Path) -> bool:
    """Is ``path`` a raster file GDAL opens (not a zip, not a folder)? Then it is read as a stack."""
    path = Path(path)
    if not path.is_file() or zipfile.is_zipfile(path):  # GDAL opens some zips too: a zipped .SAFE is a product
        return False
    try:
        with rasterio.open(path) as ds:
            return ds.count > 0
    except RasterioIOError:
        return False


def is_multiband(path: str | Path) -> bool:
    """Is ``path`` a raster file of more than one band (a stack, not one band file of a product)?"""
    if not is_stack(path):
        return False
    with rasterio.open(path) as ds:
        return ds.count > 1


def parse_band_list(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"B02,B03,-,B04"`` → ``("B02", "B03", "-", "B04")``; ConfigError naming an unknown id."""
    if text is None:
        return None
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    ids = tuple(SKIP if t == SKIP else normalise_band_id(t) for t in items)
    unknown = [t for t, i in zip(items, ids) if i != SKIP and i not in BAND_BY_ID]
    if unknown or not items:
        raise ConfigError(f"band list {text!r}: unknown band id(s) {', '.join(map(repr, unknown))}; known: "
                          f"{', '.join(BAND_BY_ID)} ('-' skips a band)")
    return ids


@dataclass(frozen=True)
class _Scale:
    """reflectance = value × scale + offset, and where that was learnt."""

    scale: float
    offset: float
    source: str


def discover_stack(path: str | Path, bands: str | Sequence[str] | None = None, scale: float | None = None,
                   offset: float | None = None) -> BandSet:
    """The bands of the stacked raster at ``path``; InputError naming the file (and band) when the
    bands cannot be identified, are of an unsupported type, or the pixel is not 10 m."""
    source = Path(path).expanduser()
    band_list = parse_band_list(bands)
    try:
        with rasterio.open(source) as ds:
            ids = _identify(ds, source, band_list)
            _check_grid(ds, source)
            for index, band_id in ids.items():
                dtype = ds.dtypes[index - 1]
                if dtype not in STACK_DTYPES:
                    raise InputError(f"band {band_id} (band {index} of {source}) has data type {dtype}; expected "
                                     f"{', '.join(STACK_DTYPES)} (digital numbers or reflectance)")
            floats = [i for i in ids if ds.dtypes[i - 1].startswith("float")]
            # one scale for the whole stack: the largest value of any band tells reflectance from × 10000
            largest = max(_largest_value(ds, i) for i in floats) if floats and scale is None and offset is None else 0.0
            scales = {band_id: _scale(ds, index, scale, offset, largest) for index, band_id in ids.items()}
            files = {band_id: BandFile(BAND_BY_ID[band_id], str(source), ds.width, ds.height, ds.transform, ds.crs,
                                       tuple(ds.block_shapes[index - 1]), np.dtype(ds.dtypes[index - 1]).itemsize,
                                       index=index, scale=scales[band_id].scale * DN_PER_REFLECTANCE,
                                       nodata=ds.nodatavals[index - 1])
                     for index, band_id in ids.items()}
    except RasterioIOError as exc:
        raise InputError(f"cannot read stacked raster {source}: {exc}") from None
    if not any(f.band.resolution == 10 for f in files.values()):
        raise InputError(f"stacked raster {source} has no 10 m band (B02, B03, B04 or B08) among "
                         f"{', '.join(files)}; the output grid is defined by them")
    return BandSet(name=source.stem, source=source, files=files, level=_level_from_name(source.name), baseline=None,
                   offsets={b: s.offset * DN_PER_REFLECTANCE for b, s in scales.items() if s.offset},
                   notes=_notes(source, ids, band_list, scales))


def to_dn(block: np.ndarray, band: BandFile) -> np.ndarray:
    """Stored values of a stack band → uint16 digital numbers (reflectance × 10000 before the band's
    offset): NaN, the nodata value and 0 become 0 (nodata); valid values are rounded and kept within
    1 … 65535 so that none turns into nodata."""
    invalid = block == 0
    if band.nodata is not None and not math.isnan(band.nodata):
        invalid |= block == band.nodata
    values = block.astype(np.float32) * np.float32(band.scale)
    invalid |= ~np.isfinite(values)
    values[invalid] = 0  # NaN would not cast
    dn = np.clip(np.rint(values, out=values), 1, np.iinfo(np.uint16).max, out=values).astype(np.uint16)
    dn[invalid] = 0
    return dn


def _identify(ds, source: Path, band_list: tuple[str, ...] | None) -> dict[int, str]:
    """File band index (1-based) → band id."""
    if band_list is not None:
        if len(band_list) != ds.count:
            raise InputError(f"the band list names {len(band_list)} band(s) ({', '.join(band_list)}) but stacked "
                             f"raster {source} has {ds.count}")
        pairs = [(i + 1, b) for i, b in enumerate(band_list) if b != SKIP]
    else:
        described = [band_id_of_name(d) if d else None for d in ds.descriptions]
        pairs = [(i + 1, b) for i, b in enumerate(described) if b is not None]
        if not pairs:
            names = ", ".join(repr(d) for d in ds.descriptions) if any(ds.descriptions) else "none"
            raise InputError(f"cannot tell which band of stacked raster {source} is which: its {ds.count} band "
                             f"description(s) are {names}; give the band ids in file order (e.g. B02,B03,B04,B08)")
    seen: dict[str, int] = {}
    for index, band_id in pairs:
        if band_id in seen:
            raise InputError(f"stacked raster {source}: bands {seen[band_id]} and {index} are both {band_id}")
        seen[band_id] = index
    return dict(pairs)


def _check_grid(ds, source: Path) -> None:
    if ds.crs is None:
        raise InputError(f"stacked raster {source} has no coordinate reference system")
    t = ds.transform
    if abs(t.b) > 1e-9 or abs(t.d) > 1e-9:
        raise InputError(f"stacked raster {source} is rotated; only north-up grids are supported")
    if abs(abs(t.a) - GRID_RESOLUTION) > RESOLUTION_TOLERANCE or abs(abs(t.e) - GRID_RESOLUTION) > RESOLUTION_TOLERANCE:
        raise InputError(f"stacked raster {source} has {abs(t.a):g} × {abs(t.e):g} pixels; s2seg computes on the "
                         f"10 m grid: resample it to 10 m (e.g. gdalwarp -tr 10 10)")
    if ds.width > TILE_SIZE_PX or ds.height > TILE_SIZE_PX:
        raise InputError(f"stacked raster {source} is {ds.width} × {ds.height} px, larger than a whole Sentinel-2 "
                         f"tile ({TILE_SIZE_PX} × {TILE_SIZE_PX} px at 10 m): split it into tiles")


def _scale(ds, index: int, scale: float | None, offset: float | None, largest: float) -> _Scale:
    """How band ``index`` turns into reflectance: given, from the file's metadata, or detected."""
    if scale is not None or offset is not None:
        return _Scale(1.0 if scale is None else scale, offset or 0.0, "as given")
    file_scale, file_offset = ds.scales[index - 1], ds.offsets[index - 1]
    if (file_scale, file_offset) != (1.0, 0.0):
        return _Scale(file_scale, file_offset, "from the file's scale/offset metadata")
    dtype = ds.dtypes[index - 1]
    if not dtype.startswith("float"):
        return _Scale(1 / DN_PER_REFLECTANCE, 0.0, "integer values: reflectance × 10000")
    if largest <= MAX_REFLECTANCE:
        return _Scale(1.0, 0.0, f"float values up to {largest:.3g}: reflectance 0–1")
    return _Scale(1 / DN_PER_REFLECTANCE, 0.0, f"float values up to {largest:.6g}: reflectance × 10000")


def _largest_value(ds, index: int) -> float:
    """The largest finite value of a band, from a decimated read (an overview when there is one)."""
    step = max(1, max(ds.width, ds.height) // 512)
    sample = ds.read(index, out_shape=(max(1, ds.height // step), max(1, ds.width // step)), masked=True)
    values = np.asarray(sample.filled(np.nan), dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else 0.0


def _notes(source: Path, ids: dict[int, str], band_list: tuple[str, ...] | None,
           scales: dict[str, _Scale]) -> tuple[str, ...]:
    how = "from the band list" if band_list is not None else "from the band descriptions"
    notes = [f"stacked raster {source.name}: bands {', '.join(ids.values())} {how}"]
    by_source: dict[str, list[str]] = {}
    for band_id, s in scales.items():
        by_source.setdefault(f"{s.source} (reflectance = value × {s.scale:g} + {s.offset:g})", []).append(band_id)
    for text, band_ids in by_source.items():
        notes.append(f"stacked raster {source.name}: {', '.join(band_ids)}: {text}")
    coarse = [b for b in ids.values() if BAND_BY_ID[b].resolution > 10]
    if coarse:
        notes.append(f"stacked raster {source.name}: {', '.join(coarse)} (20/60 m bands) are read at the stack's 10 m "
                     f"pixel, as resampled by whoever made the stack")
    return tuple(notes)
