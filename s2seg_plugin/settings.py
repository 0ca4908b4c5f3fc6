"""The plugin's settings (Settings ▸ Options ▸ S2Seg), stored in the QGIS profile.

One dataclass, one key per field: the options page, ``s2seg:setup`` and
``s2seg:diagnose`` read and write them through :func:`load` and :func:`save`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..core.config import DEVICES

#: QgsSettings group of every key below.
GROUP = "s2seg"
#: Field name → key under :data:`GROUP`.
KEYS = {
    "environment": "environment",
    "default_device": "defaultDevice",
    "model_cache": "modelCache",
    "default_output_folder": "defaultOutputFolder",
}


@dataclass
class PluginSettings:
    """What a user can set once for every run."""

    #: Virtual environment whose site-packages the plugin adds to ``sys.path`` at load, after QGIS's
    #: own (made by ``s2seg:setup``, or one the user made). Empty: none.
    environment: str = ""
    #: Device offered first by the algorithms (one of the engine's ``DEVICES``).
    default_device: str = "auto"
    #: Where downloaded model weights are kept (Hugging Face cache); empty: the library's default.
    model_cache: str = ""
    #: Output folder proposed by the algorithms; empty: a temporary folder.
    default_output_folder: str = ""

    def __post_init__(self) -> None:
        if self.default_device not in DEVICES:
            self.default_device = "auto"  # a stale or hand-edited value must not break the dialogs


def default_environment() -> Path:
    """Where ``s2seg:setup`` creates the environment: inside the active QGIS profile."""
    from qgis.core import QgsApplication

    return Path(QgsApplication.qgisSettingsDirPath()) / "python" / "s2seg-env"


def load() -> PluginSettings:
    from qgis.core import QgsSettings

    settings = QgsSettings()
    values = {f.name: settings.value(f"{GROUP}/{KEYS[f.name]}", f.default, type=str) or f.default
              for f in fields(PluginSettings)}
    return PluginSettings(**values)


def save(values: PluginSettings) -> None:
    from qgis.core import QgsSettings

    settings = QgsSettings()
    for name, value in asdict(values).items():
        settings.setValue(f"{GROUP}/{KEYS[name]}", value)
