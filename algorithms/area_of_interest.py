"""QGIS area-of-interest parameters → the engine's AOI string (:mod:`s2seg.core.aoi`).

An Extent parameter (typed, drawn on the canvas or taken from a layer, as QGIS offers) becomes
``xmin,ymin,xmax,ymax,<its CRS>``; a polygon layer becomes its OGR data source
(``path|layername=…|subset=…``, what ``QgsVectorLayer.source()`` holds for a file layer) or, for
a layer that is not a file (a memory or database layer), a GeoPackage written to the Processing
temporary folder.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Optional

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransformContext,
    QgsProcessingException,
    QgsProcessingUtils,
    QgsRectangle,
    QgsVectorFileWriter,
    QgsVectorLayer,
)


def extent_aoi(rectangle: QgsRectangle, crs: QgsCoordinateReferenceSystem) -> Optional[str]:
    """``xmin,ymin,xmax,ymax[,CRS]`` of an extent; None for an empty (unset) one."""
    if rectangle is None or rectangle.isNull() or rectangle.isEmpty():
        return None
    text = f"{rectangle.xMinimum()!r},{rectangle.yMinimum()!r},{rectangle.xMaximum()!r},{rectangle.yMaximum()!r}"
    if crs is not None and crs.isValid():
        text += "," + (crs.authid() or crs.toWkt())
    return text


def layer_aoi(layer: Optional[QgsVectorLayer], transform_context: QgsCoordinateTransformContext) -> Optional[str]:
    """The AOI string of a polygon layer (None when no layer is given)."""
    if layer is None:
        return None
    if layer.providerType() == "ogr" and Path(layer.source().split("|", 1)[0]).is_file():
        return layer.source()
    path = Path(QgsProcessingUtils.tempFolder()) / f"s2seg_aoi_{uuid.uuid4().hex}.gpkg"
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    error, message, *_ = QgsVectorFileWriter.writeAsVectorFormatV3(layer, str(path), transform_context, options)
    if error != QgsVectorFileWriter.NoError:
        raise QgsProcessingException(f"cannot save the area of interest layer {layer.name()!r} to {path}: {message}")
    return str(path)
