"""Which reader discovers a tile: band URLs (:mod:`.cog_urls`: URLs or a ``.txt`` list of them),
a STAC item (:mod:`.stac_input`), a stacked raster file (:mod:`.stack`) or a Sentinel-2 product
(:mod:`.sentinel2`: .SAFE, its zip, IMG_DATA or a folder of band files)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

from .cog_urls import band_urls, discover_cogs
from .errors import ConfigError
from .sentinel2 import PLAUSIBLE_OFFSETS, BandSet, discover
from .stac_input import discover_stac, is_stac_item
from .urls import redact
from .stack import DN_PER_REFLECTANCE, discover_stack, is_stack


def discover_input(path: str | Path | Sequence[str], bands: str | Sequence[str] | None = None,
                   scale: float | None = None, offset: float | None = None) -> BandSet:
    """The bands of the tile at ``path`` (several band URLs: a list of them). ``bands`` (band ids
    in file order) applies to a stacked raster only; ``scale``/``offset`` (reflectance = value ×
    scale + offset) override what the file or the product metadata says, for any input."""
    _check_scale(scale, offset)
    if isinstance(path, (list, tuple)) and len(path) == 1:
        path = path[0]
    urls = band_urls(path)
    if urls is not None:
        if bands is not None:
            raise ConfigError("a band list applies to a stacked raster, not to band URLs (their file names name "
                              "the bands)")
        listed = None if isinstance(path, (list, tuple)) or str(path) in urls else Path(str(path)).expanduser()
        return _with_scale(discover_cogs(urls, listed), scale, offset)
    if is_stac_item(path):
        if bands is not None:
            raise ConfigError(f"a band list applies to a stacked raster, not to the STAC item {redact(str(path))}")
        return _with_scale(discover_stac(path), scale, offset)
    if is_stack(path):
        return discover_stack(path, bands, scale, offset)
    if bands is not None:
        raise ConfigError(f"a band list applies to a stacked raster (one multi-band file), not to {path}")
    return _with_scale(discover(path), scale, offset)


def _with_scale(bandset: BandSet, scale: float | None, offset: float | None) -> BandSet:
    """``bandset`` read with the scale and offset given (reflectance = value × scale + offset)."""
    if scale is None and offset is None:
        return bandset
    dn_scale = 1.0 if scale is None else scale * DN_PER_REFLECTANCE
    files = {b: dataclasses.replace(f, scale=dn_scale) for b, f in bandset.files.items()}
    offsets = {b: (offset or 0.0) * DN_PER_REFLECTANCE for b in files} if offset is not None else bandset.offsets
    note = (f"{bandset.source.name}: reflectance = value × {1 / DN_PER_REFLECTANCE if scale is None else scale:g} + "
            f"{'the product offset' if offset is None else f'{offset:g}'} as given")
    return dataclasses.replace(bandset, files=files, offsets=offsets, notes=bandset.notes + (note,))


def _check_scale(scale: float | None, offset: float | None) -> None:
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ConfigError(f"scale must be a positive number (reflectance = value × scale + offset), got {scale!r}")
    low, high = (v / DN_PER_REFLECTANCE for v in PLAUSIBLE_OFFSETS)
    if offset is not None and not (isinstance(offset, (int, float)) and low <= offset <= high):
        raise ConfigError(f"offset must be a reflectance from {low:g} to {high:g} (baselines 04.00 and later: -0.1), "
                          f"got {offset!r}")
