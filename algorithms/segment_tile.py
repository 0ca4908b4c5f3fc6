"""Processing algorithm ``s2seg:segmenttile``: a whole Sentinel-2 tile → land cover + confidence rasters.

A thin adapter over :func:`s2seg.core.pipeline.segment`: Processing parameters
become an ``EngineConfig``, engine progress/log/cancel are bridged to the
feedback, engine errors become ``QgsProcessingException`` with the engine's
message. It touches no GUI, so the Toolbox dialog runs it as a background task
and ``qgis_process`` runs it as is; styled layers are loaded by Processing
afterwards through layer post-processors (main thread).
"""
from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, Optional

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputHtml,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterFile,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
)

from .common import S2SegAlgorithm


def is_model_child_step(context: QgsProcessingContext) -> bool:
    """True while the algorithm runs as a step of a graphical model.

    QgsProcessingModelAlgorithm gives each child an expression scope named
    ``algorithm_inputs`` (an untranslated name, unlike the "Model" scope).
    """
    return any(scope.name() == "algorithm_inputs" for scope in context.expressionContext().scopes())


#: Files that stand for the folder holding them when picked as the tile: a .SAFE's metadata, a band.
_TILE_MEMBER = re.compile(r"^(manifest\.safe|MTD_MSIL\w*\.xml|.*\.(jp2|tiff?))$", re.IGNORECASE)


def tile_path(value: str) -> str:
    """The tile the INPUT value names: a file picked inside a .SAFE or a band folder selects that folder."""
    path = Path(value)
    if path.is_file() and _TILE_MEMBER.match(path.name):
        from ..core.stack import is_multiband

        if not is_multiband(path):  # a stacked raster (GEE, SCP export) is the tile itself
            return str(path.parent)
    return value


