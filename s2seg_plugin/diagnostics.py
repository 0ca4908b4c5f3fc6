"""What a bug report needs: versions, the device torch sees, paths, and a self-test on a tiny sample tile.

Every probe is guarded: the report is most useful exactly when something is
broken (torch missing or not loading), so a failing probe becomes a row that
says why instead of an exception.
"""
from __future__ import annotations

import html
import importlib
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..core.atomic import write_atomic
from ..core.interpreter import find_interpreter

#: Modules whose version the report lists (import name → label).
VERSIONED_MODULES = {
    "numpy": "numpy",
    "rasterio": "rasterio",
    "torch": "PyTorch",
    "onnxruntime": "ONNX Runtime",
    "numba": "Numba",
    "distributed": "Dask distributed",
}
#: Side of the self-test's sample tile in 10 m pixels: seconds on a CPU.
SELF_TEST_SIZE = 240


@dataclass
class Section:
    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    ok: bool = True

    def add(self, key: str, value: object) -> None:
        self.rows.append((key, str(value)))


def _probe(section: Section, key: str, read: Callable[[], object]) -> None:
    try:
        section.add(key, read())
    except Exception as exc:  # noqa: BLE001 - a broken library is what the report is for
        section.add(key, f"unavailable ({type(exc).__name__}: {exc})")
        section.ok = False


def _version(module: str) -> str:
    return getattr(importlib.import_module(module), "__version__", "installed (no version)")


def software() -> Section:
    section = Section("Software")
    try:
        from qgis.core import Qgis

        section.add("QGIS", f"{Qgis.QGIS_VERSION} ({Qgis.QGIS_DEV_VERSION or 'release'})")
    except ImportError:
        section.add("QGIS", "not running inside QGIS")
    from . import plugin_version

    section.add("s2seg", plugin_version())
    section.add("Python", f"{platform.python_version()} ({platform.python_implementation()})")
    section.add("Operating system", platform.platform())
    _probe(section, "GDAL", lambda: importlib.import_module("osgeo.gdal").VersionInfo("RELEASE_NAME"))
    for module, label in VERSIONED_MODULES.items():
        _probe(section, label, lambda module=module: _version(module))
    return section


def device() -> Section:
    """The device torch would use (s2seg's ``auto``) and what it knows about it."""
    section = Section("Device")
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        section.add("torch", f"cannot be imported ({type(exc).__name__}: {exc})")
        section.ok = False
        return section
    section.add("CUDA build", torch.version.cuda or "none (CPU build)")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            section.add(f"GPU {index}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB")
        section.add("Device used by 'auto'", "cuda")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        section.add("Device used by 'auto'", "mps (Apple GPU)")
    else:
        section.add("Device used by 'auto'", "cpu (no GPU visible to torch)")
    section.add("CPU threads used by torch", torch.get_num_threads())
    return section


def paths(extra: Optional[dict[str, str]] = None) -> Section:
    section = Section("Paths")
    from . import PLUGIN_DIR

    section.add("Plugin folder", PLUGIN_DIR)
    _probe(section, "QGIS's Python program", find_interpreter)
    section.add("sys.executable", sys.executable)
    section.add("sys.prefix", sys.prefix)
    for key, value in (extra or {}).items():
        section.add(key, value or "(not set)")
    _probe(section, "torch loaded from", lambda: Path(importlib.import_module("torch").__file__).parent)
    return section


def self_test(device_name: str = "cpu", cancel: Optional[object] = None) -> Section:
    """Write a :data:`SELF_TEST_SIZE` px sample tile and segment it with the built-in model, end to end."""
    section = Section("Self-test")
    try:
        from ..core.config import EngineConfig
        from ..core.pipeline import segment
        from ..core.sample import write_sample_tile

        with tempfile.TemporaryDirectory(prefix="s2seg-selftest-") as tmp:
            started = time.perf_counter()
            tile = write_sample_tile(Path(tmp) / "tile", size=SELF_TEST_SIZE)
            result = segment(tile, Path(tmp) / "out", config=EngineConfig(device=device_name), cancel=cancel)
            section.add("Result", "passed")
            section.add("Tile", f"{result.tile_name} ({SELF_TEST_SIZE} × {SELF_TEST_SIZE} px, synthetic)")
            section.add("Model / device", f"{result.model_name} on {result.device}")
            section.add("Products", ", ".join(sorted(result.products)))
            section.add("Time", f"{time.perf_counter() - started:.1f} s")
    except Exception as exc:  # noqa: BLE001 - reported, with its traceback, for the bug report
        section.ok = False
        section.add("Result", f"FAILED: {type(exc).__name__}: {exc}")
        section.add("Traceback", "".join(traceback.format_exception(exc)))
    return section


def render_html(sections: list[Section]) -> str:
    """A self-contained HTML page (escaped values, tracebacks kept as preformatted text)."""
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>s2seg diagnostics</title>",
             "<style>body{font-family:sans-serif}td{padding:2px 8px;vertical-align:top}"
             ".bad{color:#b00020}pre{margin:0}</style></head><body><h1>s2seg diagnostics</h1>"]
    for section in sections:
        status = "" if section.ok else " <span class='bad'>(problem)</span>"
        parts.append(f"<h2>{html.escape(section.title)}{status}</h2><table>")
        for key, value in section.rows:
            shown = f"<pre>{html.escape(value)}</pre>" if "\n" in value else html.escape(value)
            parts.append(f"<tr><td><b>{html.escape(key)}</b></td><td>{shown}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, sections: list[Section]) -> Path:
    """Write the report atomically (a half-written report is never left behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, render_html(sections))
    return path
