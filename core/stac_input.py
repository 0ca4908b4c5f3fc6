"""STAC items (a JSON file or an ``http(s)://`` URL) of Sentinel-2 L1C/L2A as a :class:`BandSet`.

Items are read with ``pystac``; their band assets are named as Element 84's Earth Search names
them (``blue``, ``nir08``, ``swir16`` …) or as the Planetary Computer and ESA do (``B02`` …).
Remote assets (cloud-optimised GeoTIFFs) are read through GDAL's ``/vsicurl/``: the windowed
reader fetches only the byte ranges of the blocks it needs, never whole files; signed URLs (the
Planetary Computer's SAS tokens) are passed through as they are, and every message and the resume
journal show them without their query string. The processing-baseline offset comes from the
item's properties: none where ``earthsearch:boa_offset_applied`` is true, else -1000 DN from
baseline 04.00 (``s2:processing_baseline``) on.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from .bands import BAND_BY_ID, TILE_SIZE_PX
from .errors import InputError
from .sentinel2 import PRODUCT_DTYPE, BandFile, BandSet, _check_grids
from .stack import band_id_of_name
from .urls import failed_read_reason, gdal_path, is_raster_url, is_url, redact

#: The DN offset of products from processing baseline 04.00 on (BOA_ADD_OFFSET / RADIO_ADD_OFFSET).
BASELINE_OFFSET_DN, OFFSET_BASELINE = -1000.0, "04.00"


def is_stac_item(path: str | Path) -> bool:
    """An ``http(s)://`` URL that is not a raster's (``….tif``: :mod:`.cog_urls`), or a local JSON
    file holding a STAC Item (``"type": "Feature"`` with assets)."""
    text = str(path)
    if is_url(text):
        return not is_raster_url(text)
    local = Path(text)
    if local.suffix.lower() != ".json" or not local.is_file():
        return False
    try:
        with open(local, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and content.get("type") == "Feature" and "assets" in content


def discover_stac(source: str | Path) -> BandSet:
    """The band assets of the STAC item at ``source``; InputError naming the item, asset and URL
    (without secrets) when it cannot be read."""
    item = _read_item(str(source))
    assets: dict[str, tuple[str, str]] = {}  # band id → (asset key, href)
    for key, asset in item.assets.items():
        if key.lower().endswith("-jp2"):  # Earth Search also lists the JPEG 2000 originals: read the COGs
            continue
        band_id = band_id_of_name(key)
        if band_id is not None and band_id not in assets:
            assets[band_id] = (key, asset.get_absolute_href() or asset.href)
    if not any(BAND_BY_ID[b].resolution == 10 for b in assets):
        raise InputError(f"STAC item {item.id} ({redact(str(source))}) has no 10 m band asset (B02/blue, B03/green, "
                         f"B04/red or B08/nir); assets: {', '.join(item.assets) or 'none'}")
    files = {band_id: open_remote_band(BAND_BY_ID[band_id], href,
                                       f"asset {key!r} of STAC item {item.id} ({redact(href)})")
             for band_id, (key, href) in assets.items()}
    properties = item.properties
    baseline = properties.get("s2:processing_baseline")
    offset = 0.0
    if not properties.get("earthsearch:boa_offset_applied") and baseline and str(baseline) >= OFFSET_BASELINE:
        offset = BASELINE_OFFSET_DN
    bandset = BandSet(name=item.id, source=Path(redact(str(source))), files=files, level=_level(item),
                      baseline=str(baseline) if baseline else None,
                      offsets={b: offset for b in files} if offset else {},
                      notes=(f"STAC item {item.id}: assets {', '.join(k for k, _ in assets.values())} as bands "
                             f"{', '.join(assets)}; offset {offset:g} DN (baseline {baseline or 'unknown'}"
                             f"{', offset already applied' if properties.get('earthsearch:boa_offset_applied') else ''})",))
    _check_grids(bandset)
    return bandset


def _read_item(source: str):
    try:
        import pystac
    except ImportError:
        raise InputError(f"reading the STAC item {redact(source)} needs the pystac package "
                         "(pip install pystac==1.15.2)") from None
    try:
        return pystac.Item.from_file(source)
    except Exception as exc:  # noqa: BLE001 - pystac raises urllib, JSON and its own errors alike
        raise InputError(f"cannot read STAC item {redact(source)}: {redact(str(exc))}") from None


def open_remote_band(band, href: str, where: str) -> BandFile:
    """The band file at ``href`` (read through ``/vsicurl/`` when it is a URL): one tile's uint16
    digital numbers; InputError starting with ``where`` (which names the asset and URL without
    secrets) when it cannot be read or is not such a band."""
    path = gdal_path(href)
    try:
        with rasterio.open(path) as ds:
            if ds.width > TILE_SIZE_PX or ds.height > TILE_SIZE_PX:
                raise InputError(f"{where} is {ds.width} × {ds.height} px, larger than a Sentinel-2 tile")
            if ds.crs is None:
                raise InputError(f"{where} has no coordinate reference system")
            if ds.dtypes[0] != PRODUCT_DTYPE:
                raise InputError(f"band {band.id}, {where}, has data type {ds.dtypes[0]}; expected {PRODUCT_DTYPE} "
                                 f"digital numbers")
            return BandFile(band, path, ds.width, ds.height, ds.transform, ds.crs, tuple(ds.block_shapes[0]),
                            np.dtype(ds.dtypes[0]).itemsize, dtype=ds.dtypes[0])
    except RasterioIOError as exc:
        raise InputError(f"cannot read {where}: {failed_read_reason(path, str(exc))}") from None


def _level(item) -> str | None:
    text = " ".join(str(v) for v in (item.properties.get("s2:product_type"), item.collection_id, item.id) if v).upper()
    return "L2A" if ("2A" in text and "L2A" in text) or "MSI2A" in text else "L1C" if "L1C" in text or "MSI1C" in text else None
