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
from .environment import apply_configured_environment, apply_configured_paths
from .provider import S2SegProvider

MENU = "S2Seg"


class S2SegPlugin:
    """Plugin entry object: owns the provider and (on desktop) a Raster-menu shortcut."""

    def __init__(self, iface: Any) -> None:
        self.iface = iface  # None under qgis_process
        # Before any algorithm imports the engine: make a configured torch environment visible —
        # `make install`'s folders, then the plugin's environment after QGIS's own packages.
        apply_configured_paths()
        apply_configured_environment()
        self.provider: Optional[S2SegProvider] = None
        self.action: Optional[QAction] = None
        self.plugin_actions: list[QAction] = []
        self.options_factory: Any = None

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
        self.action.triggered.connect(lambda: self.open_dialog("s2seg:segmenttile"))
        self.iface.addPluginToRasterMenu(MENU, self.action)
        # Plugins ▸ S2Seg: setup and diagnostics, through the Processing dialog (background task,
        # progress, log, Cancel: the GUI never blocks).
        for text, algorithm in ((self.tr("Install dependencies…"), "s2seg:setup"),
                                (self.tr("Diagnostics and self-test…"), "s2seg:diagnose")):
            action = QAction(QIcon(str(ICON_PATH)), text, self.iface.mainWindow())
            action.triggered.connect(lambda checked=False, a=algorithm: self.open_dialog(a))
            self.iface.addPluginToMenu(MENU, action)
            self.plugin_actions.append(action)
        from .options_page import S2SegOptionsFactory

        self.options_factory = S2SegOptionsFactory()
        self.iface.registerOptionsWidgetFactory(self.options_factory)

    @staticmethod
    def open_dialog(algorithm: str) -> None:
        """Open the standard Processing dialog: it runs the algorithm as a background task."""
        import processing  # the Processing plugin is loaded once QGIS's GUI is up

        processing.execAlgorithmDialog(algorithm)

    def unload(self) -> None:
        """Undo initGui/initProcessing so the plugin can be reloaded or disabled."""
        if self.action is not None and self.iface is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.action.deleteLater()
            self.action = None
        for action in self.plugin_actions:
            self.iface.removePluginMenu(MENU, action)
            action.deleteLater()
        self.plugin_actions = []
        if self.options_factory is not None and self.iface is not None:
            self.iface.unregisterOptionsWidgetFactory(self.options_factory)
            self.options_factory = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
