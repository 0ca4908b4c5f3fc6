"""Where a model file's sidecar card is: a module of its own, so that loaders and the model zoo
can find it without importing the registry (which consults them)."""
from __future__ import annotations

from pathlib import Path


def sidecar_card_path(model_path: Path) -> Path | None:
    """``model.onnx`` → ``model.card.json`` (or ``model.onnx.card.json``) when present."""
    for candidate in (model_path.with_suffix(".card.json"), model_path.with_name(model_path.name + ".card.json")):
        if candidate.is_file():
            return candidate
    return None
