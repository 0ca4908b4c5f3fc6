"""BigEarthNet v2 (reBEN) checkpoints: a folder with ``config.json`` + ``model.safetensors``.

The BIFOLD group (TU Berlin) publishes timm models trained on BigEarthNet v2.0
(reBEN) for the 19-class CORINE nomenclature on Hugging Face, one repository per
architecture, modality and version, e.g. ``BIFOLD-BigEarthNetv2-0/resnet50-s2-v0.2.0``.
To use one with s2seg, download the folder once and point s2seg at it::

    huggingface-cli download BIFOLD-BigEarthNetv2-0/resnet50-s2-v0.2.0 \\
        --local-dir ~/models/resnet50-s2-v0.2.0
    s2seg segment TILE OUT --model ~/models/resnet50-s2-v0.2.0

(in QGIS: choose the folder as the model). Only the Sentinel-2 (``-s2-``) models fit
a Sentinel-2 tile; ``-s1-`` and ``-all-`` models also need Sentinel-1 VV/VH bands
and are refused.

The folder is loaded without configilm: the architecture is rebuilt with
``timm.create_model`` and the weights are read with safetensors (no pickle) and
loaded strictly. The version (``v0.1.1`` or ``v0.2.0``, from ``config.json`` or the
folder name, default ``v0.2.0``) decides the band order. A sidecar card
``<folder>.card.json`` next to the folder overrides any derived field.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ModelError
from ..nomenclature import BIGEARTHNET19_COLOURS, BIGEARTHNET19_NAMES
from .card import ModelCard
from .jsonfile import read_json_object
from .runlog import Log, forward_warnings
from .sidecar import sidecar_card_path

if TYPE_CHECKING:  # torch is imported by the functions that need it: the model zoo reads configs without it
    import torch

    from .base import TorchModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: reBEN wraps the timm model as ``model`` (BigEarthNetv2_0_ImageClassifier) → ``vision_encoder`` (ConfigILM).
KEY_PREFIX = "model.vision_encoder."
DEFAULT_VERSION = "v0.2.0"

#: Per-band mean and std of BigEarthNet v2 Sentinel-2 L2A patches, in DN (reflectance × 10000).
#: One table keyed by band id; each version's order is derived from it.
S2_STATS: dict[str, tuple[float, float]] = {
    "B02": (438.3720703125, 607.02685546875),
    "B03": (614.0556640625, 603.2968139648438),
    "B04": (588.4096069335938, 684.56884765625),
    "B05": (942.8433227539062, 738.4326782226562),
    "B06": (1769.931640625, 1100.4560546875),
    "B07": (2049.551513671875, 1275.805419921875),
    "B08": (2193.2919921875, 1369.3717041015625),
    "B8A": (2235.556640625, 1356.5440673828125),
    "B11": (1568.226806640625, 1070.1612548828125),
    "B12": (997.7324829101562, 813.5276489257812),
}
#: Sentinel-2 band order of the model input, per checkpoint version.
S2_BAND_ORDER: dict[str, tuple[str, ...]] = {
    "v0.2.0": ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"),
    "v0.1.1": ("B02", "B03", "B04", "B08", "B05", "B06", "B07", "B11", "B12", "B8A"),
}
S2_CHANNELS = len(S2_STATS)
#: Input channel counts of the models that need Sentinel-1 (VV, VH first in "all").
SENTINEL1_CHANNELS = {2: "s1", 12: "all"}
DEFAULT_IMAGE_SIZE = 120
#: config.json keys that may name the timm architecture, in order of preference.
ARCHITECTURE_KEYS = ("model_name", "timm_model_name", "network_type")
_VERSION_IN_NAME = re.compile(r"v(\d+\.\d+\.\d+)")


@dataclass(frozen=True)
class BenV2Config:
    """What s2seg needs from a reBEN ``config.json``."""

    folder: Path
    architecture: str
    channels: int
    classes: int
    image_size: int
    version: str
    #: where the version came from: "config.json", "folder name" or "default" (neither said)
    version_source: str = "config.json"


def read_config(folder: str | Path) -> BenV2Config:
    """Parse and check ``<folder>/config.json``; Sentinel-1 models are refused here."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    raw = read_json_object(path, "BigEarthNet v2 config")
    # Checkpoints saved through PyTorchModelHubMixin nest the model config under "config".
    nested = raw["config"] if isinstance(raw.get("config"), dict) else {}

    def lookup(key: str) -> Any:
        return nested.get(key, raw.get(key))

    architecture = _architecture(lookup, path)
    channels = _int_field(lookup, "channels", None, path)
    classes = _int_field(lookup, "classes", len(BIGEARTHNET19_NAMES), path)
    image_size = _int_field(lookup, "image_size", DEFAULT_IMAGE_SIZE, path)
    if channels in SENTINEL1_CHANNELS:
        raise ModelError(
            f"BigEarthNet v2 model {folder} ({SENTINEL1_CHANNELS[channels]}, {channels} channels) takes Sentinel-1 "
            "VV/VH bands, which a Sentinel-2 tile does not have; use a Sentinel-2 (-s2-) checkpoint"
        )
    if channels != S2_CHANNELS:
        raise ModelError(
            f"BigEarthNet v2 config {path}: channels is {channels}; Sentinel-2 checkpoints take {S2_CHANNELS} bands"
        )
    if classes != len(BIGEARTHNET19_NAMES):
        raise ModelError(
            f"BigEarthNet v2 config {path}: classes is {classes}; s2seg knows the {len(BIGEARTHNET19_NAMES)}-class "
            "BigEarthNet nomenclature only"
        )
    version, version_source = _version(lookup, folder, path)
    return BenV2Config(folder, architecture, channels, classes, image_size, version, version_source)


