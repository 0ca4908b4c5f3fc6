"""Which tiles a batch runs and where each one's products go."""
from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import InputError
from ..urls import file_name, is_url
from .results import TileJob

_GLOB_CHARS = ("*", "?", "[")
_TILE_SUFFIXES = (".zip", ".SAFE")


def expand_inputs(items: Iterable[str | Path]) -> list[Path | str]:
    """Tile paths from paths, globs and ``@list.txt`` files (one path or glob per line, ``#`` comments);
    an ``http(s)://`` URL (a STAC item's) is kept as it is, a string.

    Relative lines of a list file are relative to the list file's folder. A glob that
    matches nothing is an error (a typo must not silently shrink a batch); a plain path
    is kept even when missing, so the run reports it as a failed tile. Duplicates
    (same resolved path) are dropped, the first occurrence keeps its place.
    """
    found: list[Path | str] = []
    seen: set[str] = set()

    def add(path: Path | str) -> None:
        key = _key(path)
        if key not in seen:
            seen.add(key)
            found.append(path)

    def visit(item: str, base: Path | None) -> None:
        text = item.strip()
        if not text:
            return
        if text.startswith("@"):
            list_file = Path(text[1:]).expanduser()
            if base is not None and not list_file.is_absolute():
                list_file = base / list_file
            try:
                lines = list_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise InputError(f"cannot read the list of tiles {list_file}: {exc.strerror or exc}") from None
            for line in lines:
                if line.strip() and not line.lstrip().startswith("#"):
                    visit(line, list_file.parent)
            return
        if is_url(text):
            add(text)
            return
        pattern = os.path.expanduser(text)
        if base is not None and not os.path.isabs(pattern):
            pattern = str(base / pattern)
        if any(c in pattern for c in _GLOB_CHARS):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise InputError(f"no tile matches {text!r}")
            for match in matches:
                add(Path(match))
        else:
            add(Path(pattern))

    for item in items:
        visit(str(item), None)
    if not found:
        raise InputError("no tiles given")
    return found


def tile_folder_name(source: Path | str) -> str:
    """``S2B_MSIL2A_…_T32UNU_….SAFE.zip`` → ``S2B_MSIL2A_…_T32UNU_…``: the input's name without .zip/.SAFE;
    a URL's last path segment without .json (Earth Search's item URLs end in the item id)."""
    if is_url(source):
        name = file_name(str(source))
        return (name[: -len(".json")] if name.lower().endswith(".json") else name) or "tile"
    source = Path(source)
    name = source.name or source.resolve().name
    changed = True
    while changed:
        changed = False
        for suffix in _TILE_SUFFIXES:
            if name.upper().endswith(suffix.upper()) and len(name) > len(suffix):
                name, changed = name[: -len(suffix)], True
    return name or "tile"


def plan_jobs(sources: Sequence[Path | str], output_root: str | Path) -> list[TileJob]:
    """One job per tile; the output folder is named after the input (unique per product in ESA naming).

    Inputs that share a name (two ``IMG_DATA`` folders, copies of one product) get a suffix
    derived from their absolute path. A tile keeps the folder an earlier run gave it, whatever
    else is in the batch now, so re-running a subset still finds its complete tiles.
    """
    root = Path(output_root).expanduser()
    sources = [s if is_url(s) else Path(s) for s in sources]
    bases = [tile_folder_name(s) for s in sources]
    names = []
    for source, base in zip(sources, bases):
        hashed = f"{base}-{_path_digest(source)}"
        if (root / hashed).is_dir():
            names.append(hashed)
        elif _made_from(root / base, source):
            names.append(base)
        else:
            names.append(hashed if bases.count(base) > 1 else base)
    for i, (source, name) in enumerate(zip(sources, names)):
        if names.count(name) > 1:  # e.g. an earlier lone run took the plain name for another input
            names[i] = f"{bases[i]}-{_path_digest(source)}"
    return [TileJob(source=s, name=n, output_dir=root / n) for s, n in zip(sources, names)]


def _key(source: Path | str) -> str:
    """What identifies a tile: a URL without its query string (a re-signed URL is the same tile), or the
    resolved path."""
    return str(source).split("?", 1)[0] if is_url(source) else os.path.normcase(str(Path(source).resolve()))


def _path_digest(source: Path | str) -> str:
    return hashlib.sha1(_key(source).encode("utf-8")).hexdigest()[:8]


def _made_from(folder: Path, source: Path | str) -> bool:
    """Does ``folder`` hold the engine report of a run on ``source``?"""
    if not folder.is_dir():
        return False
    for report_path in folder.glob("*_report.json"):
        try:
            recorded = json.loads(report_path.read_text(encoding="utf-8"))["tile"]["source"]
            # the report's source of a URL: Path(URL without secrets), its query string shown as ?…
            if is_url(source) and recorded.split("?", 1)[0] == str(Path(_key(source))):
                return True
            if not is_url(source) and Path(recorded).resolve() == Path(source).resolve():
                return True
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return False


