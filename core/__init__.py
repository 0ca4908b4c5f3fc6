"""s2seg engine: QGIS-free segmentation of whole Sentinel-2 tiles.

Nothing below this package imports qgis. The public entry points are
:func:`s2seg.core.pipeline.segment` and the ``s2seg`` command line
(:mod:`s2seg.core.cli`).
"""

import os

__version__ = "0.1.0"

#: How idle OpenMP threads wait (torch's intra-op team, libgomp). By default they spin for milliseconds
#: after every parallel region, taking a core from the engine's other stages (reader, writer, journal), which
#: run beside the model: on a loaded 2-core machine a 5040² built-in run spent 15 % more CPU seconds and
#: 12–22 % more wall time spinning; quiet, a ResNet-50 on the CPU ran as fast either way
#: (docs/benchmark-notes.md). libgomp reads it when torch loads it, so it is set on importing the engine,
#: before torch; a value the user set is kept, and a process that loaded torch first is unchanged.
OMP_WAIT_POLICY = "PASSIVE"
os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
