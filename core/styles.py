"""Style files beside the products, without QGIS: ``.qml`` (QGIS) and ``.sld`` (GeoServer, MapServer).

The one definition of how each product looks: class colours and names come from the model
card (which takes them from :mod:`.nomenclature`); the confidence ramps are :data:`RED_TO_GREEN`
on fixed bounds (:func:`product_ramp`). ``s2seg_plugin/styling.py`` builds its QGIS renderers
from the same ramps, so a layer styled in QGIS and a style file read elsewhere agree.

Confidence rasters share one colour language: red means doubt. Max probability and gap run
red (0) → green (1); entropy runs green (0 bits) → red (log₂ C bits).
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .atomic import write_atomic
from .nomenclature import hex_to_rgb
from .scl import MASK_CLASSES, MASK_COLOURS

#: ColorBrewer RdYlGn (5 classes): red = doubt, green = confidence.
RED_TO_GREEN: tuple[str, ...] = ("#d7191c", "#fdae61", "#ffffbf", "#a6d96a", "#1a9641")
UNCERTAIN, CONFIDENT = "(uncertain)", "(confident)"
#: QGIS version written into the .qml files (the oldest the plugin supports reads them).
QGIS_VERSION = "3.22.0"
_SLD_NS = "http://www.opengis.net/sld"


@dataclass(frozen=True)
class Ramp:
    """An interpolated colour ramp on fixed bounds (not the layer's statistics, so two tiles or two
    models compare at a glance and the legend reads in the product's own units)."""

    minimum: float
    maximum: float
    invert: bool = False  # green → red
    low_label: str = ""
    high_label: str = ""

    @property
    def colours(self) -> tuple[str, ...]:
        return tuple(reversed(RED_TO_GREEN)) if self.invert else RED_TO_GREEN

    def stops(self) -> list[tuple[float, str, str]]:
        """``(value, #rrggbb, label)`` at evenly spaced values, the end labels saying which end is doubt."""
        colours = self.colours
        stops = []
        for i, colour in enumerate(colours):
            value = self.minimum + (self.maximum - self.minimum) * i / (len(colours) - 1)
            label = f"{value:.2f}"
            if i == 0 and self.low_label:
                label += f" {self.low_label}"
            elif i == len(colours) - 1 and self.high_label:
                label += f" {self.high_label}"
            stops.append((value, colour, label))
        return stops


def max_entropy(num_classes: int) -> float:
    """Upper bound of the entropy product in bits: log₂ C."""
    return math.log2(num_classes) if num_classes > 1 else 1.0


def product_ramp(product: str, num_classes: int) -> Ramp | None:
    """The ramp of a confidence product; None for products drawn otherwise (class, probs) or unknown."""
    if product in ("maxprob", "gap"):
        return Ramp(0.0, 1.0, low_label=UNCERTAIN, high_label=CONFIDENT)
    if product == "entropy":
        return Ramp(0.0, max_entropy(num_classes), invert=True, low_label=CONFIDENT, high_label=UNCERTAIN)
    return None


# --- QML (QGIS) --------------------------------------------------------------------------------------
def _qml_root() -> ET.Element:
    return ET.Element("qgis", version=QGIS_VERSION, styleCategories="AllStyleCategories")


def _qml_text(root: ET.Element) -> str:
    ET.indent(root)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, encoding="unicode") + "\n"


def raster_qml(product: str, names: Sequence[str], colours: Sequence[str]) -> str | None:
    """QGIS style of a raster product (None for a product without a style)."""
    root = _qml_root()
    pipe = ET.SubElement(root, "pipe")
    ramp = product_ramp(product, len(names))
    if product == "mask":  # the mask's own classes, whatever the model
        names, colours = MASK_CLASSES, MASK_COLOURS
    if product in ("class", "mask"):
        renderer = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1",
                                 nodataColor="")
        palette = ET.SubElement(renderer, "colorPalette")
        for index, (name, colour) in enumerate(zip(names, colours)):
            ET.SubElement(palette, "paletteEntry", value=str(index), color=colour.lower(), alpha="255", label=name)
    elif ramp is not None:
        renderer = ET.SubElement(pipe, "rasterrenderer", type="singlebandpseudocolor", band="1", opacity="1",
                                 alphaBand="-1", classificationMin=repr(ramp.minimum),
                                 classificationMax=repr(ramp.maximum), nodataColor="")
        shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader",
                               colorRampType="INTERPOLATED", classificationMode="1", clip="0",
                               minimumValue=repr(ramp.minimum), maximumValue=repr(ramp.maximum))
        for value, colour, label in ramp.stops():
            ET.SubElement(shader, "item", value=repr(value), color=colour, alpha="255", label=label)
    elif product == "probs":  # band 1 in grey on the probability range
        renderer = ET.SubElement(pipe, "rasterrenderer", type="singlebandgray", grayBand="1", opacity="1",
                                 alphaBand="-1", gradient="BlackToWhite", nodataColor="")
        enhancement = ET.SubElement(renderer, "contrastEnhancement")
        ET.SubElement(enhancement, "minValue").text = "0"
        ET.SubElement(enhancement, "maxValue").text = "1"
        ET.SubElement(enhancement, "algorithm").text = "StretchToMinimumMaximum"
    else:
        return None
    return _qml_text(root)


