"""The pretrained Sentinel-2 cloud / cloud-shadow models of ukis-csmask, as model cards.

The ``ukis-csmask`` wheel (DLR, Apache-2.0) ships U-Nets (EfficientNet-B4 encoder)
trained on SPARCS, CloudSEN12+ and DLR samples, one per product level, as ONNX
files with a JSON of their training statistics. s2seg uses the files only (never
imports the package, which pulls in scipy): each 6-band model becomes a card —
"s2-cloud-l2a" and "s2-cloud-l1c" — run by the ONNX loader like any other model.

What the package documents, and the card therefore says: inputs are reflectance
0–1 of blue, green, red, nir, swir16, swir22 (Sentinel-2 B02, B03, B04, B08, B11,
B12), standardised with the JSON's mean/std, in patches of 256 × 256 pixels of
about 30 m; outputs are logits of background (clear), cloud and cloud shadow,
turned into probabilities by a softmax. The engine averages 3 × 3 blocks of 10 m
pixels into the model's 30 m pixels and interpolates the probabilities back to 10 m.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ..bands import BAND_BY_COMMON_NAME
from ..errors import ModelError
from ..nomenclature import CLOUD_SHADOW_COLOURS, CLOUD_SHADOW_NAMES
from .card import ModelCard

PACKAGE = "ukis_csmask"
VERSION = "1.0.0"
INSTALL_HINT = f"pip install --no-deps ukis-csmask=={VERSION}"
#: card name → (product level, file stem inside the package)
MODELS = {"s2-cloud-l2a": ("L2A", "model_6b_l2a"), "s2-cloud-l1c": ("L1C", "model_6b_l1c")}
#: The resolution the models were trained at ("approximately 30 m" in the package's documentation).
RESOLUTION_M = 30


def package_dir() -> Path | None:
    """The installed ``ukis_csmask`` folder, found without importing it; None when not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def card_from_files(name: str, onnx_path: Path, level: str) -> ModelCard:
    """The card of one ukis-csmask model from its ONNX file and the JSON statistics beside it."""
    stats_path = onnx_path.with_suffix(".json")
    try:
        meta = json.loads(stats_path.read_text(encoding="utf-8"))
        data, model = meta["data"], meta["model"]
        statistics = data["dataset_statistics"]
        mean, std = statistics["img"]
        band_names = statistics["band_names"]
        patch_height, patch_width = data["target_size"]
        n_classes = data["classes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read the statistics of {name!r} from {stats_path}: {type(exc).__name__}: {exc}") from None
    unknown = [b for b in band_names if b not in BAND_BY_COMMON_NAME]
    if unknown:
        raise ModelError(f"{stats_path}: band names {unknown} are not Sentinel-2 common names")
    if patch_height != patch_width:
        raise ModelError(f"{stats_path}: target_size {patch_height} × {patch_width} is not square")
    if n_classes != len(CLOUD_SHADOW_NAMES):
        raise ModelError(f"{stats_path}: {n_classes} classes, expected {len(CLOUD_SHADOW_NAMES)} (clear, cloud, cloud shadow)")
    return ModelCard(
        name=name,
        format="onnx",
        bands=tuple(BAND_BY_COMMON_NAME[b].id for b in band_names),
        patch_size=int(patch_height),
        class_names=CLOUD_SHADOW_NAMES,
        class_colours=CLOUD_SHADOW_COLOURS,
        output_kind="dense",
        activation="softmax",
        resolution=RESOLUTION_M,
        input_scale="reflectance",
        mean=tuple(mean),
        std=tuple(std),
        resampling="nearest",  # 20 m bands onto 10 m before the 3 × 3 block means
        levels=(level,),
        path=str(onnx_path),
        description=(f"Cloud and cloud-shadow segmentation for Sentinel-2 {level} (ukis-csmask {model.get('version', '?')}: "
                     f"{model.get('decoder_name', 'unet')} with {model.get('encoder_name', '?')} encoder), at 30 m, "
                     "probabilities interpolated to 10 m."),
        licence="Apache-2.0 (ukis-csmask, German Aerospace Center DLR)",
        source="https://github.com/dlr-eoc/ukis-csmask — Wieland et al. 2019, doi:10.1016/j.rse.2019.05.022",
    )


def cards() -> dict[str, ModelCard]:
    """The cards of the installed ukis-csmask models by name (empty when the wheel is not installed)."""
    folder = package_dir()
    if folder is None:
        return {}
    found = {}
    for name, (level, stem) in MODELS.items():
        path = folder / f"{stem}.onnx"
        if path.is_file():
            found[name] = card_from_files(name, path, level)
    return found


def missing_message(name: str) -> str | None:
    """For a ukis-csmask card name when the wheel is not installed: how to install it."""
    if name in MODELS:
        return f"model {name!r} needs the ukis-csmask model files: {INSTALL_HINT}"
    return None
