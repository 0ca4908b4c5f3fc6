"""Processing algorithm ``s2seg:stratifiedsample``: a stratified random sample of a segmented tile to label.

A thin adapter over :func:`s2seg.core.accuracy.design.sample_design`. The GeoPackage carries its
own default QGIS style (:mod:`s2seg.core.accuracy.style`): points to label show as hollow red
circles, labelled ones green, whether Processing loads the layer or a user opens the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)

from .common import S2SegAlgorithm

_ACCURACY_GROUP = ("accuracy", "Accuracy assessment")


class AccuracyAlgorithm(S2SegAlgorithm):
    """Base of the two accuracy algorithms: their own Toolbox group."""

    def group(self) -> str:
        return self.tr(_ACCURACY_GROUP[1])

    def groupId(self) -> str:  # noqa: N802 - QGIS API
        return _ACCURACY_GROUP[0]


class SampleDesignAlgorithm(AccuracyAlgorithm):
    """Draw a stratified random sample of a segmented tile for accuracy and area assessment."""

    PRODUCTS = "PRODUCTS"
    TILE = "TILE"
    SIZE = "SIZE"
    TARGET_SE = "TARGET_SE"
    TARGET_SE_USERS = "TARGET_SE_USERS"
    MINIMUM = "MINIMUM"
    CONFIDENCE = "CONFIDENCE"
    THRESHOLD = "THRESHOLD"
    SEED = "SEED"
    OUTPUT = "OUTPUT"
    SAMPLE = "SAMPLE"

    def name(self) -> str:
        # Ids sort after "segmenttile(s)", which qgis_process lists first under S2Seg (tests rely on it).
        return "stratifiedsample"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return self.tr("Sample design for accuracy assessment")

    def tags(self) -> list[str]:
        return self.tr("accuracy,validation,sample,stratified,olofsson,reference,area,confidence interval").split(",")

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return self.tr(
            "<p>Draws a stratified random sample of a segmented tile, to label against imagery and then assess "
            "with <i>Assess accuracy and area</i> (Olofsson et al. 2014, good practices).</p>"
            "<p><b>Products folder</b>: the output folder of <i>Segment Sentinel-2 tile</i>. <b>Tile</b>: only "
            "needed when the folder holds several tiles.</p>"
            "<p><b>Strata</b>: the map classes; with a <b>confidence split</b> each class is split into confident "
            "and uncertain pixels (gap below, or entropy above, the <b>threshold</b>), so the sample finds the "
            "errors sooner and the intervals get narrower.</p>"
            "<p><b>Sample size</b>: 0 = computed from the <b>target standard error</b> of overall accuracy "
            "(Olofsson et al. 2014 eq. 13). Every stratum gets at least the <b>minimum</b> points, the rest are "
            "shared in proportion to area; a <b>target standard error of user's accuracy</b> then raises each "
            "stratum to the points it needs for that (SE² = U(1 − U)/(n − 1)). The <b>seed</b> makes the draw "
            "reproducible. No-data pixels are never drawn.</p>"
            "<p><b>Output</b>: a GeoPackage with the points (pixel centres; stratum, map class, max probability, "
            "gap, entropy and an empty <code>reference</code> field), the strata with their areas, and the design. "
            "Fill <code>reference</code> with the class you see (its name or code): points still to label show "
            "as hollow red circles.</p>"
        )

    def initAlgorithm(self, config: Optional[dict[str, Any]] = None) -> None:  # noqa: N802 - QGIS API
        from ..core.accuracy.config import CONFIDENCE_MEASURES, DesignConfig

        defaults = DesignConfig()
        self.addParameter(QgsProcessingParameterFile(self.PRODUCTS, self.tr("Products folder (of a segment run)"),
                                                     behavior=QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterString(self.TILE, self.tr("Tile (when the folder holds several)"),
                                                       optional=True))
        self.add_static_enum(self.CONFIDENCE, self.tr("Confidence split of each class"), list(CONFIDENCE_MEASURES),
                             defaults.confidence)
        self.addParameter(QgsProcessingParameterNumber(self.THRESHOLD, self.tr("Uncertain below this gap / above "
                                                                               "this entropy (bits)"),
                                                       QgsProcessingParameterNumber.Double, defaults.threshold,
                                                       minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(self.SIZE, self.tr("Sample size (0 = from the target "
                                                                          "standard error)"),
                                                       QgsProcessingParameterNumber.Integer, defaults.total, minValue=0))
        self.addParameter(QgsProcessingParameterNumber(self.TARGET_SE, self.tr("Target standard error of overall "
                                                                               "accuracy"),
                                                       QgsProcessingParameterNumber.Double, defaults.target_se,
                                                       minValue=0.0001, maxValue=0.5))
        self.addParameter(QgsProcessingParameterNumber(self.TARGET_SE_USERS, self.tr("Target standard error of "
                                                                                     "user's accuracy (0 = off)"),
                                                       QgsProcessingParameterNumber.Double, defaults.target_se_users,
                                                       minValue=0.0, maxValue=0.5))
        self.addParameter(QgsProcessingParameterNumber(self.MINIMUM, self.tr("Minimum points per stratum"),
                                                       QgsProcessingParameterNumber.Integer, defaults.minimum,
                                                       minValue=0))
        self.addParameter(QgsProcessingParameterNumber(self.SEED, self.tr("Random seed"),
                                                       QgsProcessingParameterNumber.Integer, defaults.seed))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, self.tr("Sample points"),
                                                                self.tr("GeoPackage (*.gpkg)")))
        self.addOutput(QgsProcessingOutputVectorLayer(self.SAMPLE, self.tr("Sample points layer")))

    def processAlgorithm(  # noqa: N802 - QGIS API
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        from ..core.accuracy.config import SAMPLE_LAYER, DesignConfig
        from ..core.accuracy.design import sample_design
        from ..core.errors import S2SegError

        products = self.parameterAsFile(parameters, self.PRODUCTS, context)
        if not products:
            raise QgsProcessingException(self.tr("No products folder given (parameter PRODUCTS)."))
        out = Path(self.parameterAsFileOutput(parameters, self.OUTPUT, context))
        try:
            config = DesignConfig(
                total=self.parameterAsInt(parameters, self.SIZE, context),
                target_se=self.parameterAsDouble(parameters, self.TARGET_SE, context),
                target_se_users=self.parameterAsDouble(parameters, self.TARGET_SE_USERS, context),
                minimum=self.parameterAsInt(parameters, self.MINIMUM, context),
                confidence=self.parameterAsString(parameters, self.CONFIDENCE, context),
                threshold=self.parameterAsDouble(parameters, self.THRESHOLD, context),
                seed=self.parameterAsInt(parameters, self.SEED, context),
            )
            # Processing's convention: the user chose the destination, so it is replaced.
            design = sample_design(Path(products), out, config, tile=self.parameterAsString(parameters, self.TILE,
                                                                                           context) or None,
                                   overwrite=True, progress=lambda f, m: feedback.setProgress(100 * f))
        except S2SegError as exc:
            raise QgsProcessingException(str(exc)) from exc
        for message in design.messages:
            feedback.pushInfo(message)
        for s in design.strata:
            feedback.pushInfo(self.tr("{}: {} of {} pixels").format(s.name, s.sample, s.pixels))
        layer_uri = f"{out}|layername={SAMPLE_LAYER}"
        project = context.project()
        if project is not None:
            details = QgsProcessingContext.LayerDetails(self.tr("Sample points ({})").format(design.products.tile),
                                                        project, self.SAMPLE, QgsProcessingUtils.LayerHint.Vector)
            context.addLayerToLoadOnCompletion(layer_uri, details)
        return {self.OUTPUT: str(out), self.SAMPLE: layer_uri}
