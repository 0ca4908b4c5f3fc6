"""Per-band cloud-optimised GeoTIFF URLs as a tile, without a STAC item.

A tile given as URLs is a text file listing them (``bands.txt``: one ``http(s)://…/B02.tif`` per
line, ``#`` comments), or the URLs themselves (several ``TILE`` arguments on the command line, a
list in the Python API, or one URL of a band file). Bands are identified by file name as local band
files are (``…_B02_10m.tif``, ``B02.tif``; Earth Search's ``blue.tif``, ``nir08.tif`` too). Each
file is read like a STAC item's asset (:func:`.stac_input.open_remote_band`): through GDAL's
``/vsicurl/`` with range requests, signed URLs passed through and shown without their query string.

Without product metadata the level comes from the names (``L2A``/``L1C``, as in Earth Search's
``…_0_L2A/`` folders and ESA's ``MSIL2A``), and no processing-baseline offset is applied unless one
is given (``--offset -0.1`` for DN of baseline 04.00 and later); the log says both.
"""
from __future__ import annotations

import re
import urllib.parse
from pathlib import Path, PurePosixPath
from typing import Sequence

from .bands import BAND_BY_ID
from .errors import ConfigError, InputError
from .sentinel2 import BandSet, _band_id_of, _check_grids, _tile_name
from .stac_input import open_remote_band
from .stack import band_id_of_name
from .urls import file_name, is_raster_url, is_url, redact

#: The suffix of a file listing band URLs (one per line).
LIST_SUFFIX = ".txt"
_LEVEL = re.compile(r"(?:MSI|[_-]|^)(L2A|L1C|2A|1C)(?:[_-]|$)", re.IGNORECASE)


def band_urls(tile: str | Path | Sequence[str]) -> list[str] | None:
    """The band URLs ``tile`` names (several URLs, one raster URL or a ``.txt`` list of URLs), or
    None when it is another kind of input. ConfigError when several values are not all URLs."""
    if isinstance(tile, (list, tuple)):
        if len(tile) == 1:
            return band_urls(tile[0])
        others = [str(t) for t in tile if not is_url(str(t))]
        if others or not tile:
            raise ConfigError(f"several tile values must all be band URLs (http(s)://…/B02.tif …); not URLs: "
                              f"{', '.join(others) or 'none given'}")
        return [str(t) for t in tile]
    text = str(tile)
    if is_raster_url(text):
        return [text]
    if not is_url(text):
        path = Path(text).expanduser()
        if path.suffix.lower() == LIST_SUFFIX and path.is_file():
            return read_url_list(path)
    return None


def read_url_list(path: Path) -> list[str]:
    """The URLs listed in ``path`` (one per line; blank lines and ``#`` comments skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the list of band URLs {path}: {getattr(exc, 'strerror', None) or exc}") from None
    urls = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if not is_url(text):
            raise InputError(f"line {number} of the list of band URLs {path} is not an http(s) URL: {redact(text)!r} "
                             f"(a batch reads a list of tiles given as @{path.name})")
        urls.append(text)
    if not urls:
        raise InputError(f"the list of band URLs {path} lists no URL (one http(s)://…/B02.tif per line)")
    return urls


def discover_cogs(urls: Sequence[str], list_file: Path | None = None) -> BandSet:
    """The bands at ``urls`` (listed in ``list_file``, when they come from one); InputError naming
    the URL (without secrets) that cannot be identified or read."""
    by_band: dict[str, str] = {}
    for url in urls:
        name = file_name(url)
        band_id = _band_id_of(name) or band_id_of_name(PurePosixPath(name).stem)
        if band_id is None:
            raise InputError(f"cannot tell which band the URL {redact(url)} holds: its file name must name the band "
                             f"(…_B02_10m.tif, B02.tif, blue.tif …), or give a STAC item")
        if band_id in by_band:
            raise InputError(f"band {band_id} is given twice: {redact(by_band[band_id])} and {redact(url)}")
        by_band[band_id] = url
    label = str(list_file) if list_file else "the band URLs"
    if not any(BAND_BY_ID[b].resolution == 10 for b in by_band):
        raise InputError(f"{label} hold no 10 m band (B02, B03, B04 or B08) among {', '.join(by_band)}; the output "
                         f"grid is defined by them")
    files = {b: open_remote_band(BAND_BY_ID[b], url, f"band URL {redact(url)}") for b, url in by_band.items()}
    paths = [urllib.parse.unquote(urllib.parse.urlparse(u).path) for u in by_band.values()]
    folders = {PurePosixPath(p).parent for p in paths}
    folder = folders.pop() if len(folders) == 1 else None
    level = _level([*paths, *([list_file.name] if list_file else [])])
    source = list_file if list_file else Path(redact(_folder_url(next(iter(by_band.values())))))
    name = _tile_name(Path(folder.name if folder and folder.name else (list_file.stem if list_file else "tile")),
                      [PurePosixPath(p).name for p in paths], level, None)
    bandset = BandSet(name=name, source=source, files=files, level=level, baseline=None,
                      notes=(f"band URLs: {', '.join(f'{b} ← {file_name(u)}' for b, u in by_band.items())}; level "
                             f"{level or 'unknown'} (from the names); no product metadata, so no processing-baseline "
                             f"offset is applied unless one is given (-0.1 for DN of baseline 04.00 and later)",))
    _check_grids(bandset)
    return bandset


def _level(names: Sequence[str]) -> str | None:
    for name in names:
        for part in re.split(r"[/.]", name):
            match = _LEVEL.search(part)
            if match:
                return "L1C" if "1C" in match.group(1).upper() else "L2A"
    return None


def _folder_url(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    return urllib.parse.urlunparse(parsed._replace(path=parsed.path.rsplit("/", 1)[0] + "/", query="", fragment=""))
