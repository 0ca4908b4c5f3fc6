"""Model cards: everything the engine needs to know about a model, read from JSON.

The engine reads only the card and never guesses: band order, patch size,
normalisation, resampling of 20/60 m bands, output kind, activation and the
class nomenclature all come from here.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..bands import BAND_BY_ID, normalise_band_id
from ..errors import ModelError
from ..nomenclature import hex_to_rgb

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", tuple(normalise_band_id(b) for b in self.bands))
        for name in ("class_names", "class_colours", "mean", "std", "levels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        self.validate()

    # --- checks -----------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ModelError` naming the model and the inconsistent field."""
        who = f"model card {self.name!r}"
        if not self.name:
            raise ModelError("model card has an empty name")
        if self.format not in FORMATS:
            raise ModelError(f"{who}: format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not self.bands:
            raise ModelError(f"{who}: bands is empty")
        unknown = [b for b in self.bands if b not in BAND_BY_ID]
        if unknown:
            raise ModelError(f"{who}: unknown Sentinel-2 band ids {unknown}; Sentinel-1 or other inputs are not supported on Sentinel-2 tiles")
        if len(set(self.bands)) != len(self.bands):
            raise ModelError(f"{who}: bands contain duplicates: {list(self.bands)}")
        if not isinstance(self.patch_size, int) or self.patch_size < 12 or self.patch_size % 2:
            raise ModelError(f"{who}: patch_size must be an even number of pixels ≥ 12, got {self.patch_size!r}")
        if (isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or self.resolution < BASE_RESOLUTION
                or self.resolution % BASE_RESOLUTION or self.resolution > MAX_RESOLUTION):
            raise ModelError(f"{who}: resolution must be a multiple of {BASE_RESOLUTION} m from {BASE_RESOLUTION} to "
                             f"{MAX_RESOLUTION} m (the model's pixel is a whole block of 10 m pixels), got {self.resolution!r}")
        if not self.class_names:
            raise ModelError(f"{who}: class_names is empty")
        if len(self.class_names) > 255:
            raise ModelError(f"{who}: at most 255 classes fit the uint8 class raster, got {len(self.class_names)}")
        if len(self.class_colours) != len(self.class_names):
            raise ModelError(f"{who}: {len(self.class_names)} class names but {len(self.class_colours)} class colours")
        for colour in self.class_colours:
            try:
                hex_to_rgb(colour)
            except ValueError as exc:
                raise ModelError(f"{who}: {exc}") from None
        if self.output_kind not in OUTPUT_KINDS:
            raise ModelError(f"{who}: output_kind must be one of {', '.join(OUTPUT_KINDS)}, got {self.output_kind!r}")
        if self.activation not in ACTIVATIONS:
            raise ModelError(f"{who}: activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.input_scale not in INPUT_SCALES:
            raise ModelError(f"{who}: input_scale must be one of {', '.join(INPUT_SCALES)}, got {self.input_scale!r}")
        if self.resampling not in RESAMPLINGS:
            raise ModelError(f"{who}: resampling must be one of {', '.join(RESAMPLINGS)}, got {self.resampling!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values and len(values) != len(self.bands):
                raise ModelError(f"{who}: {name} has {len(values)} values for {len(self.bands)} bands")
        if bool(self.mean) != bool(self.std):
            raise ModelError(f"{who}: give both mean and std, or neither")
        if any(s <= 0 for s in self.std):
            raise ModelError(f"{who}: std values must be positive, got {list(self.std)}")
        bad_levels = [lv for lv in self.levels if lv not in LEVELS]
        if not self.levels or bad_levels:
            raise ModelError(f"{who}: levels must be a non-empty subset of {LEVELS}, got {list(self.levels)}")

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
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ModelError(f"cannot read model card {path}: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise ModelError(f"model card {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ModelError(f"model card {path} must hold a JSON object")
        if defaults:
            data = {**defaults, **data}
        card = cls.from_dict(data, origin=f"model card {path}")
        if card.path and not Path(card.path).is_absolute():
            card = cls.from_dict({**card.to_dict(), "path": str((path.parent / card.path).resolve())}, origin=f"model card {path}")
        return card
