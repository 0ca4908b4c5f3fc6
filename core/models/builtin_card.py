"""The card of the built-in model (:mod:`.builtin`), importable without torch: the model list
of the QGIS dialog and ``s2seg models`` read it without loading the engine."""
from __future__ import annotations

from ..nomenclature import BIGEARTHNET19_COLOURS, BIGEARTHNET19_NAMES
from .card import ModelCard

#: 10 m pixels: "open water" is measured over the 31 × 31 px (310 m) square around a pixel, the widest
#: context the built-in model uses, so this is its receptive field (one pass per pixel, no blending)
OPEN_WATER_RADIUS = 15

BUILTIN_CARD = ModelCard(
    name="builtin",
    format="builtin",
    bands=("B02", "B03", "B04", "B08", "B11"),
    patch_size=120,
    class_names=BIGEARTHNET19_NAMES,
    class_colours=BIGEARTHNET19_COLOURS,
    output_kind="dense",
    activation="softmax",
    input_scale="reflectance",
    resampling="bilinear",
    levels=("L1C", "L2A"),
    description=("Spectral prototype classifier (NDVI, MNDWI/NDSI, NDBI, brightness, NIR, blue/red, open-water extent) whose "
                 "prototypes spread their probability where spectra cannot decide (snow, cloud); no weights needed."),
    licence="GPL-2.0-or-later (part of s2seg)",
    source="s2seg built-in",
    receptive_field=OPEN_WATER_RADIUS,
)
BUILTIN_CARDS = {BUILTIN_CARD.name: BUILTIN_CARD}
