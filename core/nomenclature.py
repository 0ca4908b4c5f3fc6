"""Class nomenclatures: the single source of class names and colours.

BigEarthNet-19: names in the alphabetical order used by the BigEarthNet v2 (reBEN)
models, colours of the CORINE Land Cover legend. Cloud/shadow: the classes of the
ukis-csmask models in their output order (0 background, 1 cloud, 2 cloud shadow).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LandCoverClass:
    """One class of a nomenclature: its index, name and display colour."""

    index: int
    name: str
    colour: str  # "#RRGGBB"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return hex_to_rgb(self.colour)


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    """``"#E6004D"`` → ``(230, 0, 77)``."""
    value = colour.lstrip("#")
    if len(value) != 6:
        raise ValueError(f"colour {colour!r} is not of the form #RRGGBB")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


_BIGEARTHNET19 = (
    ("Agro-forestry areas", "#F2CCA6"),
    ("Arable land", "#FFFFA8"),
    ("Beaches, dunes, sands", "#E6E6E6"),
    ("Broad-leaved forest", "#80FF00"),
    ("Coastal wetlands", "#CCCCFF"),
    ("Complex cultivation patterns", "#FFE64D"),
    ("Coniferous forest", "#00A600"),
    ("Industrial or commercial units", "#CC4DF2"),
    ("Inland waters", "#80F2E6"),
    ("Inland wetlands", "#A6A6FF"),
    ("Land principally occupied by agriculture, with significant areas of natural vegetation", "#E6CC4D"),
    ("Marine waters", "#E6F2FF"),
    ("Mixed forest", "#4DFF00"),
    ("Moors, heathland and sclerophyllous vegetation", "#A6FF80"),
    ("Natural grassland and sparsely vegetated areas", "#CCF24D"),
    ("Pastures", "#E6E64D"),
    ("Permanent crops", "#E68000"),
    ("Transitional woodland, shrub", "#A6F200"),
    ("Urban fabric", "#E6004D"),
)



def format_share(share: float) -> str:
    """A class's share of the valid pixels as every product shows it (preview legend, reports):
    one decimal, "< 0.1 %" for a class present but below it, "–" for no share (NaN)."""
    if share != share:  # NaN: a class without pixels
        return "–"
    if 0.0 < share < 0.0005:
        return "< 0.1 %"
    return f"{100.0 * share:.1f} %"


def _nomenclature(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[LandCoverClass, ...], tuple[str, ...], tuple[str, ...]]:
    """(name, colour) pairs → the classes, their names and their colours, in order."""
    classes = tuple(LandCoverClass(i, name, colour) for i, (name, colour) in enumerate(pairs))
    return classes, tuple(c.name for c in classes), tuple(c.colour for c in classes)


BIGEARTHNET19, BIGEARTHNET19_NAMES, BIGEARTHNET19_COLOURS = _nomenclature(_BIGEARTHNET19)

_CLOUD_SHADOW = (
    ("Clear", "#7FB069"),  # the model's "background": neither cloud nor shadow
    ("Cloud", "#FFFFFF"),
    ("Cloud shadow", "#4D4D66"),
)
CLOUD_SHADOW, CLOUD_SHADOW_NAMES, CLOUD_SHADOW_COLOURS = _nomenclature(_CLOUD_SHADOW)


def class_index(name: str) -> int:
    """Index of a BigEarthNet-19 class by its exact name."""
    try:
        return BIGEARTHNET19_NAMES.index(name)
    except ValueError:
        raise KeyError(f"{name!r} is not a BigEarthNet-19 class") from None


#: Label groups of BigEarthNet-19: what a spectral model can be judged on (the evaluation in
#: ``benchmarks/evaluate.py`` scores models by group; the README's limits speak of groups).
LABEL_GROUPS: dict[str, tuple[str, ...]] = {
    "water": ("Marine waters", "Inland waters"),
    "forest": ("Broad-leaved forest", "Coniferous forest", "Mixed forest", "Transitional woodland, shrub"),
    "agriculture": ("Arable land", "Pastures", "Permanent crops", "Complex cultivation patterns",
                    "Land principally occupied by agriculture, with significant areas of natural vegetation",
                    "Agro-forestry areas"),
    "urban": ("Urban fabric", "Industrial or commercial units"),
    "wetland": ("Inland wetlands", "Coastal wetlands"),
    "open land": ("Beaches, dunes, sands", "Natural grassland and sparsely vegetated areas",
                  "Moors, heathland and sclerophyllous vegetation"),
}


def group_of(name: str) -> str:
    """The label group of a BigEarthNet-19 class (see :data:`LABEL_GROUPS`)."""
    for group, names in LABEL_GROUPS.items():
        if name in names:
            return group
    raise KeyError(f"{name!r} is not a BigEarthNet-19 class")
