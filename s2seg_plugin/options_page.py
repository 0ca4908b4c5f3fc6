"""Settings ▸ Options ▸ S2Seg: environment, default device, model cache and default output folder.

The page edits :class:`.settings.PluginSettings`; "Apply"/"OK" saves it and puts a
newly chosen environment on ``sys.path`` at once (after QGIS's own packages).
"""
from __future__ import annotations

from typing import Optional

from qgis.gui import QgsFileWidget, QgsOptionsPageWidget, QgsOptionsWidgetFactory
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QComboBox, QFormLayout, QLabel, QWidget

from ..core.config import DEVICES
from . import ICON_PATH, environment, settings


def tr(text: str) -> str:
    return QCoreApplication.translate("S2SegOptions", text)


def _folder_widget(value: str) -> QgsFileWidget:
    widget = QgsFileWidget()
    widget.setStorageMode(QgsFileWidget.GetDirectory)
    widget.setFilePath(value)
    return widget


class S2SegOptionsPage(QgsOptionsPageWidget):
    """The form; :meth:`apply` is called by the Options dialog."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        current = settings.load()
        layout = QFormLayout(self)
        self.environment = _folder_widget(current.environment)
        self.device = QComboBox()
        self.device.addItems(list(DEVICES))
        self.device.setCurrentText(current.default_device)
        self.model_cache = _folder_widget(current.model_cache)
        self.output_folder = _folder_widget(current.default_output_folder)
        layout.addRow(QLabel(tr(
            "An environment made by Plugins ▸ S2Seg ▸ Install dependencies… is filled in here; you may also "
            "point to a virtual environment of your own (made with --system-site-packages from QGIS's Python).")))
        layout.addRow(tr("Python environment"), self.environment)
        layout.addRow(tr("Default device"), self.device)
        layout.addRow(tr("Model cache folder"), self.model_cache)
        layout.addRow(tr("Default output folder"), self.output_folder)

    def values(self) -> settings.PluginSettings:
        return settings.PluginSettings(
            environment=self.environment.filePath().strip(),
            default_device=self.device.currentText(),
            model_cache=self.model_cache.filePath().strip(),
            default_output_folder=self.output_folder.filePath().strip(),
        )

    def apply(self) -> None:
        values = self.values()
        settings.save(values)
        if values.environment:
            environment.append_environment(values.environment)


class S2SegOptionsFactory(QgsOptionsWidgetFactory):
    """Registered by the plugin with ``iface.registerOptionsWidgetFactory``."""

    def __init__(self) -> None:
        super().__init__()
        self.setTitle("S2Seg")
        self.setIcon(QIcon(str(ICON_PATH)))

    def createWidget(self, parent: Optional[QWidget] = None) -> S2SegOptionsPage:  # noqa: N802 - QGIS API
        return S2SegOptionsPage(parent)
