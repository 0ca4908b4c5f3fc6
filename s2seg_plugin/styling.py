"""Layer styling for the s2seg products, for every way a user meets them.

* loaded by Processing at the end of a run: :class:`ProductStyler`, a layer
  post-processor (Processing loads outputs *without* their ``.qml``);
* opened later by hand: :func:`write_qml_sidecars` writes ``<product>.qml`` next
  to each GeoTIFF, which QGIS applies when the file is opened;
* any other GIS: the engine embeds the colour table and category names in the
  class GeoTIFF itself.

Class names and colours always come from the model card (which takes them
from :mod:`s2seg.core.nomenclature`); nothing here knows a class.

Confidence rasters share one colour language: red means doubt. Max
probability and gap run red (0) → green (1); entropy runs green (0 bits) →
red (log₂ C bits).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from qgis.core import (
    QgsColorRampShader,
    QgsContrastEnhancement,
    QgsGradientColorRamp,
    QgsGradientStop,
    QgsLayerTreeGroup,
    QgsLayerTreeLayer,
    QgsMapLayer,
    QgsPalettedRasterRenderer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProject,
    QgsRasterDataProvider,
    QgsRasterLayer,
    QgsRasterRenderer,
    QgsRasterShader,
    QgsSingleBandGrayRenderer,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QColor

from ..core.scl import CLEAR, MASK_CLASSES, MASK_COLOURS
from ..core.styles import CONFIDENT, UNCERTAIN, Ramp, max_entropy, product_ramp

#: Order of the products in the layer tree group, top first. The confidence layers lie *above* the
#: opaque class map, unchecked: ticking one shows it at once over the land cover, unticking brings the
#: land cover back (below it, a ticked layer would stay hidden under the class map).
PRODUCT_ORDER: tuple[str, ...] = ("maxprob", "gap", "entropy", "probs", "vector", "mask", "class")
#: Layer-tree custom property that remembers a node's product, to keep the group ordered.
RANK_PROPERTY = "s2seg/product"
#: Group custom property identifying the run that created it: a second run of the same tile gets its own group.
RUN_PROPERTY = "s2seg/run"
#: Products shown when loaded; the confidence layers start unchecked so the map shows land cover.
VISIBLE_PRODUCTS = frozenset({"class", "mask"})  # the mask draws its clear pixels transparent



def tr(text: str) -> str:
    return QCoreApplication.translate("s2seg styling", text)


@dataclass(frozen=True)
class Legend:
    """What the class renderer needs: names and ``#RRGGBB`` colours, index = class value."""

    names: tuple[str, ...]
    colours: tuple[str, ...]

    @classmethod
    def from_card(cls, card: object) -> "Legend":
        """Take names and colours from a ``ModelCard`` (anything with ``class_names``/``class_colours``)."""
        return cls(tuple(card.class_names), tuple(card.class_colours))  # type: ignore[attr-defined]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def max_entropy(self) -> float:
        """Upper bound of the entropy product in bits: log₂ C."""
        return max_entropy(self.num_classes)


def product_layer_names() -> dict[str, str]:
    """Human names of the products as they appear in the layer tree."""
    return {
        "class": tr("Land cover"),
        "maxprob": tr("Max probability"),
        "gap": tr("Gap top-1 − top-2"),
        "entropy": tr("Entropy (bits)"),
        "probs": tr("Class probabilities"),
        "mask": tr("Clouds, shadows and snow"),
    }


# --- renderers ------------------------------------------------------------------------------------
def class_renderer(provider: QgsRasterDataProvider, legend: Legend) -> QgsPalettedRasterRenderer:
    """Paletted renderer with exactly the model's classes (no 256-entry TIFF palette, 255 = nodata stays clear)."""
    items = [
        QgsPalettedRasterRenderer.Class(index, QColor(colour), name)
        for index, (name, colour) in enumerate(zip(legend.names, legend.colours))
    ]
    return QgsPalettedRasterRenderer(provider, 1, items)


def mask_renderer(provider: QgsRasterDataProvider) -> QgsPalettedRasterRenderer:
    """The cloud/shadow/snow mask: its classes in their colours, clear left out (transparent) so the
    layer lies over the land cover and shows only what hides it."""
    items = [QgsPalettedRasterRenderer.Class(code, QColor(colour), tr(name))
             for code, (name, colour) in enumerate(zip(MASK_CLASSES, MASK_COLOURS)) if code != CLEAR]
    return QgsPalettedRasterRenderer(provider, 1, items)


