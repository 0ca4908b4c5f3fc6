"""Graphical-model helpers shared by the plugin tests."""
from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingModelAlgorithm


def saved_and_reloaded(model: QgsProcessingModelAlgorithm, path: Path) -> QgsProcessingModelAlgorithm:
    """``model`` validated, saved as a .model3 file at ``path`` and read back, as a user's saved model runs."""
    ok, errors = model.validate()
    assert ok, errors
    assert model.toFile(str(path))
    loaded = QgsProcessingModelAlgorithm()
    assert loaded.fromFile(str(path))
    return loaded
