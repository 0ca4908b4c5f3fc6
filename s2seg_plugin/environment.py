"""Let QGIS's Python see packages installed in a separate environment (typically a venv with torch).

QGIS desktop started from a menu runs the system Python, where torch is rarely
installed. ``make install`` (tools/install_plugin.sh) records the project
venv's site-packages in the QGIS profile under :data:`SETTINGS_KEY`; the
plugin puts those folders on ``sys.path`` when it loads, ahead of the system
site-packages — the same order as running QGIS with the venv activated (the
configuration the project tests), because torch needs newer pure-Python
dependencies (sympy, typing_extensions …) than a distribution may ship.

Nothing happens when the setting is empty, so a plain "Install from ZIP" is
unaffected. The environment made by ``s2seg:setup`` (setting ``s2seg/environment``)
is different: it is created from QGIS's own Python with its system packages
visible, so its folders go *after* QGIS's own (:func:`append_environment`). The folders' ``.pth`` files are deliberately not processed (one of
setuptools' would re-route ``distutils`` for all of QGIS).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

SETTINGS_KEY = "s2seg/extraPythonPaths"


def configured_paths() -> list[str]:
    """The folders recorded in the QGIS settings (``os.pathsep``-separated), or none."""
    try:
        from qgis.core import QgsSettings
    except ImportError:  # not running inside QGIS
        return []
    value = QgsSettings().value(SETTINGS_KEY, "", type=str) or ""
    return [p for p in value.split(os.pathsep) if p.strip()]


def _first_site_index(path: list[str]) -> int:
    """Index of the first site-/dist-packages entry of ``path`` (its length when there is none)."""
    for i, entry in enumerate(path):
        name = Path(entry).name
        if name in ("site-packages", "dist-packages"):
            return i
    return len(path)


def add_python_paths(paths: list[str], path: list[str] | None = None) -> list[str]:
    """Insert existing folders of ``paths`` before the first site-packages entry; returns those added."""
    target = sys.path if path is None else path
    index = _first_site_index(target)
    added: list[str] = []
    for folder in paths:
        folder = os.path.abspath(os.path.expanduser(folder))
        if not os.path.isdir(folder) or folder in target:
            continue
        target.insert(index + len(added), folder)  # keep the configured order
        added.append(folder)
    return added


def apply_configured_paths() -> list[str]:
    """Apply :data:`SETTINGS_KEY` to ``sys.path`` (idempotent); returns the folders added."""
    return add_python_paths(configured_paths())


def environment_site_packages(env: str | Path) -> list[str]:
    """The site-packages folders of the virtual environment ``env`` that exist (POSIX and Windows layouts)."""
    root = Path(env).expanduser()
    found = sorted(str(p) for p in root.glob("lib/python3*/site-packages") if p.is_dir())
    windows = root / "Lib" / "site-packages"
    if windows.is_dir():
        found.append(str(windows))
    return found


def append_environment(env: str | Path, path: list[str] | None = None) -> list[str]:
    """Append ``env``'s site-packages to ``path`` (``sys.path``), *after* QGIS's own entries, so QGIS's
    numpy, GDAL and rasterio stay in charge; returns the folders added (none when already there).

    Its ``.pth`` files are not processed, for the reason given in the module docstring.
    """
    target = sys.path if path is None else path
    added = [folder for folder in environment_site_packages(env) if folder not in target]
    target.extend(added)
    return added


def apply_configured_environment() -> list[str]:
    """Append the environment of the settings (``s2seg:setup``'s or one the user chose); idempotent."""
    from .settings import load

    try:
        environment = load().environment
    except ImportError:  # not running inside QGIS
        return []
    return append_environment(environment) if environment else []