def _architecture(lookup: Callable[[str], Any], path: Path) -> str:
    found = {key: lookup(key) for key in ARCHITECTURE_KEYS if isinstance(lookup(key), str)}
    if not found:
        raise ModelError(f"BigEarthNet v2 config {path} names no architecture (expected one of {', '.join(ARCHITECTURE_KEYS)})")
    import timm  # imported here: only BigEarthNet v2 folders need it

    for key, name in found.items():
        if timm.is_model(name):
            return name
    described = ", ".join(f"{k}={v!r}" for k, v in found.items())
    raise ModelError(f"BigEarthNet v2 config {path}: {described} is not an architecture timm {timm.__version__} knows")


def _int_field(lookup: Callable[[str], Any], key: str, default: int | None, path: Path) -> int:
    value = lookup(key)
    if value is None:
        if default is None:
            raise ModelError(f"BigEarthNet v2 config {path} has no {key!r}")
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(f"BigEarthNet v2 config {path}: {key!r} must be an integer, got {value!r}")
    return value


def _version(lookup: Callable[[str], Any], folder: Path, path: Path) -> tuple[str, str]:
    """``version`` in config.json, else a known version in the folder name (or in the
    Hugging Face cache repository name above a ``snapshots/<hash>`` folder), else the default."""
    value = lookup("version")
    if value is not None:
        version = "v" + str(value).strip().lstrip("vV")
        if version not in S2_BAND_ORDER:
            raise ModelError(
                f"BigEarthNet v2 config {path}: unknown version {value!r}; known: {', '.join(S2_BAND_ORDER)}"
            )
        return version, "config.json"
    for name in _folder_names(folder):
        for match in _VERSION_IN_NAME.finditer(name):
            if f"v{match.group(1)}" in S2_BAND_ORDER:
                return f"v{match.group(1)}", "folder name"
    return DEFAULT_VERSION, "default"


def _folder_names(folder: Path) -> list[str]:
    folder = folder.resolve()
    names = [folder.name]
    # huggingface_hub cache layout: models--BIFOLD-BigEarthNetv2-0--resnet50-s2-v0.2.0/snapshots/<hash>
    if folder.parent.name == "snapshots":
        names.append(folder.parent.parent.name.split("--")[-1])
    return names


def version_stats(version: str) -> tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...]]:
    """Band order, mean and std of a checkpoint version's input."""
    bands = S2_BAND_ORDER[version]
    return bands, tuple(S2_STATS[b][0] for b in bands), tuple(S2_STATS[b][1] for b in bands)


