"""TorchScript models (``torch.jit.save`` archives) with a required sidecar card.

A TorchScript file carries no band order, normalisation or class names, so
``model.pt`` needs ``model.card.json`` (or ``model.pt.card.json``) beside it;
``name``, ``format`` and ``path`` default to the file's.

Files written with ``torch.save(model)`` are pickled Python objects; unpickling
one can run arbitrary code, so they are refused before anything is loaded: the
zip archive is inspected for the ``code/`` folder that every TorchScript archive
has and a ``torch.save`` archive never has.
"""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch

from ..errors import ModelError
from .base import TorchModel, error_summary, smoke_test
from .card import ModelCard
from .registry import require_file
from .runlog import Log, forward_warnings

_EXPORT_HINT = (
    "export the model with torch.jit.script(model).save(path) or torch.jit.trace(model, example).save(path), "
    "or to ONNX"
)


def check_torchscript_archive(path: Path) -> None:
    """Raise ModelError unless ``path`` is a TorchScript zip archive; reads the zip directory only."""
    require_file(path, f"TorchScript model file {path}", "a TorchScript .pt file written by torch.jit.save")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        raise ModelError(
            f"{path} is not a TorchScript archive (not a zip file); a legacy torch.save pickle is refused "
            f"because loading it could run arbitrary code: {_EXPORT_HINT}"
        ) from None
    # Entries sit under one top folder: "<archive>/code/…", "<archive>/constants.pkl".
    has_code = any(name.split("/")[1:2] == ["code"] for name in names)
    if not has_code:
        raise ModelError(
            f"{path} was written with torch.save (a pickled Python object), not torch.jit.save; s2seg refuses to "
            f"unpickle it because that could run arbitrary code: {_EXPORT_HINT}"
        )


def card_from_file(path: str | Path) -> ModelCard:
    """The sidecar card of a TorchScript file (required); name, format and path default to the file's."""
    from . import sidecar_card_path  # the package imports loaders lazily, so no cycle

    path = Path(path).expanduser().resolve()
    check_torchscript_archive(path)
    sidecar = sidecar_card_path(path)
    if sidecar is None:
        raise ModelError(
            f"TorchScript model {path} needs a sidecar card {path.with_suffix('.card.json')}: a TorchScript file does "
            "not say its bands, patch_size, normalisation (mean, std, input_scale), output_kind, activation, "
            "class_names or class_colours"
        )
    card = ModelCard.load(sidecar, defaults={"name": path.stem, "format": "torchscript", "path": str(path)})
    if card.format != "torchscript":
        raise ModelError(
            f"model card {sidecar}: format must be 'torchscript' for the TorchScript model {path}, got {card.format!r}"
        )
    return card


def load(card: ModelCard, device: torch.device, log: Log | None = None) -> TorchModel:
    """``torch.jit.load`` the card's file onto ``device`` after checking it is TorchScript; torch's
    warnings (other than its deprecation of TorchScript) go to ``log``."""
    if not card.path:
        raise ModelError(f"model card {card.name!r} has no path to its TorchScript file")
    path = Path(card.path)
    check_torchscript_archive(path)
    try:
        with forward_warnings(log, f"loading {path.name}"), warnings.catch_warnings():
            # torch ≥ 2.9 flags TorchScript as deprecated on every load; not the user's concern here.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device)
    except RuntimeError as exc:
        raise ModelError(f"cannot load TorchScript model {path}: {error_summary(exc)}") from None
    model = TorchModel(card, device, module.eval())
    smoke_test(model)
    return model
