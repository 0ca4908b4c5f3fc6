"""What the s2seg algorithms share: the base class, the engine parameters and their ``EngineConfig``.

Every parameter that both ``s2seg:segmenttile`` and ``s2seg:segmenttiles`` offer
(model, model file, chunk size, batch size, device, probabilities, resume) is
declared here once, with its label, its help paragraph and how it becomes a field
of :class:`s2seg.core.config.EngineConfig`. Option lists come from the engine
(``DEVICES``, ``RESUME_MODES``, the model cards), never from a copy.

Nothing here imports torch: the provider must load in a QGIS whose Python lacks it,
and the algorithm then says how to install it when it runs
(:meth:`S2SegAlgorithm.check_dependencies`).
"""
from __future__ import annotations

import html
import re
import textwrap
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

from qgis.core import (
    Qgis,
    QgsMessageLog,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorLayer,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ..core.config import DEVICES, FRONT_END_MASK, MASK_MODES, RESUME_MODES, EngineConfig  # plain Python: no torch
from ..core.errors import DeviceUnavailable, OutputsExist, ResumeImpossible, S2SegError
from ..core.products import DEFAULT_PRODUCTS, MASK, RASTER_PRODUCTS  # plain Python too
from ..s2seg_plugin import ICON_PATH
from ..s2seg_plugin.dependencies import missing_dependencies_message

#: Used only when the model cards cannot be read (e.g. torch missing): the provider must still
#: load, and the algorithm then stops at its first line with the install command.
FALLBACK_MODEL = "builtin"
#: BigEarthNet v2 checkpoints are folders; the file dialog can only pick files, so picking
#: one of these files inside the folder selects the folder.
_BEN_FOLDER_FILES = ("config.json", "model.safetensors")
#: The engine's defaults, which the parameters' defaults follow ("auto" for both).
_ENGINE_DEFAULTS = {f.name: f.default for f in fields(EngineConfig)}
DEFAULT_DEVICE: str = _ENGINE_DEFAULTS["device"]
DEFAULT_RESUME: str = _ENGINE_DEFAULTS["resume"]


def model_names() -> list[str]:
    """Names of the built-in and shipped models, the default first.

    Never raises: with a broken environment (or a broken shipped card) the provider
    must still load, so fall back to the default name and log why.
    """
    try:
        from ..core.models import DEFAULT_MODEL, available_cards

        from ..core.models import zoo

        names = sorted(available_cards())
        downloadable = [entry.choice for entry in zoo.CATALOGUE.values()]
    except Exception as exc:  # noqa: BLE001 - ImportError without torch, S2SegError on a bad card
        QgsMessageLog.logMessage(f"s2seg: model list unavailable ({type(exc).__name__}: {exc})", "s2seg", Qgis.Warning)
        return [FALLBACK_MODEL]
    if DEFAULT_MODEL in names:
        names.remove(DEFAULT_MODEL)
        names.insert(0, DEFAULT_MODEL)
    # The BigEarthNet v2 models shown with their download size; model_spec turns them back into names.
    return (names or [DEFAULT_MODEL]) + downloadable


def apply_qgis_proxy() -> None:
    """Pass QGIS's HTTP proxy (Settings ▸ Options ▸ Network) to huggingface_hub through ``HTTPS_PROXY``/
    ``HTTP_PROXY``/``NO_PROXY``, which its HTTP client reads when it is created; the system's proxy or none:
    the environment as it is."""
    import os
    from urllib.parse import quote

    from qgis.core import QgsNetworkAccessManager
    from qgis.PyQt.QtNetwork import QNetworkProxy

    manager = QgsNetworkAccessManager.instance()
    proxy = manager.fallbackProxy()
    if proxy.type() not in (QNetworkProxy.HttpProxy, QNetworkProxy.HttpCachingProxy) or not proxy.hostName():
        return
    auth = f"{quote(proxy.user(), safe='')}:{quote(proxy.password(), safe='')}@" if proxy.user() else ""
    url = f"http://{auth}{proxy.hostName()}:{proxy.port()}"
    wanted = {"HTTPS_PROXY": url, "HTTP_PROXY": url}
    excluded = ",".join([*manager.excludeList(), *manager.noProxyList()])
    if excluded:
        wanted["NO_PROXY"] = excluded
    if any(os.environ.get(key) != value for key, value in wanted.items()):
        os.environ.update(wanted)
        from huggingface_hub import close_session

        close_session()  # its next client reads the new environment


def stored_settings() -> Any:
    """The user's Settings ▸ Options ▸ S2Seg values (defaults when they cannot be read)."""
    from ..s2seg_plugin.settings import PluginSettings, load

    try:
        return load()
    except Exception as exc:  # noqa: BLE001 - a broken profile must not stop the provider from loading
        QgsMessageLog.logMessage(f"s2seg: settings unreadable ({type(exc).__name__}: {exc})", "s2seg", Qgis.Warning)
        return PluginSettings()


def html_to_text(text: str, width: int = 100) -> str:
    """Plain text of a help string: paragraphs and headings on lines of their own, tags dropped."""
    text = re.sub(r"\s*<h\d>(.*?)</h\d>\s*", lambda m: f"\n\n{m.group(1).upper()}\n\n", text)
    text = re.sub(r"\s*(</p>|<br\s*/?>)\s*", "\n\n", text)
    text = html.unescape(re.sub(r"<[^>]+>", "", text))
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(textwrap.fill(p, width) for p in paragraphs if p)


def running_in_qgis_process() -> bool:
    """True inside ``qgis_process``, which prints help strings as they are (HTML is for the dialog)."""
    from qgis.core import QgsApplication

    return QgsApplication.platform() == "qgis_process"


def model_spec(name: str, model_file: str) -> str:
    """What to pass to the engine as ``model``: the file/folder when given, else the model's name."""
    if not model_file:
        from ..core.models.zoo import name_for_choice  # plain Python: no torch

        return name_for_choice(name)
    path = Path(model_file)
    if path.is_file() and path.name in _BEN_FOLDER_FILES:
        return str(path.parent)
    return str(path)


class S2SegAlgorithm(QgsProcessingAlgorithm):
    """Base of the s2seg algorithms: identity helpers, shared parameters, the engine configuration.

    Subclasses give ``name``/``displayName``/``shortHelpString``/``initAlgorithm``/
    ``processAlgorithm`` and call the ``add_*_parameter(s)`` methods in the order their
    dialog shows the parameters.
    """

    MODEL = "MODEL"
    MODEL_FILE = "MODEL_FILE"
    CHUNK_SIZE = "CHUNK_SIZE"
    BATCH_SIZE = "BATCH_SIZE"
    DEVICE = "DEVICE"
    WRITE_PROBS = "WRITE_PROBS"
    PRODUCTS = "PRODUCTS"
    VECTOR = "VECTOR"
    MMU = "MMU"
    COG = "COG"
    RESUME = "RESUME"
    OVERWRITE = "OVERWRITE"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    EXTENT = "EXTENT"
    MASK = "MASK"  # the area-of-interest polygons (the cloud mask is CLOUD_MASK)
    CLOUD_MASK = "CLOUD_MASK"
    KEEP_MASKED = "KEEP_MASKED"
    BANDS = "BANDS"
    SCALE = "SCALE"
    OFFSET = "OFFSET"

    def tr(self, text: str) -> str:  # noqa: D102 - Qt convention; context = the algorithm's class name
        return QCoreApplication.translate(type(self).__name__, text)

    def createInstance(self) -> "S2SegAlgorithm":  # noqa: N802 - QGIS API
        return type(self)()

    def group(self) -> str:
        return self.tr("Segmentation")

    def groupId(self) -> str:  # noqa: N802 - QGIS API
        return "segmentation"

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def svgIconPath(self) -> str:  # noqa: N802 - QGIS API
        return str(ICON_PATH)

    # --- parameters ---------------------------------------------------------------------------------
    def add_advanced(self, param: QgsProcessingParameterDefinition) -> None:
        """Add ``param`` under the dialog's "Advanced parameters"."""
        param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(param)

    def add_static_enum(self, name: str, label: str, options: list[str], default: str, advanced: bool = False,
                        optional: bool = False) -> None:
        """An enum given by name, not by index, in scripts and qgis_process (``DEVICE=cpu``)."""
        param = QgsProcessingParameterEnum(name, label, options=options, defaultValue=default, optional=optional)
        param.setUsesStaticStrings(True)
        if advanced:
            self.add_advanced(param)
        else:
            self.addParameter(param)

    def add_model_parameters(self) -> None:
        """MODEL (a shipped model by name) and MODEL_FILE (a model of one's own, replaces MODEL)."""
        # Names, not indexes: the list depends on what is installed.
        models = model_names()
        self.add_static_enum(self.MODEL, self.tr("Model"), models, models[0])
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL_FILE,
                self.tr("Model file or folder (replaces Model)"),
                behavior=QgsProcessingParameterFile.File,
                fileFilter=self.tr(
                    "Models (*.json *.onnx *.pt *.pth *.ts *.torchscript *.safetensors);;All files (*.*)"
                ),
                optional=True,
            )
        )

    def add_engine_parameters(self) -> None:
        """CHUNK_SIZE, BATCH_SIZE, DEVICE (advanced) and WRITE_PROBS."""
        for name, label in (
            (self.CHUNK_SIZE, self.tr("Chunk size in 10 m pixels (0 = automatic)")),
            (self.BATCH_SIZE, self.tr("Batch size in patches (0 = automatic)")),
        ):
            self.add_count_parameter(name, label)
        self.add_static_enum(self.DEVICE, self.tr("Device"), list(DEVICES), stored_settings().default_device,
                             advanced=True)
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.WRITE_PROBS, self.tr("Write class probabilities (one band per class)"), defaultValue=False
            )
        )

    def add_output_parameters(self) -> None:
        """PRODUCTS (a checkbox per raster product), VECTOR ("Also write polygons"), MMU (advanced) and COG.
        All optional: graphical models saved before they existed still run, with the engine's defaults."""
        products = QgsProcessingParameterEnum(self.PRODUCTS, self.tr("Raster products to write (the land cover "
                                              "is always written)"),
                                              # the mask follows its own parameter (segment_tile's CLOUD_MASK)
                                              options=[p for p in RASTER_PRODUCTS if p != MASK],
                                              allowMultiple=True, defaultValue=list(DEFAULT_PRODUCTS), optional=True)
        products.setUsesStaticStrings(True)
        self.addParameter(products)
        self.addParameter(QgsProcessingParameterBoolean(self.VECTOR, self.tr("Also write polygons (GeoPackage)"),
                                                        defaultValue=False, optional=True))
        self.add_advanced(QgsProcessingParameterNumber(
            self.MMU, self.tr("Minimum mapping unit of the polygons (hectares; 0 = none)"),
            type=QgsProcessingParameterNumber.Double, defaultValue=EngineConfig.mmu, minValue=0.0, optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.COG, self.tr("Write cloud-optimised GeoTIFFs (for web maps and object storage)"), defaultValue=False,
            optional=True))

    def output_parameters_help(self) -> str:
        """The help paragraphs of :meth:`add_output_parameters`."""
        return self.tr(
            "<p><b>Raster products to write</b>: untick what you do not need (the land cover is always "
            "written); fewer products write faster and take less space.</p>"
            "<p><b>Also write polygons</b>: the land cover as polygons (&lt;tile&gt;_landcover.gpkg) with class, "
            "area (ha), mean max probability and mean gap of each polygon; patches smaller than the "
            "<b>minimum mapping unit</b> (Advanced) are merged into their largest neighbour first.</p>"
            "<p><b>Write cloud-optimised GeoTIFFs</b>: every raster in GDAL's COG layout (takes longer).</p>"
        )

    def add_mask_parameters(self) -> None:
        """CLOUD_MASK (the engine's ``--mask``, the front ends' default) and KEEP_MASKED (Advanced)."""
        # Optional: graphical models saved before it existed still run (with the front ends' default).
        self.add_static_enum(self.CLOUD_MASK, self.tr("Mask clouds, shadows and snow"), list(MASK_MODES),
                             FRONT_END_MASK, optional=True)
        self.add_advanced(QgsProcessingParameterBoolean(
            self.KEEP_MASKED, self.tr("Keep the land cover under clouds, shadows and snow"), defaultValue=False,
            optional=True))

    def mask_help(self) -> str:
        """The help paragraph of :meth:`add_mask_parameters` (and of the mask raster it writes)."""
        return self.tr(
            "<p><b>Clouds, shadows and snow</b> (…_mask.tif, with <i>Mask clouds, shadows and snow</i> other than "
            "none): 0 clear, 1 cloud, 2 thin cirrus, 3 cloud shadow, 4 snow/ice, 255 no data. The land cover "
            "and confidence rasters are no data under cloud, shadow and snow (thin cirrus is kept: the ground "
            "shows through) unless <i>Keep the land cover under clouds, shadows and snow</i> (Advanced) is "
            "ticked; the statistics count the visible pixels and the report gives the masked share. "
            "<i>scl</i> reads the Scene Classification of a Level-2A product; <i>model</i> runs the cloud model "
            "of the tile's level (s2-cloud-l1c / s2-cloud-l2a) beside the land-cover model, in the same pass, "
            "and marks snow where the model says clear and the spectral snow test (NDSI) says snow; "
            "<i>spectral</i> is a reflectance test (thick clouds and snow only, no shadows); <i>auto</i> takes "
            "scl when the tile has it, else the cloud model when installed, else spectral.</p>"
        )

    def add_aoi_parameters(self) -> None:
        """EXTENT (typed, drawn on the canvas or a layer's extent, as QGIS offers) and MASK (a polygon
        layer): the engine's area of interest (``--aoi``), one of them at most."""
        self.addParameter(QgsProcessingParameterExtent(
            self.EXTENT, self.tr("Area of interest (extent; empty: the whole tile)"), optional=True))
        self.addParameter(QgsProcessingParameterVectorLayer(
            self.MASK, self.tr("Area of interest polygons (pixels outside them are no data)"),
            [QgsProcessing.TypeVectorPolygon], optional=True))

    def aoi_help(self) -> str:
        """The help paragraph of :meth:`add_aoi_parameters`."""
        return self.tr(
            "<p><b>Area of interest</b> (optional): an extent (typed, drawn on the canvas or taken from a layer) "
            "or a polygon layer (any CRS). Only that part of the tile is computed; the rasters cover its "
            "bounding box on the tile's 10 m grid, pixels outside the polygons are no data, and every pixel "
            "has the value a whole-tile run gives it. An area outside the tile is an error.</p>"
        )

    def aoi_parameter(self, parameters: dict[str, Any], context: QgsProcessingContext) -> Optional[str]:
        """The engine's AOI string from EXTENT or MASK (one of them at most); None: the whole tile."""
        from .area_of_interest import extent_aoi, layer_aoi

        extent = None
        if parameters.get(self.EXTENT) not in (None, ""):
            extent = extent_aoi(self.parameterAsExtent(parameters, self.EXTENT, context),
                                self.parameterAsExtentCrs(parameters, self.EXTENT, context))
        polygons = layer_aoi(self.parameterAsVectorLayer(parameters, self.MASK, context), context.transformContext())
        if extent and polygons:
            raise QgsProcessingException(self.tr("Give either an area of interest extent or polygons, not both."))
        return extent or polygons

    def add_pixel_parameters(self) -> None:
        """BANDS, SCALE and OFFSET (advanced, optional): how a stacked raster's bands and values are read
        (``--bands``, ``--scale``, ``--offset``)."""
        self.add_advanced(QgsProcessingParameterString(
            self.BANDS, self.tr("Stacked raster: band ids in file order, e.g. B02,B03,B04,B08 ('-' skips a band; "
                                "empty: from the band descriptions)"), optional=True))
        for name, label in ((self.SCALE, self.tr("Scale: reflectance = value × scale + offset (empty: the file's "
                                                 "metadata, else detected)")),
                            (self.OFFSET, self.tr("Offset in reflectance (e.g. -0.1 for DN of baseline 04.00+ "
                                                  "without metadata; empty: the product's)"))):
            self.add_advanced(QgsProcessingParameterNumber(name, label, type=QgsProcessingParameterNumber.Double,
                                                           optional=True))

    def pixel_parameters_help(self) -> str:
        """The help paragraph of :meth:`add_pixel_parameters`."""
        return self.tr(
            "<p><b>Band ids</b>, <b>Scale</b>, <b>Offset</b> (Advanced): a stacked raster's bands are identified "
            "from their descriptions (B2, B02, blue, nir08 …) unless listed here in file order; its values are "
            "read as the file's scale/offset metadata says, else detected (integers: reflectance × 10000, "
            "floats up to 2.5: reflectance 0–1) and the log says which. Scale and offset (reflectance = value × "
            "scale + offset) override that for any input, e.g. an offset of -0.1 for band URLs of baseline "
            "04.00 and later, which carry no metadata.</p>"
        )

    def add_count_parameter(self, name: str, label: str) -> None:
        """An advanced integer ≥ 0 where 0 means "choose automatically"."""
        self.add_advanced(
            QgsProcessingParameterNumber(name, label, type=QgsProcessingParameterNumber.Integer, defaultValue=0,
                                         minValue=0)
        )

    def add_resume_parameter(self) -> None:
        """RESUME (advanced): the engine's resume mode, by name (``RESUME=never``).

        Optional (unset = the default, auto): graphical models saved before it existed have no
        value for it, and the modeler refuses a model that leaves a mandatory parameter unset.
        """
        self.add_static_enum(
            self.RESUME, self.tr("Resume an interrupted run (auto, require, never)"), list(RESUME_MODES),
            DEFAULT_RESUME, advanced=True, optional=True,
        )

    def add_overwrite_parameter(self, label: str) -> None:
        """OVERWRITE: replace finished products found in the output folder (off: they are kept and the run
        stops). Optional, like RESUME, so that graphical models saved without it still run."""
        self.addParameter(QgsProcessingParameterBoolean(self.OVERWRITE, label, defaultValue=False, optional=True))

    def add_output_folder_parameter(self) -> None:
        """OUTPUT_FOLDER, proposing the default output folder of the settings (none: a temporary folder)."""
        self.addParameter(QgsProcessingParameterFolderDestination(
            self.OUTPUT_FOLDER, self.tr("Output folder"), defaultValue=stored_settings().default_output_folder or None))

    # --- help -----------------------------------------------------------------------------------------
    def help_html(self) -> str:
        """The help as HTML (the dialog's panel); subclasses give it."""
        return ""

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        """HTML in the dialog; plain text in ``qgis_process help``, which would show the tags."""
        text = self.help_html()
        return html_to_text(text) if running_in_qgis_process() else text

    def engine_parameters_help(self) -> str:
        """The help paragraphs of the parameters added by :meth:`add_model_parameters` and
        :meth:`add_engine_parameters`."""
        return self.tr(
            "<p><b>Model</b>: a model shipped with the plugin. <i>builtin</i> needs no download.</p>"
            "<p><b>Model file or folder</b> (optional, replaces Model): a model card (.json), an ONNX model, a "
            "TorchScript model with its card, or a BigEarthNet v2 checkpoint folder (config.json + "
            "model.safetensors — selecting its config.json selects the folder).</p>"
            "<p><b>Chunk size</b>: side, in 10 m pixels, of the square block read and classified at once; "
            "0 lets s2seg choose one that keeps memory bounded. The result does not depend on it.</p>"
            "<p><b>Batch size</b>: patches sent to the model at once; 0 chooses (larger on a GPU).</p>"
            "<p><b>Device</b>: auto uses a GPU when available (CUDA, or Apple's mps), else the CPU; cpu, cuda "
            "and mps force one.</p>"
            "<p><b>Write class probabilities</b>: also write one band per class (a large file).</p>"
        )

    def resume_help(self) -> str:
        """The help paragraph of :meth:`add_resume_parameter`."""
        return self.tr(
            "<p><b>Resume an interrupted run</b>: finished chunks are saved as the run goes, so a run that is "
            "cancelled, fails or is killed can continue where it stopped; the products are the same as those of "
            "an uninterrupted run. <i>auto</i> (default): continue the interrupted run of the same tile with "
            "the same model and settings (chunk size, class probabilities) in the same folder, else start over. "
            "<i>require</i>: the same, but an error when there is nothing to resume. <i>never</i>: discard "
            "partial results and start over.</p>"
        )

    # --- option numbers -------------------------------------------------------------------------------
    def with_option_names(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """``parameters`` with option numbers of the by-name enums (MODEL=0, DEVICE=1) replaced by the names.

        ``qgis_process help`` lists every enum's options with numbers and offers them ("Number of
        selected option"), but QGIS 3.22 refuses a number for an enum that uses names.
        """
        named = dict(parameters)
        for name, value in parameters.items():
            definition = self.parameterDefinition(name)
            if not isinstance(definition, QgsProcessingParameterEnum) or not definition.usesStaticStrings():
                continue
            options = definition.options()
            text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
            if text.isdigit() and text not in options and int(text) < len(options):
                named[name] = options[int(text)]
            elif name == self.MODEL and text not in options:
                # A downloadable model given by its name (MODEL=ben-resnet50-s2): the list shows its label.
                from ..core.models.zoo import CATALOGUE

                entry = CATALOGUE.get(text)
                if entry is not None and entry.choice in options:
                    named[name] = entry.choice
        return named

    def checkParameterValues(  # noqa: N802 - QGIS API
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[bool, str]:
        return super().checkParameterValues(self.with_option_names(parameters), context)

    def enum_string(self, parameters: dict[str, Any], name: str, context: QgsProcessingContext) -> str:
        """The option name of a by-name enum, given by name or by number."""
        return self.parameterAsEnumString(self.with_option_names(parameters), name, context)

    # --- running --------------------------------------------------------------------------------------
    def check_dependencies(self) -> None:
        """Raise with the install command when the engine's requirements (torch …) are missing.

        Call it first in ``processAlgorithm``, before importing the engine.
        """
        message = missing_dependencies_message()
        if message:
            raise QgsProcessingException(message)

    def _label(self, name: str) -> str:
        definition = self.parameterDefinition(name)
        return definition.description() if definition is not None else name

    def remedy(self, exc: S2SegError) -> str:
        """How to fix ``exc`` in this dialog's words, or "" when no option fixes it.

        The engine's messages say what is wrong neutrally; the option wording of each front end is keyed
        on the error type here (the CLI has its own, with --flags).
        """
        if isinstance(exc, OutputsExist) and self.parameterDefinition(self.OVERWRITE) is not None:
            return self.tr("tick '{}' to replace them").format(self._label(self.OVERWRITE))
        if isinstance(exc, ResumeImpossible) and self.parameterDefinition(self.RESUME) is not None:
            return self.tr("set '{}' (Advanced parameters) to auto or never to start over").format(
                self._label(self.RESUME))
        if isinstance(exc, DeviceUnavailable) and self.parameterDefinition(self.DEVICE) is not None:
            return self.tr("choose '{}' (Advanced parameters): auto or cpu").format(self._label(self.DEVICE))
        from ..core.models.zoo import ModelNotAvailable  # plain Python: no torch

        if isinstance(exc, ModelNotAvailable) and self.parameterDefinition(self.MODEL_FILE) is not None:
            return self.tr("run it once with internet access (QGIS's proxy settings are used), or choose a copied "
                           "checkpoint folder as '{}'").format(self._label(self.MODEL_FILE))
        return ""

    def engine_error(self, exc: S2SegError) -> QgsProcessingException:
        """The ``QgsProcessingException`` for an engine error: its message, plus :meth:`remedy` when one applies."""
        remedy = self.remedy(exc)
        return QgsProcessingException(f"{exc}; {remedy}" if remedy else str(exc))

    def model_parameter(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        """The ``model`` argument of the engine: MODEL_FILE when given, else the MODEL name."""
        return model_spec(
            self.enum_string(parameters, self.MODEL, context) or FALLBACK_MODEL,
            self.parameterAsFile(parameters, self.MODEL_FILE, context),
        )

    def download_model(self, model: str, feedback: Any) -> None:
        """Download a BigEarthNet v2 model that is not on this machine yet, with the feedback's progress
        bar and Cancel, through QGIS's proxy; nothing for other models or one already cached."""
        from ..core.errors import S2SegError
        from ..core.models import zoo

        found = zoo.lookup(model)
        if found is None:
            return
        entry, revision = found
        if zoo.cached_folder(entry, revision) is not None or (revision is None and zoo.imported_folder(entry)):
            return
        apply_qgis_proxy()
        feedback.pushInfo(self.tr("Downloading {} from {} (about {}); it is cached for the next runs.").format(
            entry.name, entry.repo_id, entry.size_text))

        def progress(name: str, done: int, total: int | None) -> None:
            if total:
                feedback.setProgress(100.0 * done / total)

        try:
            zoo.download(entry, revision, progress=progress, cancel=feedback.isCanceled)
        except S2SegError as exc:
            raise self.engine_error(exc) from exc
        feedback.setProgress(0)

    def engine_config(self, parameters: dict[str, Any], context: QgsProcessingContext, **fixed: Any) -> EngineConfig:
        """The ``EngineConfig`` of the shared parameters the algorithm declares, plus ``fixed`` fields.

        A bad value becomes a ``QgsProcessingException`` with the engine's message.
        """
        values: dict[str, Any] = {
            "chunk_size": self.parameterAsInt(parameters, self.CHUNK_SIZE, context),
            "batch_size": self.parameterAsInt(parameters, self.BATCH_SIZE, context),
            "device": self.enum_string(parameters, self.DEVICE, context) or DEFAULT_DEVICE,
            "write_probs": self.parameterAsBoolean(parameters, self.WRITE_PROBS, context),
        }
        if self.parameterDefinition(self.RESUME) is not None:
            values["resume"] = self.enum_string(parameters, self.RESUME, context) or DEFAULT_RESUME
        if self.parameterDefinition(self.BANDS) is not None:
            values["bands"] = (self.parameterAsString(parameters, self.BANDS, context) or "").strip() or None
            for name, field in ((self.SCALE, "scale"), (self.OFFSET, "offset")):
                if parameters.get(name) not in (None, ""):
                    values[field] = self.parameterAsDouble(parameters, name, context)
        if self.parameterDefinition(self.CLOUD_MASK) is not None:
            values["mask"] = self.enum_string(parameters, self.CLOUD_MASK, context) or FRONT_END_MASK
            values["keep_masked"] = self.parameterAsBoolean(parameters, self.KEEP_MASKED, context)
        if self.parameterDefinition(self.EXTENT) is not None and "aoi" not in fixed:
            values["aoi"] = self.aoi_parameter(parameters, context)
        if self.parameterDefinition(self.PRODUCTS) is not None:
            chosen = self.parameterAsEnumStrings(parameters, self.PRODUCTS, context)
            values["products"] = tuple(dict.fromkeys(["class", *chosen])) if chosen else ()
            values["vector"] = self.parameterAsBoolean(parameters, self.VECTOR, context)
            values["cog"] = self.parameterAsBoolean(parameters, self.COG, context)
            if parameters.get(self.MMU) is not None:
                values["mmu"] = self.parameterAsDouble(parameters, self.MMU, context)
        try:
            return EngineConfig(**values, **fixed)
        except S2SegError as exc:
            raise self.engine_error(exc) from exc