def stack_layer_path(layer: Any) -> str:
    """The file a raster layer reads (its GDAL source): a layer that is not a file is refused, naming it."""
    source = layer.source()
    if layer.providerType() != "gdal" or not Path(source).is_file():
        raise QgsProcessingException(
            f"the raster layer {layer.name()!r} ({source}) is not a raster file s2seg can read (provider "
            f"{layer.providerType()}): save it as a GeoTIFF or VRT and choose that")
    return source


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first: what ``mkdir -p`` creates."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """After a failed run: remove the folders it created that are still empty (deepest first), so a
    failure leaves no empty output folder behind; a folder holding resumable chunks stays."""
    for folder in folders:
        try:
            folder.rmdir()  # only succeeds when empty
        except OSError:
            return


class SegmentTileAlgorithm(S2SegAlgorithm):
    """Segment a Sentinel-2 tile into land cover with per-pixel confidence."""

    INPUT = "INPUT"
    STACK_LAYER = "STACK_LAYER"

    CLASS = "CLASS"
    MAXPROB = "MAXPROB"
    ENTROPY = "ENTROPY"
    GAP = "GAP"
    PROBS = "PROBS"
    PREVIEW = "PREVIEW"
    REPORT = "REPORT"
    VECTOR_OUTPUT = "POLYGONS"
    STAC = "STAC"
    CLOUD_MASK_LAYER = "CLOUD_MASK_LAYER"

    #: Output name → engine product key.
    RASTER_OUTPUTS = {CLASS: "class", MAXPROB: "maxprob", ENTROPY: "entropy", GAP: "gap", PROBS: "probs",
                      CLOUD_MASK_LAYER: "mask"}

    def name(self) -> str:
        return "segmenttile"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return self.tr("Segment Sentinel-2 tile")

    def tags(self) -> list[str]:
        return self.tr(
            "sentinel,sentinel-2,s2,safe,land cover,landcover,classification,segmentation,"
            "deep learning,pytorch,uncertainty,confidence,entropy,corine,bigearthnet"
        ).split(",")

    def shortDescription(self) -> str:  # noqa: N802 - QGIS API
        return self.tr("Land cover and confidence rasters for a whole Sentinel-2 tile.")

    def help_html(self) -> str:
        return self.tr(
            "<p>Classifies every 10 m pixel of a Sentinel-2 tile into land-cover classes with a deep-learning "
            "model and tells you how sure the model is. The tile is processed in chunks, so memory stays bounded "
            "whatever its size; a GPU is used when PyTorch sees one.</p>"
            "<h3>Parameters</h3>"
            "<p><b>Sentinel-2 tile</b>: a .SAFE folder (Level-1C or Level-2A), the .zip it came in, the IMG_DATA "
            "folder of a granule, or a folder holding one file per band (…_B02.jp2, …_B03.tif …). With the … "
            "button pick the .zip, or the manifest.safe / MTD_MSIL*.xml of a .SAFE, or any band file of a band "
            "folder (the folder is used); a folder path can also be typed or pasted. Bands are recognised by "
            "name; the processing-baseline offset is applied. Also accepted: a stacked raster (one multi-band "
            "GeoTIFF/VRT at 10 m, as Google Earth Engine or SCP export it), a STAC item (.json file or http(s) "
            "URL; Earth Search, Planetary Computer) and a .txt file listing the http(s) URLs of band COGs (one "
            "per line, bands named by file: …/B02.tif); remote files are read by range requests, only the parts "
            "needed.</p>"
            "<p><b>or a stacked raster layer</b>: a multi-band raster loaded in QGIS (its file is read), instead "
            "of the tile above.</p>"
        ) + self.aoi_help() + self.engine_parameters_help() + self.pixel_parameters_help() + \
            self.output_parameters_help() + self.resume_help() + self.tr(
            "<p><b>Overwrite existing outputs</b>: replace the finished products of the same tile found in the "
            "output folder; unticked, the run stops and keeps them.</p>"
            "<p><b>Output folder</b>: where the files below are written, named after the tile. Several tiles "
            "can share one folder.</p>"
            "<h3>Outputs</h3>"
            "<p><b>Land cover</b> (…_class.tif): the most likely class of each pixel, with the class colours and "
            "names embedded; 255 = no data.</p>"
            "<p><b>Max probability</b> (…_maxprob.tif, 0–1): the probability of that class. Low values mean "
            "the model hesitates.</p>"
            "<p><b>Entropy</b> (…_entropy.tif, bits): how spread the probabilities are over all classes, from 0 "
            "(one class certain) to log₂ of the number of classes (all equally likely: 4.25 bits for 19 classes). "
            "High entropy marks mixed pixels, rare surfaces and conditions the model was not trained for "
            "(clouds, snow, haze).</p>"
        ) + self.mask_help() + self.tr(
            "<p><b>Gap</b> (…_gap.tif, 0–1): probability of the best class minus that of the second best. Below "
            "about 0.1 the pixel sits on a decision boundary between two classes: the map may as well have said "
            "the runner-up. Check these areas first.</p>"
            "<p><b>Class probabilities</b> (…_probs.tif, optional): one band per class, band names = class names.</p>"
            "<p><b>Land cover polygons</b> (…_landcover.gpkg, optional): see <i>Also write polygons</i>; it opens "
            "in the class colours.</p>"
            "<p><b>STAC item</b> (…_stac.json): the products described for catalogues and stackstac/odc-stac "
            "(footprint, sensing time, projection, classes, sizes and checksums).</p>"
            "<p><b>Preview</b> (…_preview.png): a quick-look of the map with its legend.</p>"
            "<p><b>Report</b> (…_report.html, opens from the Results Viewer): per class its area in km², its share "
            "of the valid area, its mean max probability and the share of its pixels with a gap below 0.1; "
            "plus device, model, timings and the preview.</p>"
            "<p>In QGIS the rasters load styled (class colours; red = uncertain on the confidence layers) in a "
            "group named after the tile. A .qml style next to each raster restores that styling when the file is "
            "opened later.</p>"
            "<p>In scripts and qgis_process give MODEL, DEVICE and RESUME by name (or by the option number "
            "qgis_process help lists), e.g. <code>qgis_process run s2seg:segmenttile -- INPUT=… MODEL=builtin "
            "DEVICE=cpu RESUME=auto OUTPUT_FOLDER=…</code></p>"
        )

    # --- parameters and outputs ---------------------------------------------------------------------
    def initAlgorithm(self, config: Optional[dict[str, Any]] = None) -> None:  # noqa: N802 - QGIS API
        # A file picker: it can choose a .zip, and a .SAFE folder or a folder of bands through a file
        # inside it (tile_path); a folder path can still be typed or pasted.
        self.addParameter(
            QgsProcessingParameterFile(
                self.INPUT,
                self.tr("Sentinel-2 tile (.SAFE folder or .zip, a folder of band files, a stacked raster, a STAC "
                        "item or a .txt list of band URLs)"),
                behavior=QgsProcessingParameterFile.File,
                fileFilter=self.tr(
                    "Sentinel-2 tiles (*.zip manifest.safe MTD_MSIL*.xml *.jp2 *.tif *.vrt *.json *.txt);;"
                    "All files (*)"
                ),
                optional=True,  # or STACK_LAYER
            )
        )
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.STACK_LAYER, self.tr("or a stacked raster layer (a multi-band GeoTIFF/VRT loaded in QGIS)"),
            optional=True))
        self.add_aoi_parameters()
        self.add_model_parameters()
        self.add_mask_parameters()
        self.add_engine_parameters()
        self.add_pixel_parameters()
        self.add_output_parameters()
        self.add_resume_parameter()
        self.add_overwrite_parameter(self.tr("Overwrite existing outputs"))
        self.add_output_folder_parameter()

        self.addOutput(QgsProcessingOutputRasterLayer(self.CLASS, self.tr("Land cover")))
        self.addOutput(QgsProcessingOutputRasterLayer(self.MAXPROB, self.tr("Max probability")))
        self.addOutput(QgsProcessingOutputRasterLayer(self.ENTROPY, self.tr("Entropy (bits)")))
        self.addOutput(QgsProcessingOutputRasterLayer(self.GAP, self.tr("Gap top-1 − top-2")))
        self.addOutput(QgsProcessingOutputRasterLayer(self.PROBS, self.tr("Class probabilities")))
        self.addOutput(QgsProcessingOutputVectorLayer(self.VECTOR_OUTPUT, self.tr("Land cover polygons")))
        self.addOutput(QgsProcessingOutputRasterLayer(self.CLOUD_MASK_LAYER, self.tr("Clouds, shadows and snow")))
        self.addOutput(QgsProcessingOutputFile(self.STAC, self.tr("STAC item")))
        self.addOutput(QgsProcessingOutputFile(self.PREVIEW, self.tr("Preview image")))
        self.addOutput(QgsProcessingOutputHtml(self.REPORT, self.tr("Segmentation report")))

    # --- running --------------------------------------------------------------------------------------
    def processAlgorithm(  # noqa: N802 - QGIS API
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        # First thing, before importing the engine: a missing torch is reported with the command that fixes it.
        self.check_dependencies()

        from ..core.errors import S2SegError
        from ..core.pipeline import segment
        from ..s2seg_plugin.feedback_bridge import EngineBridge
        from ..s2seg_plugin.report import write_html_report
        from ..s2seg_plugin.styling import Legend, write_qml_sidecars

        tile = self._tile(parameters, context)
        model = self.model_parameter(parameters, context)
        # Never replace finished products silently (two products of one scene, L1C and L2A, may share a
        # folder): only when the user ticks OVERWRITE.
        config = self.engine_config(
            parameters, context, overwrite=self.parameterAsBoolean(parameters, self.OVERWRITE, context),
        )
        # Evaluate once: with TEMPORARY_OUTPUT every call would invent a new folder.
        output_dir = Path(self.parameterAsString(parameters, self.OUTPUT_FOLDER, context))
        created = missing_folders(output_dir)
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QgsProcessingException(
                self.tr("Cannot create the output folder {}: {}").format(output_dir, exc.strerror or exc)
            ) from exc

        feedback.pushInfo(self.tr("Tile: {}").format(tile))
        feedback.pushInfo(self.tr("Model: {}").format(model))
        feedback.pushInfo(self.tr("Output folder: {}").format(output_dir))

        bridge = EngineBridge(feedback)
        try:
            self.download_model(model, feedback)  # progress and Cancel of its own, before the run's
            result = bridge.run(
                lambda progress, cancel, log: segment(
                    tile, output_dir, model=model, config=config, progress=progress, cancel=cancel, log=log
                )
            )
        except S2SegError as exc:  # Cancelled too: its message already says what was kept, add nothing
            remove_empty_folders(created)
            raise self.engine_error(exc) from exc
        except BaseException:
            remove_empty_folders(created)
            raise

        feedback.pushInfo(
            self.tr("Segmented {} with model {} on {} in {:.1f} s ({} chunk(s) of {} px).").format(
                result.tile_name, result.model_name, result.device, result.seconds, result.n_chunks, result.chunk_size
            )
        )
        if result.resumed_chunks:
            feedback.pushInfo(
                self.tr("Resumed an interrupted run: {} of {} chunk(s) were already written.").format(
                    result.resumed_chunks, result.n_chunks
                )
            )
        legend = Legend.from_card(result.card)
        products = {key: Path(path) for key, path in result.products.items()}
        write_qml_sidecars(products, legend)
        try:
            report = write_html_report(result)
        except OSError as exc:
            raise QgsProcessingException(
                self.tr("Cannot write the report in {}: {}").format(output_dir, exc.strerror or exc)
            ) from exc

        results: dict[str, Any] = {
            self.OUTPUT_FOLDER: str(output_dir),
            self.PREVIEW: str(result.preview),
            self.REPORT: str(report),
        }
        for output, product in self.RASTER_OUTPUTS.items():
            if product in products:
                results[output] = str(products[product])
        for output, key in ((self.VECTOR_OUTPUT, "vector"), (self.STAC, "stac")):
            if key in result.outputs:
                results[output] = str(result.outputs[key])
        self._load_on_completion(context, results, result.tile_name, result.model_name, legend)
        return results

    def _tile(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        """INPUT (a path or URL) or the file of the STACK_LAYER raster layer: one of them."""
        typed = self.parameterAsFile(parameters, self.INPUT, context)
        layer = self.parameterAsRasterLayer(parameters, self.STACK_LAYER, context)
        if typed and layer is not None:
            raise QgsProcessingException(self.tr("Give either a tile (INPUT) or a stacked raster layer "
                                                 "(STACK_LAYER), not both."))
        if layer is not None:
            return stack_layer_path(layer)
        if not typed:
            raise QgsProcessingException(self.tr("No Sentinel-2 tile given (parameter INPUT or STACK_LAYER)."))
        return tile_path(typed)

    def _load_on_completion(
        self,
        context: QgsProcessingContext,
        results: dict[str, Any],
        tile_name: str,
        model_name: str,
        legend: Any,
    ) -> None:
        """Ask Processing to load the rasters when it finishes, styled and grouped by post-processors.

        Only the dialog and ``runAndLoadResults`` act on this list (on the main thread); ``processing.run``
        and ``qgis_process`` ignore it, so registering here is harmless everywhere.
        """
        from ..s2seg_plugin.styling import make_styler, product_layer_names

        project = context.project()
        if project is None:
            return
        if is_model_child_step(context):
            # A step of a graphical model: only the model's declared outputs load. Our rasters are plain
            # outputs, so a "Load layer into project" step loads them on demand, as for core algorithms.
            return
        names = product_layer_names()
        run_id = uuid.uuid4().hex  # one layer-tree group per run, even for the same tile
        for output, product in self.RASTER_OUTPUTS.items():
            path = results.get(output)
            if not path:
                continue
            name = names[product] if product != "class" else f"{names[product]} ({model_name})"
            details = QgsProcessingContext.LayerDetails(name, project, output, QgsProcessingUtils.LayerHint.Raster)
            details.forceName = True  # the group carries the tile name; keep the short product names
            report = str(results.get(self.REPORT, "")) if product == "class" else ""
            details.setPostProcessor(make_styler(product, legend, tile_name, run_id, report))
            context.addLayerToLoadOnCompletion(path, details)
        polygons = results.get(self.VECTOR_OUTPUT)
        if polygons:  # styled by the class colours stored in the GeoPackage as its default style (vectorize.py)
            details = QgsProcessingContext.LayerDetails(self.tr("Land cover polygons"), project,
                                                        self.VECTOR_OUTPUT, QgsProcessingUtils.LayerHint.Vector)
            details.forceName = True
            details.setPostProcessor(make_styler("vector", legend, tile_name, run_id))
            context.addLayerToLoadOnCompletion(polygons, details)
