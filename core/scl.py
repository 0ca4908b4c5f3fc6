"""The classes of the cloud/shadow/snow mask and the ESA Scene Classification codes they come from.

Light on purpose (no numpy or GDAL): styles, the QGIS plugin and the writer share these names
and colours; :mod:`.mask` computes the mask.
"""
from __future__ import annotations

#: Mask codes of ``<tile>_mask.tif``, in this order; :data:`MASK_NODATA` where the input has no data.
CLEAR, CLOUD, CIRRUS, SHADOW, SNOW = range(5)
MASK_CLASSES = ("clear", "cloud", "thin cirrus", "cloud shadow", "snow/ice")
MASK_COLOURS = ("#c8e6a0", "#ffffff", "#9ecae1", "#3c3c3c", "#00e5ff")
MASK_NODATA = 255
#: Classes under which the land cover is set to nodata. Thin cirrus is flagged only: the ground
#: shows through it and land-cover models still see it.
HIDDEN = (CLOUD, SHADOW, SNOW, MASK_NODATA)

#: ESA Scene Classification (SCL) codes that are not clear ground, → mask code: 0 no data and
#: 1 saturated/defective → nodata, 3 cloud shadow, 8/9 cloud medium/high probability, 10 thin
#: cirrus, 11 snow/ice. The rest (2 dark area, 4 vegetation, 5 not vegetated, 6 water,
#: 7 unclassified) is clear.
SCL_CODES = {0: MASK_NODATA, 1: MASK_NODATA, 3: SHADOW, 8: CLOUD, 9: CLOUD, 10: CIRRUS, 11: SNOW}
