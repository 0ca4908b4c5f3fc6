"""Model cards and loaders: resolve what the user asked for into a card, then load it.

``spec`` may be a built-in or registered card name, a card JSON file, or a model
folder/file whose card is derived from its own metadata (BigEarthNet v2 folder,
ONNX file, TorchScript file with a sidecar card).

Importing this package does not import torch (the QGIS model list and ``s2seg
models`` only need cards); :func:`load_model`, :func:`pick_device` and
:class:`SegmentationModel` import it when first used.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .card import ModelCard
from .registry import DEFAULT_MODEL, available_cards, loader, resolve_card, sidecar_card_path
from .runlog import Log

if TYPE_CHECKING:
    import torch

    from .base import SegmentationModel, pick_device

_FROM_BASE = ("SegmentationModel", "pick_device")


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_model(spec: str | Path | ModelCard, device: "str | torch.device" = "auto",
               log: "Log | None" = None) -> "SegmentationModel":
    """Resolve ``spec`` and load the model onto ``device`` (``auto`` picks CUDA when present).

    ``log`` receives the loaders' notices for the user, one line per call (e.g. that an ONNX model
    runs on the CPU because onnxruntime has no CUDA); without it they are issued as Python warnings."""
    import torch

    from .base import pick_device

    card = resolve_card(spec)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    return loader(card.format).load(card, dev, log=log)


__all__ = ["ModelCard", "SegmentationModel", "available_cards", "load_model", "resolve_card", "pick_device",
           "sidecar_card_path", "DEFAULT_MODEL"]
