"""Processing algorithm ``s2seg:validate``: accuracy and error-adjusted areas from a labelled sample.

A thin adapter over :func:`s2seg.core.accuracy.assess.assess`: the HTML report opens from
the Results Viewer, the JSON report is written beside it, and the per-class estimates
also come out as a table layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from qgis.core import (
    QgsFeature,
    QgsProcessing,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterString,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant

from .sample_design import AccuracyAlgorithm

#: Columns of the estimates table, one row per class (areas in hectares).
_COLUMNS = ("code", "class", "mapped_ha", "area_ha", "area_se_ha", "area_ci_low_ha", "area_ci_high_ha",
            "users_acc", "users_se", "producers_acc", "producers_se")


class AssessAlgorithm(AccuracyAlgorithm):
    """Estimate accuracy and class areas with confidence intervals from a labelled sample design."""

    PRODUCTS = "PRODUCTS"
    SAMPLE = "SAMPLE"
    REFERENCE_FIELD = "REFERENCE_FIELD"
    OUTPUT_HTML = "OUTPUT_HTML"
    OUTPUT_JSON = "OUTPUT_JSON"
    ESTIMATES = "ESTIMATES"
    OVERALL = "OVERALL_ACCURACY"

    def name(self) -> str:
        return "validate"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return self.tr("Assess accuracy and area")

    def tags(self) -> list[str]:
        return self.tr("accuracy,validation,error matrix,area,olofsson,stehman,confidence interval").split(",")

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return self.tr(
            "<p>From a sample drawn by <i>Sample design for accuracy assessment</i> whose points you labelled, "
            "estimates the error matrix in area proportions, overall, user's and producer's accuracy, and the "
            "error-adjusted area of every class, each with its standard error and 95 % confidence interval "
            "(Olofsson et al. 2014; Stehman 2014 when the strata are class × confidence).</p>"
            "<p><b>Reference field</b>: the field holding your labels, a class name or code. Points with an empty "
            "or unknown label are listed in the log and report and left out.</p>"
            "<p><b>Outputs</b>: an HTML report (Results Viewer) with the matrix, the accuracies and mapped "
            "against estimated areas as a table and a chart; the same as JSON; and the per-class estimates as a "
            "table layer (areas in hectares).</p>"
        )

    def initAlgorithm(self, config: Optional[dict[str, Any]] = None) -> None:  # noqa: N802 - QGIS API
        from ..core.accuracy.config import REFERENCE_FIELD

        self.addParameter(QgsProcessingParameterFile(self.PRODUCTS, self.tr("Products folder (of the segment run)"),
                                                     behavior=QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterFile(self.SAMPLE, self.tr("Labelled sample (.gpkg)"),
                                                     extension="gpkg"))
        self.addParameter(QgsProcessingParameterString(self.REFERENCE_FIELD, self.tr("Reference field"),
                                                       REFERENCE_FIELD))
        self.addParameter(QgsProcessingParameterFeatureSink(self.ESTIMATES, self.tr("Area and accuracy estimates"),
                                                            type=QgsProcessing.TypeVector))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_HTML, self.tr("Assessment report"),
                                                                self.tr("HTML files (*.html)")))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_JSON, self.tr("Assessment (JSON)"),
                                                                self.tr("JSON files (*.json)")))
        self.addOutput(QgsProcessingOutputNumber(self.OVERALL, self.tr("Overall accuracy")))

    def processAlgorithm(  # noqa: N802 - QGIS API
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        from ..core.accuracy.assess import assess
        from ..core.accuracy.report import HECTARE, write_reports
        from ..core.errors import S2SegError

        products = self.parameterAsFile(parameters, self.PRODUCTS, context)
        sample = self.parameterAsFile(parameters, self.SAMPLE, context)
        field = self.parameterAsString(parameters, self.REFERENCE_FIELD, context)
        html_path = Path(self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context))
        json_path = Path(self.parameterAsFileOutput(parameters, self.OUTPUT_JSON, context))
        try:
            result = assess(Path(products), Path(sample), reference_field=field)
            write_reports(result, html_path, json_path)
        except S2SegError as exc:
            raise QgsProcessingException(str(exc)) from exc
        a = result.assessment
        for message in a.messages:
            feedback.pushWarning(message)
        low, high = a.overall.ci95
        feedback.pushInfo(self.tr("Overall accuracy {:.3f} (95 % interval {:.3f}–{:.3f}) from {} labelled points").format(
            a.overall.value, low, high, a.n_units))

        fields = QgsFields()
        for name in _COLUMNS:
            fields.append(QgsField(name, QVariant.String if name == "class" else
                                   QVariant.Int if name == "code" else QVariant.Double))
        sink, dest = self.parameterAsSink(parameters, self.ESTIMATES, context, fields, QgsWkbTypes.NoGeometry)
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.ESTIMATES))
        for code, name, mapped, area, users, producers in zip(a.classes, a.class_names, a.mapped_areas, a.areas,
                                                               a.users, a.producers):
            low, high = area.ci95
            feature = QgsFeature(fields)
            feature.setAttributes([code, name, mapped / HECTARE, area.value / HECTARE, area.se / HECTARE,
                                   low / HECTARE, high / HECTARE, users.value, users.se, producers.value,
                                   producers.se])
            sink.addFeature(feature, QgsFeatureSink.FastInsert)
        return {self.ESTIMATES: dest, self.OUTPUT_HTML: str(html_path), self.OUTPUT_JSON: str(json_path),
                self.OVERALL: a.overall.value}

