"""Test doubles shared by several test modules: tiny models and the writers of tiny real-format model files.

Import them from here (``from doubles import …``), never from another test module: a test module
imported by another one runs its module-level code twice and ties the two files' edits together.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from s2seg.core import kernels
from s2seg.core.models.base import apply_activation
from s2seg.core.models.card import ModelCard
from s2seg.core.nomenclature import BIGEARTHNET19_COLOURS, BIGEARTHNET19_NAMES

# --- an in-process model for the engine ----------------------------------------------------------


class SpectralPatchModel:
    """A patch-level model: class scores from the patch's mean normalised band values."""

    def __init__(self, fail_on_call=None, classes=5, patch_size=60, resolution=10, name="patch-test",
                 levels=("L1C", "L2A")):
        self.card = ModelCard(name=name, format="builtin", bands=("B02", "B04", "B08", "B11"), patch_size=patch_size,
                              class_names=BIGEARTHNET19_NAMES[:classes], class_colours=BIGEARTHNET19_COLOURS[:classes],
                              output_kind="patch", activation="softmax", input_scale="reflectance", resolution=resolution,
                              levels=levels)
        self.device = torch.device("cpu")
        torch.manual_seed(0)
        self.weights = torch.randn(4, classes) * 20
        self.calls = 0
        self.patches = 0
        self.fail_on_call = fail_on_call

    def predict(self, batch):
        self.calls += 1
        self.patches += batch.shape[0]
        if self.fail_on_call == self.calls:
            raise RuntimeError("simulated CUDA out of memory")
        return apply_activation(batch.mean(dim=(2, 3)) @ self.weights, "softmax")


class ConvDenseModel:
    """A dense model: a fixed random 3 × 3 convolution and a softmax, at any resolution."""

    def __init__(self, resolution=30, patch_size=20, classes=4):
        self.card = ModelCard(name=f"dense-{resolution}m", format="builtin", bands=("B02", "B04", "B08", "B11"),
                              patch_size=patch_size, class_names=BIGEARTHNET19_NAMES[:classes],
                              class_colours=BIGEARTHNET19_COLOURS[:classes], output_kind="dense", activation="softmax",
                              input_scale="reflectance", mean=(0.05,) * 4, std=(0.03,) * 4, resolution=resolution)
        self.device = torch.device("cpu")
        generator = torch.Generator().manual_seed(1)
        self.weights = torch.randn((classes, 4, 3, 3), generator=generator)
        self.inputs = []

    def predict(self, batch):
        self.inputs.append(batch.clone())
        return apply_activation(torch.nn.functional.conv2d(batch, self.weights, padding=1), "softmax")


# --- TorchScript ---------------------------------------------------------------------------------
#: Patch size of the TorchScript doubles' cards.
TORCHSCRIPT_PATCH = 16


class TinySegmenter(torch.nn.Module):
    """Dense: a 3 × 3 convolution from 3 bands to 2 classes' logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class TinyClassifier(torch.nn.Module):
    """Patch-level: class scores from the patch's mean band values."""

    def __init__(self, bands: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(bands, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class Evil:
    """Unpickling this creates a folder: proof of whether a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


#: A sidecar card that fits :class:`TinySegmenter` (name, format and path come from the file).
DENSE_CARD = {
    "bands": ["B04", "B03", "B02"],
    "patch_size": TORCHSCRIPT_PATCH,
    "output_kind": "dense",
    "activation": "softmax",
    "input_scale": "reflectance",
    "class_names": ["land", "water"],
    "class_colours": ["#C8B48C", "#1E64C8"],
}


def save_scripted(module: torch.nn.Module, path: Path, card: dict | None = None) -> Path:
    """``torch.jit.script`` ``module`` to ``path``, with ``card`` as its sidecar ``<stem>.card.json`` when given."""
    torch.manual_seed(0)
    module.eval()
    torch.jit.script(module).save(str(path))
    if card is not None:
        path.with_suffix(".card.json").write_text(json.dumps(card))
    return path


# --- ONNX ----------------------------------------------------------------------------------------
#: Band order and patch size of the ONNX doubles (4 input channels).
ONNX_BANDS = ["B04", "B03", "B02", "B08"]
ONNX_PATCH = 32


def segmentor() -> torch.nn.Module:
    """Dense, Deepness style: probabilities per pixel."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(4, 3, 3, padding=1), torch.nn.Softmax(dim=1)).eval()


def classifier(classes: int = 5) -> torch.nn.Module:
    """Patch-level: raw logits per patch."""
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, classes),
    ).eval()


def export(model: torch.nn.Module, path: Path, metadata: dict, *, dynamic_batch: bool = True, batch: int = 2) -> Path:
    """Export with the TorchScript-based exporter (works offline) and add metadata_props as JSON strings."""
    import onnx

    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(
        model, (torch.zeros(batch, 4, ONNX_PATCH, ONNX_PATCH),), str(path), dynamo=False,
        input_names=["input"], output_names=["output"], dynamic_axes=axes,
    )
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(path))
    return path


#: Deepness metadata of :func:`segmentor`, with s2seg's band list.
SEGMENTOR_META = {
    "model_type": "Segmentor",
    "class_names": {"0": "water", "1": "forest", "2": "urban"},
    "resolution": 1000,
    "tile_size": ONNX_PATCH,
    "tiles_overlap": 10,
    "standardization_mean": [500.0, 600.0, 700.0, 2000.0],
    "standardization_std": [400.0, 450.0, 500.0, 1200.0],
    "s2seg_bands": ONNX_BANDS,
}


# --- BigEarthNet v2 (reBEN) checkpoint folders ---------------------------------------------------
#: Weight key prefix of reBEN checkpoints, written out independently of ben_v2.KEY_PREFIX.
BEN_V2_PREFIX = "model.vision_encoder."


def make_timm(arch: str = "test_resnet", channels: int = 10, image_size: int | None = None) -> torch.nn.Module:
    """A small timm model with BigEarthNet's 19 outputs, seeded."""
    import timm

    torch.manual_seed(0)
    kwargs = {"img_size": image_size} if image_size else {}
    return timm.create_model(arch, pretrained=False, num_classes=19, in_chans=channels, **kwargs).eval()


def write_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    *,
    arch: str = "test_resnet",
    channels: int = 10,
    image_size: int = 120,
    nested: bool = True,
    arch_key: str = "network_type",
    extra: dict | None = None,
) -> Path:
    """A folder in the reBEN layout: hub-mixin config.json and prefixed safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    model_config = {arch_key: arch, "channels": channels, "classes": 19, "image_size": image_size, "dropout": 0.15}
    config = {"config": model_config, "lr": 0.001} if nested else model_config
    config.update(extra or {})
    (folder / "config.json").write_text(json.dumps(config))
    state = {BEN_V2_PREFIX + k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    return folder


#: Tests of the compiled CPU kernels' own path (bits, fused products): skipped where numba is off.
needs_numba = pytest.mark.skipif(not kernels.enabled(), reason="numba not installed or switched off")
