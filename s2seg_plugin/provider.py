"""The ``s2seg`` Processing provider: algorithm ids are ``s2seg:<name>``."""
from __future__ import annotations

import importlib

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from . import ICON_PATH, plugin_version

#: The algorithms, as (module of ``algorithms/``, class): add one line per algorithm.
ALGORITHMS: tuple[tuple[str, str], ...] = (
    ("segment_tile", "SegmentTileAlgorithm"),
    ("segment_tiles", "SegmentTilesAlgorithm"),
    ("diagnose", "DiagnoseAlgorithm"),
    ("install_dependencies", "SetupAlgorithm"),
    ("sample_design", "SampleDesignAlgorithm"),
    ("assess", "AssessAlgorithm"),
)


class S2SegProvider(QgsProcessingProvider):
    """Provides the s2seg algorithms to the Toolbox, the modeler and qgis_process."""

    def id(self) -> str:
        return "s2seg"

    def name(self) -> str:
        return "S2Seg"

    def longName(self) -> str:
        return self.tr("S2Seg — Sentinel-2 land cover segmentation")

    def versionInfo(self) -> str:
        return plugin_version()

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def svgIconPath(self) -> str:
        return str(ICON_PATH)

    def loadAlgorithms(self) -> None:
        # Imported here so that loading the plugin stays cheap until Processing asks for algorithms.
        package = __package__.rsplit(".", 1)[0] + ".algorithms"
        for module, name in ALGORITHMS:
            self.addAlgorithm(getattr(importlib.import_module(f"{package}.{module}"), name)())