def ramp_renderer(
    provider: QgsRasterDataProvider,
    minimum: float,
    maximum: float,
    *,
    invert: bool = False,
    low_label: str = "",
    high_label: str = "",
    band: int = 1,
) -> QgsSingleBandPseudoColorRenderer:
    """Red→green (or green→red with ``invert``) interpolated ramp on fixed ``minimum``…``maximum``
    (:class:`s2seg.core.styles.Ramp`, the one definition the style files use too)."""
    return ramp_layer_renderer(provider, Ramp(minimum, maximum, invert, low_label, high_label), band)


def ramp_layer_renderer(provider: QgsRasterDataProvider, ramp: Ramp, band: int = 1) -> QgsSingleBandPseudoColorRenderer:
    """The QGIS renderer of ``ramp``: its colours and labelled stops."""
    colours = [QColor(c) for c in ramp.colours]
    gradient = QgsGradientColorRamp(
        colours[0],
        colours[-1],
        False,
        [QgsGradientStop(i / (len(colours) - 1), c) for i, c in enumerate(colours[1:-1], start=1)],
    )
    items = [QgsColorRampShader.ColorRampItem(value, QColor(colour), label) for value, colour, label in ramp.stops()]
    function = QgsColorRampShader(ramp.minimum, ramp.maximum, gradient, QgsColorRampShader.Interpolated)
    function.setColorRampItemList(items)
    function.setClip(False)
    shader = QgsRasterShader(ramp.minimum, ramp.maximum)
    shader.setRasterShaderFunction(function)
    renderer = QgsSingleBandPseudoColorRenderer(provider, band, shader)
    renderer.setClassificationMin(ramp.minimum)
    renderer.setClassificationMax(ramp.maximum)
    return renderer


def probs_renderer(provider: QgsRasterDataProvider) -> QgsSingleBandGrayRenderer:
    """Band 1 in grey on the full probability range (0…1 floats, or 0…255 when stored as bytes)."""
    renderer = QgsSingleBandGrayRenderer(provider, 1)
    maximum = 255.0 if provider.dataType(1) == 1 else 1.0  # Qgis.Byte == 1
    enhancement = QgsContrastEnhancement(provider.dataType(1))
    enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
    enhancement.setMinimumValue(0.0)
    enhancement.setMaximumValue(maximum)
    renderer.setContrastEnhancement(enhancement)
    return renderer


def product_renderer(product: str, provider: QgsRasterDataProvider, legend: Legend) -> Optional[QgsRasterRenderer]:
    """The renderer of one product (``None`` for an unknown product: keep QGIS's default)."""
    if product == "class":
        return class_renderer(provider, legend)
    if product == "mask":
        return mask_renderer(provider)
    ramp = product_ramp(product, legend.num_classes)
    if ramp is not None:  # the end labels translated
        labels = {UNCERTAIN: tr("(uncertain)"), CONFIDENT: tr("(confident)")}
        return ramp_renderer(provider, ramp.minimum, ramp.maximum, invert=ramp.invert,
                             low_label=labels[ramp.low_label], high_label=labels[ramp.high_label])
    if product == "probs":
        return probs_renderer(provider)
    return None


def style_layer(layer: QgsRasterLayer, product: str, legend: Legend) -> bool:
    """Apply the product's renderer to ``layer``; False when the layer or product is unusable."""
    if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
        return False
    renderer = product_renderer(product, layer.dataProvider(), legend)
    if renderer is None:
        return False
    layer.setRenderer(renderer)
    layer.triggerRepaint()
    return True


# --- .qml sidecars --------------------------------------------------------------------------------
def qml_path(raster: Path) -> Path:
    """``T32UNU_…_class.tif`` → ``T32UNU_…_class.qml``, where QGIS looks for a default style."""
    return Path(raster).with_suffix(".qml")


def write_qml_sidecars(products: Mapping[str, Path], legend: Legend) -> dict[str, Path]:
    """Write ``<raster>.qml`` for every known product; returns product → written style file.

    Safe on a worker thread: it only opens the rasters and writes files.
    """
    written: dict[str, Path] = {}
    for product, raster in products.items():
        layer = QgsRasterLayer(str(raster), Path(raster).stem, "gdal")
        if not style_layer(layer, product, legend):
            continue
        target = qml_path(Path(raster))
        message, ok = layer.saveNamedStyle(str(target))
        if ok and target.is_file():
            written[product] = target
    return written


# --- styling layers loaded by Processing ----------------------------------------------------------
def _rank(product: str) -> int:
    return PRODUCT_ORDER.index(product) if product in PRODUCT_ORDER else len(PRODUCT_ORDER)


