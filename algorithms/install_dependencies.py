"""Processing algorithm ``s2seg:setup``: install the engine's dependencies (torch …) without a terminal.

Creates (or repairs) a virtual environment owned by the plugin from QGIS's own
interpreter, installs torch (the CUDA build when ``nvidia-smi`` finds an NVIDIA
GPU, else the CPU build) and the other packages into it, records it in the
settings and puts it on ``sys.path`` at once. Run from the Processing dialog
(Plugins ▸ S2Seg ▸ Install dependencies…) it is a background task with progress,
log and Cancel; ``qgis_process run s2seg:setup`` works too.
"""
from __future__ import annotations

import importlib
from typing import Any, Optional

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputFolder,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFile,
    QgsProcessingParameterString,
)

from .common import S2SegAlgorithm

#: TORCH_BUILD options: decide from nvidia-smi, or force one.
TORCH_BUILDS = ("auto", "cpu", "cuda")


class SetupAlgorithm(S2SegAlgorithm):
    """Install or repair s2seg's Python environment."""

    ENVIRONMENT = "ENVIRONMENT"
    TORCH_BUILD = "TORCH_BUILD"
    UPGRADE = "UPGRADE"
    PACKAGES = "PACKAGES"
    INDEX_URL = "INDEX_URL"
    PYTHON = "PYTHON"

    def name(self) -> str:
        return "setup"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return self.tr("Install dependencies (PyTorch …)")

    def group(self) -> str:
        return self.tr("Setup")

    def groupId(self) -> str:  # noqa: N802 - QGIS API
        return "setup"

    def help_html(self) -> str:
        return self.tr(
            "<p>Installs what s2seg needs (PyTorch and a few other packages) into a Python environment that "
            "belongs to the plugin, made from QGIS's own Python: no terminal, no administrator rights, QGIS's own "
            "files untouched. QGIS's numpy, GDAL and rasterio stay in use. Several hundred megabytes are "
            "downloaded; the log shows each step, and Cancel stops it (run it again to finish).</p>"
            "<p><b>Environment folder</b>: empty = <code>python/s2seg-env</code> in the QGIS profile. Give the "
            "folder of an existing environment to repair it.</p>"
            "<p><b>PyTorch build</b>: <i>auto</i> installs the CUDA build when an NVIDIA GPU is found "
            "(nvidia-smi), else the CPU build.</p>"
            "<p><b>Upgrade</b>: also upgrade packages already installed (otherwise a re-run only installs what "
            "is missing).</p>"
            "<p><b>Packages</b> (advanced): install these instead of s2seg's list (separated by spaces).</p>"
            "<p><b>Package index</b> (advanced): an index that replaces PyPI and pip's own configuration, e.g. a "
            "company mirror (<code>https://…/simple</code> or a local folder).</p>"
            "<p>When it finishes the packages are usable at once; the environment is remembered in "
            "Settings ▸ Options ▸ S2Seg.</p>"
        )

    def initAlgorithm(self, config: Optional[dict[str, Any]] = None) -> None:  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterFile(
            self.ENVIRONMENT, self.tr("Environment folder (empty = in the QGIS profile)"),
            behavior=QgsProcessingParameterFile.Folder, optional=True))
        self.add_static_enum(self.TORCH_BUILD, self.tr("PyTorch build"), list(TORCH_BUILDS), "auto")
        self.addParameter(QgsProcessingParameterBoolean(self.UPGRADE, self.tr("Upgrade installed packages"),
                                                        defaultValue=False))
        for name, label in ((self.PACKAGES, self.tr("Packages (empty = what s2seg needs)")),
                            (self.INDEX_URL, self.tr("Package index replacing PyPI (empty = PyPI)"))):
            self.add_advanced(QgsProcessingParameterString(name, label, optional=True))
        self.addOutput(QgsProcessingOutputFolder(self.ENVIRONMENT, self.tr("Environment folder")))
        self.addOutput(QgsProcessingOutputFile(self.PYTHON, self.tr("Environment's Python")))

    def processAlgorithm(  # noqa: N802 - QGIS API
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        from ..core.errors import Cancelled
        from ..s2seg_plugin import environment, installer, settings

        folder = self.parameterAsFile(parameters, self.ENVIRONMENT, context) or str(settings.default_environment())
        build = self.enum_string(parameters, self.TORCH_BUILD, context) or "auto"
        cuda = installer.driver_cuda_version() if build != "cpu" else None
        if build == "cuda" and cuda is None:
            raise QgsProcessingException(self.tr(
                "PyTorch build 'cuda' was chosen but nvidia-smi finds no NVIDIA GPU; choose auto or cpu."))
        packages = tuple((self.parameterAsString(parameters, self.PACKAGES, context) or "").split())
        try:
            plan = installer.make_plan(
                folder, packages or installer.RUNTIME_PACKAGES,
                index_url=(self.parameterAsString(parameters, self.INDEX_URL, context) or "").strip(),
                cuda=cuda, upgrade=self.parameterAsBoolean(parameters, self.UPGRADE, context))
        except FileNotFoundError as exc:
            raise QgsProcessingException(str(exc)) from exc
        feedback.pushInfo(self.tr("Environment: {} (made from {})").format(plan.environment, plan.base_python))
        feedback.pushInfo(self.tr("PyTorch from: {}").format(plan.index_url or plan.torch_index))
        try:
            python = installer.run_install(plan, log=feedback.pushConsoleInfo,
                                           progress=lambda f: feedback.setProgress(100 * f),
                                           cancelled=feedback.isCanceled)
        except Cancelled as exc:
            raise QgsProcessingException(self.tr(
                "Cancelled: {} may be incomplete and is not used; run Install dependencies again to finish it."
            ).format(plan.environment)) from exc
        except installer.InstallError as exc:
            raise QgsProcessingException(self.tr(
                "Installing the dependencies failed; QGIS is unchanged and the environment is not used.\n{}"
            ).format(exc)) from exc
        stored = settings.load()
        stored.environment = str(plan.environment)
        settings.save(stored)
        added = environment.append_environment(plan.environment)
        importlib.invalidate_caches()  # a folder already on sys.path gained packages: forget its old listing
        feedback.pushInfo(self.tr("Done: s2seg uses {} (added to Python's path: {}).").format(
            plan.environment, ", ".join(added) or self.tr("already there")))
        return {self.ENVIRONMENT: str(plan.environment), self.PYTHON: str(python)}
