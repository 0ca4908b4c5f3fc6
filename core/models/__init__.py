"""Model cards and loaders: resolve what the user asked for into a card, then load it.

``spec`` may be a built-in or registered card name, a card JSON file, or a model
folder/file whose card is derived from its own metadata (BigEarthNet v2 folder,
ONNX file, TorchScript file with a sidecar card).
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from ..errors import ModelError
from .base import SegmentationModel, pick_device
from .card import ModelCard

#: format → module (relative to this package) that offers ``load(card, device)``.
_LOADERS = {
    "builtin": ".builtin",
    "ben-v2": ".ben_v2",
    "torchscript": ".torchscript_model",
    "onnx": ".onnx_model",
}
DEFAULT_MODEL = "builtin"
#: Cards shipped with the plugin (small models and cards of well-known checkpoints).
SHIPPED_CARDS_DIR = Path(__file__).resolve().parents[2] / "resources" / "models"


def _loader(fmt: str):
    try:
        return importlib.import_module(_LOADERS[fmt], __name__)
    except KeyError:
        raise ModelError(f"no loader for model format {fmt!r}") from None


def available_cards() -> dict[str, ModelCard]:
    """Built-in cards and the cards shipped in ``resources/models`` by name."""
    from .builtin import BUILTIN_CARDS

    cards = dict(BUILTIN_CARDS)
    if SHIPPED_CARDS_DIR.is_dir():
        for path in sorted(SHIPPED_CARDS_DIR.glob("*.card.json")):
            card = ModelCard.load(path)
            cards.setdefault(card.name, card)
    return cards


def sidecar_card_path(model_path: Path) -> Path | None:
    """``model.onnx`` → ``model.card.json`` (or ``model.onnx.card.json``) when present."""
    for candidate in (model_path.with_suffix(".card.json"), model_path.with_name(model_path.name + ".card.json")):
        if candidate.is_file():
            return candidate
    return None


def resolve_card(spec: str | Path | ModelCard) -> ModelCard:
    """Turn a name, card file or model folder/file into a validated :class:`ModelCard`."""
    if isinstance(spec, ModelCard):
        return spec
    text = str(spec)
    cards = available_cards()
    if text in cards:
        return cards[text]
    path = Path(text).expanduser()
    if not path.exists():
        raise ModelError(f"model {text!r} is neither a known model name ({', '.join(sorted(cards))}) nor an existing file or folder")
    if path.is_file() and path.name.endswith(".json"):
        return ModelCard.load(path)
    if path.is_dir() and (path / "config.json").is_file():
        return _loader("ben-v2").card_from_folder(path)
    if path.is_file() and path.suffix.lower() == ".onnx":
        return _loader("onnx").card_from_file(path)
    if path.is_file() and path.suffix.lower() in (".pt", ".pth", ".ts", ".torchscript"):
        return _loader("torchscript").card_from_file(path)
    raise ModelError(
        f"cannot tell what kind of model {path} is: expected a card .json, a BigEarthNet v2 folder "
        "(config.json + model.safetensors), an .onnx file or a TorchScript .pt file with a sidecar card"
    )


def load_model(spec: str | Path | ModelCard, device: str | torch.device = "auto") -> SegmentationModel:
    """Resolve ``spec`` and load the model onto ``device`` (``auto`` picks CUDA when present)."""
    card = resolve_card(spec)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    return _loader(card.format).load(card, dev)


__all__ = ["ModelCard", "SegmentationModel", "available_cards", "load_model", "resolve_card", "pick_device", "DEFAULT_MODEL"]