def card_from_folder(path: str | Path) -> ModelCard:
    """Derive a card from a reBEN checkpoint folder; a sidecar card overrides its fields."""
    folder = Path(path).expanduser().resolve()
    config = read_config(folder)
    bands, mean, std = version_stats(config.version)
    names = _folder_names(folder)
    derived: dict[str, Any] = {
        "name": names[-1],
        "format": "ben-v2",
        "bands": list(bands),
        "patch_size": config.image_size,
        "class_names": list(BIGEARTHNET19_NAMES),
        "class_colours": list(BIGEARTHNET19_COLOURS),
        "output_kind": "patch",
        "activation": "sigmoid",  # multi-label: one independent probability per class
        "input_scale": "dn",
        "mean": list(mean),
        "std": list(std),
        # reBEN training upsampled the 20 m bands to 10 m with nearest neighbour.
        "resampling": "nearest",
        "levels": ["L2A"],
        "path": str(folder),
        "description": f"BigEarthNet v2 {config.architecture} ({config.version}, Sentinel-2), 19 CORINE classes, multi-label per patch",
        "source": "BigEarthNet v2.0 (reBEN), BIFOLD / TU Berlin",
        "extra": {"architecture": config.architecture, "version": config.version},
    }
    sidecar = sidecar_card_path(folder)
    card = ModelCard.load(sidecar, defaults=derived) if sidecar else ModelCard.from_dict(derived, origin=f"BigEarthNet v2 folder {folder}")
    if card.format != "ben-v2":
        raise ModelError(f"model card {sidecar}: format must be 'ben-v2' for the BigEarthNet v2 folder {folder}, got {card.format!r}")
    return card


def build_module(config: BenV2Config) -> torch.nn.Module:
    """The timm architecture of a checkpoint, randomly initialised."""
    import timm

    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": config.classes, "in_chans": config.channels}
    try:
        # ViT/mixer-style models size their position embeddings from img_size, as
        # configilm did when the checkpoint was trained; others do not accept it.
        return timm.create_model(config.architecture, img_size=config.image_size, **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
        return timm.create_model(config.architecture, **kwargs)


def load_weights(module: torch.nn.Module, folder: Path) -> None:
    """Load ``model.safetensors`` strictly; any key or shape mismatch is a ModelError naming keys and folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(f"BigEarthNet v2 folder {folder} has no {WEIGHTS_FILE}")
    try:
        raw = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    if not any(k.startswith(KEY_PREFIX) for k in raw):
        raise ModelError(f"{path}: no weight key starts with {KEY_PREFIX!r}; this is not a BigEarthNet v2 checkpoint")
    state = {k[len(KEY_PREFIX):]: v for k, v in raw.items() if k.startswith(KEY_PREFIX)}
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    # A key outside the prefix belongs to no part of the model s2seg rebuilds: unexpected, by its full name.
    unexpected = [k for k in state if k not in expected] + [k for k in raw if not k.startswith(KEY_PREFIX)]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape)):
        if keys:
            shown = ", ".join(keys[:5]) + (f" … ({len(keys)} in all)" if len(keys) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ModelError(
            f"the weights in {folder} do not fit timm {type(module).__name__} as described by its {CONFIG_FILE}: "
            + "; ".join(problems)
        )
    module.load_state_dict(state, strict=True)


def load(card: ModelCard, device: torch.device, log: Log | None = None) -> TorchModel:
    """Build the architecture, load the weights strictly and move the model to ``device``; timm's and
    safetensors' warnings go to ``log``."""
    from .base import TorchModel, smoke_test

    if not card.path:
        raise ModelError(f"model card {card.name!r} has no path to its BigEarthNet v2 checkpoint folder")
    folder = Path(card.path)
    if not folder.is_dir():
        state = "is a file" if folder.exists() else "does not exist"
        raise ModelError(f"BigEarthNet v2 checkpoint folder {folder} of model card {card.name!r} {state}; "
                         f"expected a folder with {CONFIG_FILE} + {WEIGHTS_FILE}")
    config = read_config(folder)
    if len(card.bands) != config.channels:
        raise ModelError(
            f"model card {card.name!r} lists {len(card.bands)} bands but {folder / CONFIG_FILE} says {config.channels} channels"
        )
    if card.num_classes != config.classes:
        raise ModelError(
            f"model card {card.name!r} lists {card.num_classes} classes but {folder / CONFIG_FILE} says {config.classes}"
        )
    with forward_warnings(log, f"loading {folder.name}"):
        module = build_module(config)
        load_weights(module, folder)
    model = TorchModel(card, device, module.eval().to(device))
    smoke_test(model)
    return model


def require_config(config: BenV2Config, expected: dict[str, Any], described_as: str) -> None:
    """Refuse a checkpoint whose ``config.json`` disagrees with what its card promises: a
    ModelError naming the first differing field (a :class:`BenV2Config` attribute) and both values."""
    for key, want in expected.items():
        got = getattr(config, key)
        if got != want:
            raise ModelError(
                f"BigEarthNet v2 config {config.folder / CONFIG_FILE}: {key} is {got!r} but {described_as} says "
                f"{want!r}; this checkpoint does not match its card"
            )
