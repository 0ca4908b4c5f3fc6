"""Model cards: everything the engine needs to know about a model, read from JSON.

The engine reads only the card and never guesses: band order, patch size,
normalisation, resampling of 20/60 m bands, output kind, activation and the
class nomenclature all come from here.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from ..bands import BAND_BY_ID, normalise_band_id
from ..errors import ModelError
from .jsonfile import read_json_object

FORMATS = ("builtin", "ben-v2", "torchscript", "onnx")
OUTPUT_KINDS = ("patch", "dense")
ACTIVATIONS = ("sigmoid", "softmax", "none")
RESAMPLINGS = ("nearest", "bilinear")
#: "dn": values as in L2A/L1C products with the baseline offset removed (reflectance × 10000);
#: "reflectance": the same divided by 10000.
INPUT_SCALES = {"dn": 1.0, "reflectance": 1e-4}
LEVELS = ("L1C", "L2A")
#: The tile's pixel (m): outputs are always written on the 10 m grid.
BASE_RESOLUTION = 10
#: Coarsest model pixel accepted (the 60 m bands' resolution).
MAX_RESOLUTION = 60

#: Classes are indices in a uint8 raster whose 255 is nodata.
MAX_CLASSES = 255
_HEX_COLOUR = re.compile(r"#[0-9A-Fa-f]{6}")
_BAND_EXAMPLE = '["B04", "B03", "B02"]'

# --- field checks: one per card field, each sees the value as given (JSON or Python) -----------------
#: A check takes the field name and its value and returns what is wrong, as a whole sentence, or None.
FieldCheck = Callable[[str, Any], "str | None"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_list(value: Any) -> bool:
    # A string is a sequence too, but never a list of bands or classes: "B02" is not ["B", "0", "2"].
    return isinstance(value, (list, tuple))


def _text(name: str, value: Any) -> str | None:
    return None if isinstance(value, str) else f"{name} must be a string, got {value!r}"


def _name(name: str, value: Any) -> str | None:
    if not isinstance(value, str):
        return f"model card name must be a string, got {value!r}"
    return None if value else "model card has an empty name"


def _one_of(choices: Iterable[str]) -> FieldCheck:
    choices = tuple(choices)

    def check(name: str, value: Any) -> str | None:
        return None if isinstance(value, str) and value in choices else f"{name} must be one of {', '.join(choices)}, got {value!r}"

    return check


def _list_of_text(name: str, value: Any) -> str | None:
    if not _is_list(value):
        return f"{name} must be a list of strings, got {value!r}"
    if not value:
        return f"{name} is empty"
    for i, item in enumerate(value):
        if not isinstance(item, str):
            return f"{name}[{i}] must be a string, got {item!r} ({type(item).__name__})"
        if not item.strip():
            return f"{name}[{i}] is blank"
    return None


def _bands(name: str, value: Any) -> str | None:
    if not _is_list(value):
        return f"{name} must be a list of Sentinel-2 band ids such as {_BAND_EXAMPLE}, got {value!r}"
    if not value:
        return f"{name} is empty"
    for i, item in enumerate(value):
        if not isinstance(item, str):
            return f"{name}[{i}] must be a band id string such as \"B04\", got {item!r}"
    unknown = [b for b in (normalise_band_id(b) for b in value) if b not in BAND_BY_ID]
    if unknown:
        return f"unknown Sentinel-2 band ids {unknown}; Sentinel-1 or other inputs are not supported on Sentinel-2 tiles"
    return None


def _colours(name: str, value: Any) -> str | None:
    if not _is_list(value):
        return f"{name} must be a list of #RRGGBB colours, got {value!r}"
    for i, item in enumerate(value):
        if not (isinstance(item, str) and _HEX_COLOUR.fullmatch(item)):
            return f"colour {item!r} is not of the form #RRGGBB ({name}[{i}])"
    return None


def _numbers(positive: bool) -> FieldCheck:
    def check(name: str, value: Any) -> str | None:
        if not _is_list(value):
            return f"{name} must be a list of numbers, one per band, got {value!r}"
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
                return f"{name}[{i}] must be a finite number, got {item!r}"
        if positive and any(v <= 0 for v in value):
            return f"{name} values must be positive, got {list(value)}"
        return None

    return check


def _patch_size(name: str, value: Any) -> str | None:
    if _is_int(value) and value >= 12 and value % 2 == 0:
        return None
    return f"{name} must be an even number of pixels ≥ 12, got {value!r}"


def _resolution(name: str, value: Any) -> str | None:
    if _is_int(value) and BASE_RESOLUTION <= value <= MAX_RESOLUTION and value % BASE_RESOLUTION == 0:
        return None
    return (f"{name} must be a multiple of {BASE_RESOLUTION} m from {BASE_RESOLUTION} to {MAX_RESOLUTION} m "
            f"(the model's pixel is a whole block of 10 m pixels), got {value!r}")


def _levels(name: str, value: Any) -> str | None:
    if _is_list(value) and value and all(isinstance(v, str) and v in LEVELS for v in value):
        return None
    shown = list(value) if _is_list(value) else value
    return f"{name} must be a non-empty subset of {LEVELS}, got {shown!r}"


#: Largest receptive field radius accepted (10 m pixels): a halo of this much around every chunk.
MAX_RECEPTIVE_FIELD = 512


def _receptive_field(name: str, value: Any) -> str | None:
    if _is_int(value) and 0 <= value <= MAX_RECEPTIVE_FIELD:
        return None
    return (f"{name} must be a whole number of 10 m pixels from 0 (not declared: overlapping patches, blended) "
            f"to {MAX_RECEPTIVE_FIELD}, got {value!r}")


def _mapping(name: str, value: Any) -> str | None:
    return None if isinstance(value, dict) else f"{name} must be a JSON object, got {value!r}"


#: Card field → its check; every field of :class:`ModelCard` has one (a test keeps them in step).
FIELD_CHECKS: dict[str, FieldCheck] = {
    "name": _name,
    "format": _one_of(FORMATS),
    "bands": _bands,
    "patch_size": _patch_size,
    "class_names": _list_of_text,
    "class_colours": _colours,
    "output_kind": _one_of(OUTPUT_KINDS),
    "activation": _one_of(ACTIVATIONS),
    "resolution": _resolution,
    "input_scale": _one_of(INPUT_SCALES),
    "mean": _numbers(positive=False),
    "std": _numbers(positive=True),
    "resampling": _one_of(RESAMPLINGS),
    "levels": _levels,
    "path": _text,
    "description": _text,
    "licence": _text,
    "source": _text,
    "extra": _mapping,
    "receptive_field": _receptive_field,
}


@dataclass(frozen=True)
class ModelCard:
    """Description of one model, as stored in a ``*.card.json`` file."""

    name: str
    format: str
    bands: tuple[str, ...]
    patch_size: int
    class_names: tuple[str, ...]
    class_colours: tuple[str, ...]
    output_kind: str = "patch"
    activation: str = "softmax"
    #: metres per model pixel, a multiple of 10: a 30 m model sees 3 × 3 blocks of 10 m pixels
    #: (averaged), and its outputs are interpolated back onto the 10 m grid
    resolution: int = 10
    input_scale: str = "dn"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    resampling: str = "nearest"
    levels: tuple[str, ...] = LEVELS
    #: Weights file or folder; relative paths are relative to the card file.
    path: str = ""
    description: str = ""
    licence: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: Per-pixel / fully convolutional models: the radius (10 m pixels) of the neighbourhood an output
    #: pixel depends on. The engine then runs each chunk plus this halo once, without overlapping
    #: patches or blending (any input size; ``patch_size`` is ignored). 0: not declared.
    receptive_field: int = 0

    def __post_init__(self) -> None:
        # Types first, on the values as given: a band list written as the string "B02" would
        # otherwise be iterated as the bands "B", "0", "2", and an integer class name would pass
        # here and crash only when the finished class raster is labelled.
        self._check_fields()
        object.__setattr__(self, "bands", tuple(normalise_band_id(b) for b in self.bands))
        for name in ("class_names", "class_colours", "mean", "std", "levels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        self.validate()

    # --- checks -----------------------------------------------------------------
    def _who(self) -> str:
        return f"model card {self.name!r}" if isinstance(self.name, str) and self.name else "model card"

    def _check_fields(self) -> None:
        """Each field on its own (type, allowed values), by :data:`FIELD_CHECKS`."""
        for f in fields(self):
            problem = FIELD_CHECKS[f.name](f.name, getattr(self, f.name))
            if problem:
                raise ModelError(f"{self._who()}: {problem}" if f.name != "name" else problem)

    def validate(self) -> None:
        """Raise :class:`ModelError` naming the model and the inconsistent field."""
        self._check_fields()
        who = self._who()
        if len(set(self.bands)) != len(self.bands):
            raise ModelError(f"{who}: bands contain duplicates: {list(self.bands)}")
        if len(self.class_names) > MAX_CLASSES:
            raise ModelError(f"{who}: at most {MAX_CLASSES} classes fit the uint8 class raster, got {len(self.class_names)}")
        if len(self.class_colours) != len(self.class_names):
            raise ModelError(f"{who}: {len(self.class_names)} class names but {len(self.class_colours)} class colours")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values and len(values) != len(self.bands):
                raise ModelError(f"{who}: {name} has {len(values)} values for {len(self.bands)} bands")
        if bool(self.mean) != bool(self.std):
            raise ModelError(f"{who}: give both mean and std, or neither")
        if self.receptive_field and (self.output_kind != "dense" or self.resolution != BASE_RESOLUTION):
            raise ModelError(f"{who}: receptive_field is for dense models at {BASE_RESOLUTION} m (one output per "
                             f"input pixel), but output_kind is {self.output_kind!r} and resolution {self.resolution} m")

    # --- derived ----------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def stride(self) -> int:
        return self.patch_size // 2

    @property
    def pixel_factor(self) -> int:
        """10 m pixels per model pixel along each axis (3 for a 30 m model)."""
        return self.resolution // BASE_RESOLUTION

    @property
    def footprint(self) -> int:
        """Edge of one patch in 10 m pixels."""
        return self.patch_size * self.pixel_factor

    @property
    def scale_factor(self) -> float:
        return INPUT_SCALES[self.input_scale]

    # --- JSON -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, origin: str = "model card") -> "ModelCard":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"{origin}: unknown fields {unknown}; known fields: {sorted(known)}")
        missing = [f.name for f in fields(cls) if f.name in ("name", "format", "bands", "patch_size", "class_names", "class_colours") and f.name not in data]
        if missing:
            raise ModelError(f"{origin}: missing required fields {missing}")
        try:
            return cls(**data)
        except ModelError as exc:
            raise ModelError(f"{origin}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{origin}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path, defaults: dict[str, Any] | None = None) -> "ModelCard":
        """Read a card file; ``defaults`` (fields derived from the model's own metadata)
        fill the fields the file leaves out, so a sidecar card may be partial."""
        path = Path(path)
        data = read_json_object(path, "model card")
        if defaults:
            data = {**defaults, **data}
        card = cls.from_dict(data, origin=f"model card {path}")
        if card.path and not Path(card.path).is_absolute():
            card = cls.from_dict({**card.to_dict(), "path": str((path.parent / card.path).resolve())}, origin=f"model card {path}")
        return card
