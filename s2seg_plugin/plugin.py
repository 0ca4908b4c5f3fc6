"""The object QGIS creates through ``classFactory``: registers the Processing provider.

``qgis_process`` calls ``classFactory(None)`` and then only :meth:`initProcessing`;
QGIS desktop calls :meth:`initGui` as well. Neither may touch ``iface`` in
``__init__``.
"""
from __future__ import annotations

from typing import Any, Optional

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from . import ICON_PATH
from .environment import apply_configured_paths
from .provider import S2SegProvider

MENU = "S2Seg"


class S2SegPlugin:
    """Plugin entry object: owns the provider and (on desktop) a Raster-menu shortcut."""

    def __init__(self, iface: Any) -> None:
        self.iface = iface  # None under qgis_process
        # Before any algorithm imports the engine: make a configured torch environment visible.
        apply_configured_paths()
        self.provider: Optional[S2SegProvider] = None
        self.action: Optional[QAction] = None

    @staticmethod
    def tr(text: str) -> str:
        return QCoreApplication.translate("S2SegPlugin", text)

    def initProcessing(self) -> None:  # noqa: N802 - QGIS API
        """Register the provider (called by qgis_process and, through initGui, by QGIS desktop)."""
        if self.provider is None:
            self.provider = S2SegProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - QGIS API
        """Desktop start-up: provider plus a Raster ▸ S2Seg menu entry that opens the algorithm dialog."""
        self.initProcessing()
        if self.iface is None:
            return
        self.action = QAction(QIcon(str(ICON_PATH)), self.tr("Segment Sentinel-2 tile…"), self.iface.mainWindow())
        self.action.triggered.connect(self.open_segment_dialog)
        self.iface.addPluginToRasterMenu(MENU, self.action)

    def open_segment_dialog(self) -> None:
        """Open the standard Processing dialog: it runs the algorithm as a background task."""
        import processing  # the Processing plugin is loaded once QGIS's GUI is up

        processing.execAlgorithmDialog("s2seg:segmenttile")

    def unload(self) -> None:
        """Undo initGui/initProcessing so the plugin can be reloaded or disabled."""
        if self.action is not None and self.iface is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.action.deleteLater()
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
