"""s2seg engine: QGIS-free segmentation of whole Sentinel-2 tiles.

Nothing below this package imports qgis. The public entry points are
:func:`s2seg.core.pipeline.segment` and the ``s2seg`` command line
(:mod:`s2seg.core.cli`).
"""

__version__ = "0.1.0"
