"""Which models exist and what a model spec means: names, card files, model folders/files.

Importing this module imports no torch: listing and resolving cards (the QGIS dialog's
model list, ``s2seg models``) stays fast. Loaders are imported only to derive a card
from a model file's own metadata.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import ModelError
from . import csmask
from .builtin_card import BUILTIN_CARDS
from .card import ModelCard
from .sidecar import sidecar_card_path  # noqa: F401 - part of this module's interface

#: format → module (relative to this package) that offers ``load(card, device)``.
LOADERS = {
    "builtin": ".builtin",
    "ben-v2": ".ben_v2",
    "torchscript": ".torchscript_model",
    "onnx": ".onnx_model",
}
DEFAULT_MODEL = "builtin"
#: What a model spec that is a path may be (said when a path is none of these).
EXPECTED_MODEL_PATHS = (
    "a card .json, a model folder with config.json + model.safetensors (BigEarthNet v2), an .onnx file or a "
    "TorchScript .pt file with a sidecar card"
)


def loader(fmt: str):
    """The module that loads models of format ``fmt`` (imports torch)."""
    try:
        return importlib.import_module(LOADERS[fmt], __package__)
    except KeyError:
        raise ModelError(f"no loader for model format {fmt!r}") from None


def available_cards() -> dict[str, ModelCard]:
    """Built-in cards and the ukis-csmask cloud models when installed, by name."""
    return {**BUILTIN_CARDS, **csmask.cards()}


def require_file(path: Path, description: str, expected: str) -> None:
    """ModelError unless ``path`` is a file: ``description`` names it ("ONNX model file /m/x.onnx"),
    ``expected`` says what it should be when it is a folder."""
    if path.is_dir():
        raise ModelError(f"{description} is a folder; expected {expected}")
    if not path.is_file():
        raise ModelError(f"{description} does not exist")


def resolve_card(spec: str | Path | ModelCard) -> ModelCard:
    """Turn a name, card file or model folder/file into a validated :class:`ModelCard`."""
    if isinstance(spec, ModelCard):
        return spec
    text = str(spec)
    cards = available_cards()
    if text in cards:
        return cards[text]
    from . import zoo  # light; huggingface_hub is imported only when a zoo model is asked for

    zoo_card = zoo.resolve(text)
    if zoo_card is not None:
        return zoo_card
    path = Path(text).expanduser()
    if not path.exists():
        zoo.refuse_sentinel1(text)
        hint = csmask.missing_message(text)
        if hint:
            raise ModelError(hint)
        raise ModelError(f"model {text!r} is neither a known model name ({', '.join(sorted(cards))}, or a downloadable "
                         f"one: {', '.join(zoo.CATALOGUE)}) nor an existing file or folder")
    if path.is_file() and path.name.endswith(".json"):
        return ModelCard.load(path)
    if path.is_dir() and (path / "config.json").is_file():
        return loader("ben-v2").card_from_folder(path)
    if path.is_file() and path.suffix.lower() == ".onnx":
        return loader("onnx").card_from_file(path)
    if path.is_file() and path.suffix.lower() in (".pt", ".pth", ".ts", ".torchscript"):
        return loader("torchscript").card_from_file(path)
    if path.is_dir():
        raise ModelError(f"model {path} is a folder without a config.json; expected {EXPECTED_MODEL_PATHS}")
    raise ModelError(f"cannot tell what kind of model {path} is: expected {EXPECTED_MODEL_PATHS}")
