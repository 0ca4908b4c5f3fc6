"""The ``s2seg`` Processing provider: algorithm ids are ``s2seg:<name>``."""
from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from . import ICON_PATH, plugin_version


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
        from ..algorithms.segment_tile import SegmentTileAlgorithm
        from ..algorithms.segment_tiles import SegmentTilesAlgorithm

        self.addAlgorithm(SegmentTileAlgorithm())
        self.addAlgorithm(SegmentTilesAlgorithm())
        from ..algorithms import assess, sample_design
        for algorithm in (sample_design.SampleDesignAlgorithm(), assess.AssessAlgorithm()):
            self.addAlgorithm(algorithm)
