"""Processing algorithm ``s2seg:segmenttiles``: many Sentinel-2 tiles, one Dask task each.

The same runner as ``s2seg batch`` (:func:`s2seg.core.batch.run_batch`): every tile is
segmented by the engine into ``OUTPUT_FOLDER/<tile name>/`` on a Dask local cluster,
or on an existing cluster when SCHEDULER is given. Failed tiles are reported and the
others go on; complete tiles are skipped on a re-run, interrupted ones resumed.

The tiles are a multi-line string (one path, glob or ``@list.txt`` per line) plus an
optional list file: ``QgsProcessingParameterMultipleLayers`` (type File) only adds files,
and its "Add Directory…" adds the files *inside* a folder, so .SAFE folders could not be
chosen; ``QgsProcessingParameterMatrix`` makes the user type every path into a table
cell and has no model-input widget in the 3.22 modeler. A String is a model input type,
can be fed by an expression or another algorithm's string output, and takes
``INPUTS='a.SAFE;b.zip'`` in qgis_process and a Python list in ``processing.run``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputHtml,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterString,
)

from .common import S2SegAlgorithm


def split_tiles(value: Any) -> list[str]:
    """INPUTS as given: a list (Python), or text with one entry per line or separated by ``;``."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).replace(";", "\n").splitlines()
    return [str(item).strip() for item in items if str(item).strip()]