def move_into_group(
    project: QgsProject, layer: QgsMapLayer, group_name: str, product: str, run_id: str = ""
) -> Optional[QgsLayerTreeLayer]:
    """Move ``layer``'s tree node into the group ``group_name`` (created next to it), ordered by product.

    Processing has already put the node at the root, or in its "results group"
    when the user set one; the tile group goes into that same parent. Layers of
    one run (same ``run_id``) share a group; another run gets a new group.

    QGIS desktop adds each layer at the layer tree view's insertion point, which
    follows the current layer — after the first product that is inside a tile
    group. So a node found inside tile groups is filed next to the outermost of
    them, never in a group nested inside another tile group.
    """
    root = project.layerTreeRoot()
    node = root.findLayer(layer.id())
    if node is None:
        return None
    anchor = node  # the tile group goes next to this node of ``parent``
    parent = node.parent() if isinstance(node.parent(), QgsLayerTreeGroup) else root
    while parent is not root and parent.customProperty(RUN_PROPERTY, None) is not None:
        anchor = parent
        parent = parent.parent() if isinstance(parent.parent(), QgsLayerTreeGroup) else root
    group = next(
        (
            child
            for child in parent.children()
            if isinstance(child, QgsLayerTreeGroup)
            and child.name() == group_name
            and str(child.customProperty(RUN_PROPERTY, "")) == run_id
        ),
        None,
    )
    if group is None:
        siblings = parent.children()
        index = next((i for i, child in enumerate(siblings) if child is anchor), 0)
        group = parent.insertGroup(index, group_name)
        group.setCustomProperty(RUN_PROPERTY, run_id)
    position = len(group.children())
    for i, child in enumerate(group.children()):
        if child is not node and _rank(str(child.customProperty(RANK_PROPERTY, ""))) > _rank(product):
            position = i
            break
    # Clone first, remove after: a layer whose last node leaves the tree is removed from the project.
    moved = node.clone()
    moved.setCustomProperty(RANK_PROPERTY, product)
    moved.setItemVisibilityChecked(product in VISIBLE_PRODUCTS)
    moved.setExpanded(product == "class")
    group.insertChildNode(position, moved)
    node.parent().removeChildNode(node)
    group.setExpanded(True)
    return moved


class ProductStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles one product layer once Processing has loaded it, and files it under the tile's group.

    Runs on the main thread after the algorithm finished (dialog, runAndLoadResults,
    or as the output of a model). Create instances with :func:`make_styler`.
    """

    def __init__(self, product: str, legend: Legend, group_name: str, run_id: str = "", report: str = "") -> None:
        super().__init__()
        self.product = product
        self.legend = legend
        self.group_name = group_name
        self.run_id = run_id
        self.report = report  # the run's HTML report: its Results Viewer entry gets the tile name

    def postProcessLayer(  # noqa: N802 - QGIS API
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        if self.product == "vector":
            # Processing loads vector outputs without their default style: the GeoPackage holds the class
            # colours as its default style (core/vectorize.py); shown unchecked, like the confidence layers.
            if not isinstance(layer, QgsVectorLayer) or not layer.isValid():
                return
            layer.loadDefaultStyle()
            layer.triggerRepaint()
        elif not style_layer(layer, self.product, self.legend):
            return
        project = (context.project() if context is not None else None) or QgsProject.instance()
        if self.group_name:
            move_into_group(project, layer, self.group_name, self.product, self.run_id)
        if self.report and self.group_name:
            title_results_entry(self.report, self.group_name)


def title_results_entry(report: str, tile_name: str) -> bool:
    """Add the tile name to the Results Viewer entry of ``report``.

    The dialog titles every HTML output with the output's description only ("Segmentation report
    [time]"), before the layers load; this runs after, on the main thread. False when there is no
    such entry (qgis_process, processing.run) or it already names the tile.
    """
    try:
        from processing.core.ProcessingResults import resultsList
    except ImportError:
        return False
    for entry in reversed(resultsList.getResults()):
        if entry.filename == report and tile_name not in entry.name:
            entry.name = f"{entry.name}: {tile_name}"
            resultsList.resultAdded.emit()  # the Results Viewer refills its list from resultsList
            return True
    return False


#: Processing keeps only a raw pointer to a post-processor and the algorithm instance that
#: registered it is a clone destroyed before the layers load, so the Python object must be
#: kept alive here (same work-around as QuickOSM). Bounded: a batch run registers 5 per tile.
_KEEP_ALIVE: deque = deque(maxlen=500)


def make_styler(product: str, legend: Legend, group_name: str, run_id: str = "", report: str = "") -> ProductStyler:
    """A :class:`ProductStyler` that survives until Processing calls it."""
    styler = ProductStyler(product, legend, group_name, run_id, report)
    _KEEP_ALIVE.append(styler)
    return styler
