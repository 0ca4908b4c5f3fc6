"""Processing algorithm ``s2seg:diagnose``: an HTML report to attach to a bug report.

Versions (QGIS, Python, GDAL, torch, ONNX Runtime, Numba …), the device torch
sees, the paths s2seg uses, and a self-test that segments a tiny synthetic tile
end to end. It runs even when torch is missing: that is when it is needed most.
"""
from __future__ import annotations

from typing import Any, Optional

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputHtml,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFileDestination,
)

from ..core.config import DEVICES
from .common import DEFAULT_DEVICE, S2SegAlgorithm


class DiagnoseAlgorithm(S2SegAlgorithm):
    """Report the environment and run the self-test."""

    SELF_TEST = "SELF_TEST"
    OUTPUT = "OUTPUT"

    def name(self) -> str:
        return "diagnose"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return self.tr("Diagnostics and self-test")

    def group(self) -> str:
        return self.tr("Setup")

    def groupId(self) -> str:  # noqa: N802 - QGIS API
        return "setup"

    def help_html(self) -> str:
        return self.tr(
            "<p>Writes an HTML report to attach to a bug report: the versions of QGIS, Python, GDAL, PyTorch, "
            "ONNX Runtime and Numba, the device PyTorch sees (GPU name, memory, CUDA version), the folders s2seg "
            "uses, and — with <b>Run the self-test</b> — the result of segmenting a small synthetic tile "
            "(240 × 240 px) end to end on the chosen <b>Device</b>.</p>"
            "<p>It runs without PyTorch too, and then says what is missing.</p>"
        )

    def initAlgorithm(self, config: Optional[dict[str, Any]] = None) -> None:  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterBoolean(self.SELF_TEST, self.tr("Run the self-test"),
                                                        defaultValue=True))
        self.add_static_enum(self.DEVICE, self.tr("Device"), list(DEVICES), DEFAULT_DEVICE, advanced=True)
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT, self.tr("Report"), fileFilter=self.tr("HTML files (*.html)")))
        self.addOutput(QgsProcessingOutputHtml(self.OUTPUT, self.tr("Report")))

    def processAlgorithm(  # noqa: N802 - QGIS API
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        from ..s2seg_plugin import diagnostics, environment, settings
        from ..s2seg_plugin.dependencies import missing_dependencies_message

        stored = settings.load()
        sections = [diagnostics.software(), diagnostics.device(), diagnostics.paths({
            "Environment (settings)": stored.environment,
            "Extra Python folders (make install)": "; ".join(environment.configured_paths()),
            "Model cache (settings)": stored.model_cache,
            "Default output folder (settings)": stored.default_output_folder,
        })]
        missing = missing_dependencies_message()
        if missing:
            sections.append(diagnostics.Section("Missing dependencies", [("", missing)], ok=False))
        for section in sections:
            for key, value in section.rows:
                feedback.pushInfo(f"{section.title} · {key}: {value}" if key else value)
        if self.parameterAsBoolean(parameters, self.SELF_TEST, context):
            if missing:
                sections.append(diagnostics.Section("Self-test", [("Result", "skipped: dependencies missing")],
                                                    ok=False))
            else:
                feedback.pushInfo(self.tr("Self-test: segmenting a {0} × {0} px synthetic tile…").format(
                    diagnostics.SELF_TEST_SIZE))
                device = self.enum_string(parameters, self.DEVICE, context) or DEFAULT_DEVICE
                sections.append(diagnostics.self_test(device))
                for key, value in sections[-1].rows:
                    if key != "Traceback":
                        feedback.pushInfo(f"Self-test · {key}: {value}")
        report = diagnostics.write_report(self.parameterAsFileOutput(parameters, self.OUTPUT, context), sections)
        problems = [s.title for s in sections if not s.ok]
        if problems:
            feedback.reportError(self.tr("Problems found in: {}").format(", ".join(problems)), False)
        return {self.OUTPUT: str(report)}