class SegmentTilesAlgorithm(S2SegAlgorithm):
    """Segment many Sentinel-2 tiles, one Dask task per tile."""

    INPUTS = "INPUTS"
    TILE_LIST = "TILE_LIST"
    SCHEDULER = "SCHEDULER"
    WORKERS = "WORKERS"
    THREADS_PER_WORKER = "THREADS_PER_WORKER"

    SUMMARY = "SUMMARY"
    OK = "OK"
    SKIPPED = "SKIPPED"
    FAILED = "FAILED"

    def name(self) -> str:
        return "segmenttiles"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return self.tr("Segment Sentinel-2 tiles (batch)")

    def tags(self) -> list[str]:
        return self.tr(
            "sentinel,sentinel-2,s2,safe,land cover,landcover,classification,segmentation,batch,many tiles,"
            "dask,distributed,cluster,deep learning,pytorch,uncertainty"
        ).split(",")

    def shortDescription(self) -> str:  # noqa: N802 - QGIS API
        return self.tr("Land cover and confidence rasters for many Sentinel-2 tiles, in parallel with Dask.")

    def help_html(self) -> str:
        return self.tr(
            "<p>Runs <i>Segment Sentinel-2 tile</i> on many tiles at once, one Dask task per tile, on this "
            "computer (a local cluster: one worker per GPU, or the CPU cores shared between workers) or on an "
            "existing Dask cluster. A tile that fails is reported with its error and the others go on.</p>"
            "<h3>Parameters</h3>"
            "<p><b>Tiles</b>: one per line (or separated by <code>;</code>): .SAFE folders, .zip files, "
            "IMG_DATA folders, folders of band files, stacked rasters, STAC item files or .txt lists of band "
            "URLs; wildcards such as <code>/data/s2/*.SAFE</code> are "
            "expanded, and <code>@/path/list.txt</code> reads a list (one path or wildcard per line, relative "
            "to the list's folder, # for comments).</p>"
            "<p><b>Text file listing the tiles</b> (optional): the same as an @list line, with a file "
            "browser.</p>"
            "<p>The area of interest, model and engine settings below apply to every tile.</p>"
        ) + self.aoi_help() + self.tr(
            "<p>With an area of interest, a tile it does not overlap fails with a message saying so and the "
            "others go on; each tile's rasters cover the part of the area on that tile.</p>"
        ) + self.mask_help() + self.engine_parameters_help() + self.pixel_parameters_help() + self.tr(
            "<p><b>Re-run tiles that are already complete</b>: by default a tile whose outputs are complete "
            "(its report exists, same model, probability, cloud-mask and area-of-interest settings) is skipped.</p>"
        ) + self.resume_help() + self.tr(
            "<p>Resume applies to each tile that is not skipped, in its own sub-folder; with <i>require</i> a "
            "tile with nothing to resume fails and the others go on.</p>"
            "<p><b>Dask scheduler address</b> (optional): e.g. <code>tcp://10.0.0.5:8786</code>. Its workers "
            "must have s2seg and torch installed and see the tiles and the output folder at the same paths "
            "(shared storage). Empty: a local cluster is started for this run and stopped afterwards.</p>"
            "<p><b>Workers</b> / <b>Torch threads per worker</b> (local cluster; 0 = automatic).</p>"
            "<p><b>Output folder</b>: each tile's products go to a sub-folder named after the tile.</p>"
            "<h3>Outputs</h3>"
            "<p><b>Batch summary</b> (s2seg_batch.html): one row per tile with its status, time, device, "
            "output folder, report and preview; failed tiles with their error. <b>Tiles done / skipped / "
            "failed</b>: counts, to test in a model.</p>"
            "<p>The rasters are not loaded into the project (there may be hundreds); each is written with its "
            ".qml style, so it opens styled.</p>"
            "<p>qgis_process: <code>qgis_process run s2seg:segmenttiles -- INPUTS='/data/a.SAFE;/data/b.zip' "
            "MODEL=builtin DEVICE=cpu OUTPUT_FOLDER=/data/out</code> (MODEL, DEVICE and RESUME by name or by the "
            "option number qgis_process help lists)</p>"
        )

    # --- parameters and outputs ---------------------------------------------------------------------
    def initAlgorithm(self, config: Optional[dict[str, Any]] = None) -> None:  # noqa: N802 - QGIS API
        self.addParameter(
            QgsProcessingParameterString(
                self.INPUTS,
                self.tr("Tiles (one per line: .SAFE folder, .zip, band folder, wildcard or @list.txt)"),
                multiLine=True,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.TILE_LIST,
                self.tr("Text file listing the tiles (one per line)"),
                behavior=QgsProcessingParameterFile.File,
                fileFilter=self.tr("Text files (*.txt *.lst *.csv);;All files (*.*)"),
                optional=True,
            )
        )
        self.add_aoi_parameters()
        self.add_model_parameters()
        self.add_mask_parameters()
        self.add_engine_parameters()
        self.add_pixel_parameters()
        self.add_overwrite_parameter(self.tr("Re-run tiles that are already complete"))
        self.add_resume_parameter()
        self.addParameter(
            QgsProcessingParameterString(
                self.SCHEDULER, self.tr("Dask scheduler address (empty = local cluster)"), optional=True
            )
        )
        self.add_count_parameter(self.WORKERS, self.tr("Local cluster: workers (0 = automatic)"))
        self.add_count_parameter(self.THREADS_PER_WORKER, self.tr("Torch threads per worker (0 = automatic)"))
        self.add_output_folder_parameter()

        self.addOutput(QgsProcessingOutputHtml(self.SUMMARY, self.tr("Batch summary")))
        self.addOutput(QgsProcessingOutputNumber(self.OK, self.tr("Tiles done")))
        self.addOutput(QgsProcessingOutputNumber(self.SKIPPED, self.tr("Tiles skipped (already complete)")))
        self.addOutput(QgsProcessingOutputNumber(self.FAILED, self.tr("Tiles failed")))

    # --- running --------------------------------------------------------------------------------------
    def _tiles(self, parameters: dict[str, Any], context: QgsProcessingContext) -> list[str]:
        raw = parameters.get(self.INPUTS)
        tiles = split_tiles(raw if isinstance(raw, (list, tuple)) else self.parameterAsString(parameters, self.INPUTS, context))
        tile_list = self.parameterAsFile(parameters, self.TILE_LIST, context)
        if tile_list:
            tiles.append("@" + tile_list)
        return tiles

    def processAlgorithm(  # noqa: N802 - QGIS API
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        self.check_dependencies()
        from ..s2seg_plugin.dependencies import python_executable

        try:
            import distributed  # noqa: F401 - checked here so the message names what is missing
        except ImportError as exc:
            raise QgsProcessingException(self.tr(
                "The batch algorithm needs Dask distributed in QGIS's Python ({}). Install it with: "
                "{} -m pip install dask distributed"
            ).format(exc, python_executable())) from exc

        from ..core.batch import FAILED, OK, SKIPPED, run_batch, summary_line, write_summary
        from ..core.errors import S2SegError
        from ..s2seg_plugin.feedback_bridge import EngineBridge
        from ..s2seg_plugin.report import write_html_report
        from ..s2seg_plugin.styling import Legend, write_qml_sidecars

        tiles = self._tiles(parameters, context)
        if not tiles:
            raise QgsProcessingException(self.tr("No tiles given (parameters INPUTS or TILE_LIST)."))
        model = self.model_parameter(parameters, context)
        output_dir = Path(self.parameterAsString(parameters, self.OUTPUT_FOLDER, context))
        scheduler = (self.parameterAsString(parameters, self.SCHEDULER, context) or "").strip() or None
        config = self.engine_config(parameters, context)  # the area of interest too
        feedback.pushInfo(self.tr("Model: {}").format(model))
        if config.aoi:
            feedback.pushInfo(self.tr("Area of interest: {}").format(config.aoi))
        feedback.pushInfo(self.tr("Output folder: {}").format(output_dir))
        feedback.pushInfo(self.tr("Dask: {}").format(scheduler or self.tr("local cluster")))

        bridge = EngineBridge(feedback)

        def on_tile(outcome: Any, done: int, total: int) -> None:
            text = f"[{done}/{total}] {outcome.name}: {outcome.status}"
            if outcome.status in (OK, SKIPPED):
                text += f" ({outcome.seconds:.1f} s{', ' + outcome.device if outcome.device else ''})"
            bridge.log(text)

        # Local worker processes need QGIS's own Python: inside QGIS sys.executable is the QGIS binary,
        # or the first python3 on PATH (a pyenv shim …), which lacks QGIS's packages ("Nanny failed to start").
        worker_python = python_executable()
        try:
            result = bridge.run(
                lambda progress, cancel, log: run_batch(
                    tiles, output_dir, model=model, config=config, scheduler=scheduler,
                    workers=self.parameterAsInt(parameters, self.WORKERS, context),
                    threads_per_worker=self.parameterAsInt(parameters, self.THREADS_PER_WORKER, context),
                    force=self.parameterAsBoolean(parameters, self.OVERWRITE, context),
                    progress=progress, log=log, cancel=cancel, on_tile=on_tile, worker_python=worker_python,
                )
            )
        except S2SegError as exc:
            raise self.engine_error(exc) from exc

        for outcome in result.outcomes:
            if outcome.status == FAILED:
                feedback.reportError(self.tr("{} failed: {}").format(outcome.name, outcome.message), False)
            if outcome.status == OK and outcome.result is not None:
                try:
                    write_qml_sidecars({k: Path(p) for k, p in outcome.result.products.items()},
                                       Legend.from_card(outcome.result.card))
                    write_html_report(outcome.result)
                except OSError as exc:
                    feedback.reportError(self.tr("{}: cannot write its styles or report: {}").format(
                        outcome.name, exc.strerror or exc), False)
        try:
            _, summary = write_summary(result, output_dir)  # again: it now links the tiles' HTML reports
        except OSError as exc:
            raise QgsProcessingException(
                self.tr("Cannot write the batch summary in {}: {}").format(output_dir, exc.strerror or exc)
            ) from exc
        feedback.pushInfo(summary_line(result))
        if result.cancelled:
            raise QgsProcessingException(self.tr("Cancelled: {} of {} tile(s) done; run again to continue.").format(
                result.count(OK) + result.count(SKIPPED), len(result.outcomes)))
        if result.failed and not (result.count(OK) or result.count(SKIPPED)):
            raise QgsProcessingException(self.tr("Every tile failed; the first: {}: {}").format(
                result.failed[0].name, result.failed[0].message))
        return {
            self.OUTPUT_FOLDER: str(output_dir),
            self.SUMMARY: str(summary),
            self.OK: result.count(OK),
            self.SKIPPED: result.count(SKIPPED),
            self.FAILED: len(result.failed),
        }