def vector_qml(names: Sequence[str], colours: Sequence[str], field: str) -> str:
    """QGIS style of the polygons: one fill per class value of ``field``, the class colours, no outline."""
    root = _qml_root()
    renderer = ET.SubElement(root, "renderer-v2", type="categorizedSymbol", attr=field, symbollevels="0",
                             enableorderby="0", forceraster="0")
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for index, (name, colour) in enumerate(zip(names, colours)):
        ET.SubElement(categories, "category", value=str(index), symbol=str(index), label=name, render="true")
        symbol = ET.SubElement(symbols, "symbol", type="fill", name=str(index), alpha="1", clip_to_extent="1",
                               force_rhr="0")
        layer = ET.SubElement(symbol, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0", "pass": "0"})
        rgb = ",".join(str(v) for v in hex_to_rgb(colour))
        for key, value in (("color", f"{rgb},255"), ("style", "solid"), ("outline_style", "no"),
                           ("outline_color", "35,35,35,255"), ("outline_width", "0")):
            ET.SubElement(layer, "prop", k=key, v=value)
    return _qml_text(root)


# --- SLD (OGC Styled Layer Descriptor 1.0.0) ---------------------------------------------------------
def raster_sld(product: str, layer_name: str, names: Sequence[str], colours: Sequence[str]) -> str | None:
    """SLD of a raster product: a value colour map for the class raster, a ramp for confidence (None
    for a product without a style)."""
    ramp = product_ramp(product, len(names))
    if product == "mask":  # the mask's own classes, whatever the model
        names, colours = MASK_CLASSES, MASK_COLOURS
    if product in ("class", "mask"):
        entries = [(str(i), colour, name) for i, (name, colour) in enumerate(zip(names, colours))]
        kind = "values"
    elif ramp is not None:
        entries = [(repr(value), colour, label) for value, colour, label in ramp.stops()]
        kind = "ramp"
    else:
        return None
    ET.register_namespace("", _SLD_NS)
    q = lambda tag: f"{{{_SLD_NS}}}{tag}"  # noqa: E731
    root = ET.Element(q("StyledLayerDescriptor"), version="1.0.0")
    layer = ET.SubElement(root, q("NamedLayer"))
    ET.SubElement(layer, q("Name")).text = layer_name
    style = ET.SubElement(layer, q("UserStyle"))
    ET.SubElement(style, q("Name")).text = f"s2seg {product}"
    ET.SubElement(style, q("Title")).text = f"s2seg {product}"
    symbolizer = ET.SubElement(ET.SubElement(ET.SubElement(style, q("FeatureTypeStyle")), q("Rule")),
                               q("RasterSymbolizer"))
    ET.SubElement(symbolizer, q("Opacity")).text = "1.0"
    colour_map = ET.SubElement(symbolizer, q("ColorMap"), type=kind)
    for quantity, colour, label in entries:
        ET.SubElement(colour_map, q("ColorMapEntry"), color=colour.lower(), quantity=quantity, label=label, opacity="1")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_style_sidecars(products: Mapping[str, Path], names: Sequence[str], colours: Sequence[str]) -> dict[str, Path]:
    """Write ``<raster>.qml`` and ``<raster>.sld`` beside every product that has a style (atomically);
    returns ``"<product>.qml"``/``"<product>.sld"`` → written file."""
    written: dict[str, Path] = {}
    for product, raster in products.items():
        raster = Path(raster)
        for suffix, text in ((".qml", raster_qml(product, names, colours)),
                             (".sld", raster_sld(product, raster.stem, names, colours))):
            if text is not None:
                target = raster.with_suffix(suffix)
                write_atomic(target, text)
                written[f"{product}{suffix}"] = target
    return written


#: The columns of QGIS's ``layer_styles`` table (what QGIS reads a GeoPackage layer's default style from).
_LAYER_STYLES_COLUMNS = ("f_table_catalog", "f_table_schema", "f_table_name", "f_geometry_column", "styleName",
                         "styleQML", "styleSLD", "useAsDefault", "description", "owner", "ui", "update_time")


def store_default_style(ds, layer, qml: str, name: str, description: str) -> None:
    """Store ``qml`` as the default QGIS style of ``layer`` in the open OGR GeoPackage ``ds``: QGIS
    applies it whenever the file is opened, from the plugin or by hand."""
    from osgeo import ogr

    table = ds.CreateLayer("layer_styles", None, ogr.wkbNone)
    for column in _LAYER_STYLES_COLUMNS:
        kind = {"useAsDefault": ogr.OFTInteger, "update_time": ogr.OFTDateTime}.get(column, ogr.OFTString)
        definition = ogr.FieldDefn(column, kind)
        if column == "useAsDefault":
            definition.SetSubType(ogr.OFSTBoolean)
        table.CreateField(definition)
    feature = ogr.Feature(table.GetLayerDefn())
    for column, value in (("f_table_catalog", ""), ("f_table_schema", ""), ("f_table_name", layer.GetName()),
                          ("f_geometry_column", layer.GetGeometryColumn()), ("styleName", name), ("styleQML", qml),
                          ("styleSLD", ""), ("useAsDefault", 1), ("description", description), ("owner", ""),
                          ("ui", "")):
        feature.SetField(column, value)
    table.CreateFeature(feature)
