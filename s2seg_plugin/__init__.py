"""The QGIS side of s2seg: plugin class, Processing provider, layer styling and the HTML report.

Nothing here may import torch (or any other heavy engine dependency) at module
level: QGIS imports this package at start-up, and a missing dependency must
surface as a clear message when an algorithm runs, never as a traceback while
QGIS starts (see :mod:`.dependencies`).
"""
from __future__ import annotations

import configparser
from functools import lru_cache
from pathlib import Path

#: The plugin folder (the repository root; ``s2seg/`` once installed).
PLUGIN_DIR = Path(__file__).resolve().parent.parent
RESOURCES_DIR = PLUGIN_DIR / "resources"
ICON_PATH = RESOURCES_DIR / "s2seg.svg"


@lru_cache(maxsize=1)
def plugin_metadata() -> dict[str, str]:
    """The ``[general]`` section of ``metadata.txt`` (empty when unreadable)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(PLUGIN_DIR / "metadata.txt", encoding="utf-8")
        return dict(parser["general"])
    except (configparser.Error, KeyError, OSError):
        return {}


def plugin_version() -> str:
    """The plugin version from ``metadata.txt`` (``"unknown"`` when missing)."""
    return plugin_metadata().get("version", "unknown")
