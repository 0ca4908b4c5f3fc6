"""ONNX models run with onnxruntime, described by Deepness-style metadata.

Deepness (the QGIS deep-learning plugin) stores its model description in the ONNX
file's ``metadata_props``, each value a JSON string. s2seg reads:

* ``model_type``: ``"segmentor"`` → dense output ``(N, C, H, W)``; ``"classifier"``
  → one output per patch ``(N, C)``. Without it, the output rank decides.
* ``class_names``: ``{"0": "water", …}`` or ``["water", …]``.
* ``resolution``: centimetres per pixel (Deepness convention), so 10 m is ``1000``.
* ``tile_size`` (the patch size), ``tiles_overlap`` (kept in ``extra``),
  ``standardization_mean`` / ``standardization_std``.
* s2seg's own keys: ``s2seg_bands`` (list of band ids, e.g. ``["B04", "B03", "B02", "B08"]``),
  and optionally ``s2seg_input_scale`` (``"dn"`` or ``"reflectance"``),
  ``s2seg_activation`` and ``s2seg_class_colours``.

Deepness requires models to output probabilities, so the activation is ``"none"``
unless ``s2seg_activation`` or the sidecar card says otherwise. A sidecar card
``model.card.json`` next to ``model.onnx`` overrides any of these; a model whose
metadata lacks the bands (every plain Deepness model) needs one.
"""
from __future__ import annotations

import colorsys
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ThreadBudget
from ..errors import ModelError
from ..memory import release_freed_memory
from ..nomenclature import BIGEARTHNET19_COLOURS, BIGEARTHNET19_NAMES
from .base import apply_activation, check_output, smoke_test
from .card import BASE_RESOLUTION, MAX_RESOLUTION, ModelCard
from .jsonfile import read_json_object
from .registry import require_file
from .runlog import Log, forward_warnings, notify

#: Deepness ``model_type`` (lower-cased) → card output_kind.
MODEL_TYPES = {"segmentor": "dense", "classifier": "patch"}
#: Deepness resolutions are in cm/px.
CM_PER_METRE = 100
#: ONNX input element types s2seg can feed.
INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_REQUIRED = ("bands", "class_names", "patch_size")


#: onnxruntime's CPU arena grows by the size asked for (``kSameAsRequested``), not to the next power of two.
ARENA_SAME_AS_REQUESTED = 1
_shared_arena_lock = threading.Lock()
_shared_arena: bool | None = None  # registered in onnxruntime's environment: True; could not be: False


def _shared_cpu_arena(ort) -> bool:
    """Register, once per process, a CPU arena that grows by what each allocation asks for; True when
    sessions may use it (``session.use_env_allocators``).

    The default arena rounds every extension up to a power of two. With this arena and no memory
    pattern (:func:`_open_session`) the cloud U-Net's passes over batches of three 256² patches hold
    94 MB above the loaded model instead of 119 MB (default), 114 MB (no pattern only) or 154 MB
    (this arena with the pattern: the pattern's one block per pass is then never shared); time per
    pass within the noise. Sessions of one process share it (the land-cover and the cloud model of
    one run reuse each other's free blocks instead of each holding an arena).
    """
    global _shared_arena
    with _shared_arena_lock:
        if _shared_arena is None:
            try:
                memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                ort.create_and_register_allocator(memory, ort.OrtArenaCfg({"arena_extend_strategy": ARENA_SAME_AS_REQUESTED}))
                _shared_arena = True
            except Exception:  # an onnxruntime without it, or another library of this process registered one first
                _shared_arena = False
        return _shared_arena


def _open_session(path: Path, providers: list[str], log: Log | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Memory: the shared CPU arena above, and no memory pattern (it plans one block for all of a pass's
    # activations; the arena's free blocks serve them as well, measured in _shared_cpu_arena).
    if _shared_cpu_arena(ort):
        options.add_session_config_entry("session.use_env_allocators", "1")
    options.enable_mem_pattern = False
    # Fatal only: onnxruntime's own log goes to stderr, which QGIS never shows. What matters reaches
    # the user otherwise: failures as exceptions, a provider fallback through ``log`` (load()).
    options.log_severity_level = 4
    # Thread budget (config.ThreadBudget), read at load time: every usable core for the forward pass
    # (onnxruntime's default counts the machine's cores, not this process's share), one inter-op
    # thread, and no spinning between passes: a spinning pool burns the cores the reader and the
    # writer need while the inference stage waits for its next chunk.
    options.intra_op_num_threads = ThreadBudget.for_machine(1).model
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        with forward_warnings(log, "onnxruntime"):
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime's own exception types (InvalidProtobuf, Fail, NoSuchFile …)
        raise ModelError(f"cannot open ONNX model {path}: {exc}") from None


def read_metadata(session) -> dict[str, Any]:
    """The model's ``metadata_props`` with each JSON value decoded (plain strings kept)."""
    metadata = {}
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        try:
            metadata[key] = json.loads(value)
        except json.JSONDecodeError:
            metadata[key] = value
    return metadata


def palette(count: int) -> list[str]:
    """Distinct, reproducible colours for classes the metadata gives no colours for."""
    colours = []
    for i in range(count):
        # Golden-ratio hue steps keep neighbouring class indices apart.
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)
        colours.append(f"#{round(r * 255):02X}{round(g * 255):02X}{round(b * 255):02X}")
    return colours


def default_colours(class_names: list[str]) -> list[str]:
    """BigEarthNet colours for the BigEarthNet classes, else a generated palette."""
    if tuple(class_names) == BIGEARTHNET19_NAMES:
        return list(BIGEARTHNET19_COLOURS)
    return palette(len(class_names))


def _sidecar_data(path: Path) -> dict[str, Any]:
    """The sidecar's JSON object, or {} when unusable (ModelCard.load then reports why)."""
    try:
        return read_json_object(path, "model card")
    except ModelError:
        return {}


def _class_names(value: Any, path: Path) -> list[str]:
    if isinstance(value, dict):
        try:
            return [str(value[k]) for k in sorted(value, key=int)]
        except ValueError:
            raise ModelError(f"ONNX model {path}: class_names keys must be class indices, got {sorted(value)}") from None
    if isinstance(value, list):
        return [str(v) for v in value]
    raise ModelError(f"ONNX model {path}: class_names must be a JSON object or list, got {value!r}")


def _static(dim: Any) -> int | None:
    """An ONNX dimension as an int, or None when symbolic/unknown."""
    return dim if isinstance(dim, int) and dim > 0 else None


def card_fields_from_metadata(session, path: Path) -> dict[str, Any]:
    """Card fields derived from the ONNX file itself (metadata and input/output shapes)."""
    meta = read_metadata(session)
    fields: dict[str, Any] = {
        "name": path.stem,
        "format": "onnx",
        "path": str(path),
        "activation": str(meta.get("s2seg_activation", "none")),
        "description": f"ONNX model {path.name}",
        "extra": {"onnx_metadata": meta},
    }
    model_type = meta.get("model_type")
    if model_type is not None:
        kind = MODEL_TYPES.get(str(model_type).lower())
        if kind is None:
            raise ModelError(
                f"ONNX model {path}: model_type {model_type!r} is not supported; s2seg runs {', '.join(MODEL_TYPES)} models"
            )
        fields["output_kind"] = kind
    else:
        rank = len(session.get_outputs()[0].shape)
        if rank not in (2, 4):
            raise ModelError(f"ONNX model {path}: no model_type in its metadata and an output of rank {rank}; expected 2 or 4")
        fields["output_kind"] = "dense" if rank == 4 else "patch"
    if "class_names" in meta:
        fields["class_names"] = _class_names(meta["class_names"], path)
        if "s2seg_class_colours" in meta:
            fields["class_colours"] = meta["s2seg_class_colours"]  # as given: the card checks its type
        else:
            fields["class_colours"] = default_colours(fields["class_names"])
    if "resolution" in meta:
        try:
            metres = float(meta["resolution"]) / CM_PER_METRE
        except (TypeError, ValueError):
            raise ModelError(f"ONNX model {path}: resolution must be a number of cm/px, got {meta['resolution']!r}") from None
        whole = round(metres)
        if abs(metres - whole) > 1e-6 or whole < BASE_RESOLUTION or whole % BASE_RESOLUTION or whole > MAX_RESOLUTION:
            raise ModelError(
                f"ONNX model {path}: metadata resolution {meta['resolution']} cm/px is {metres:g} m; s2seg runs models "
                f"at {BASE_RESOLUTION}, {2 * BASE_RESOLUTION} … {MAX_RESOLUTION} m (resolution 1000, 2000 … 6000)"
            )
        fields["resolution"] = whole
    shape = session.get_inputs()[0].shape
    if "tile_size" in meta:
        fields["patch_size"] = meta["tile_size"]
    elif len(shape) == 4 and _static(shape[2]) and shape[2] == shape[3]:
        fields["patch_size"] = shape[2]
    if "tiles_overlap" in meta:
        fields["extra"]["tiles_overlap"] = meta["tiles_overlap"]
    if "s2seg_bands" in meta:
        fields["bands"] = meta["s2seg_bands"]  # as given: a string "B04" is refused, not split into characters
    if "s2seg_input_scale" in meta:
        fields["input_scale"] = meta["s2seg_input_scale"]
    for source, target in (("standardization_mean", "mean"), ("standardization_std", "std")):
        if source in meta:
            value = meta[source]
            fields[target] = list(value) if isinstance(value, list) else [value]
    return fields


def card_from_file(path: str | Path) -> ModelCard:
    """Derive a card from an ONNX file's metadata; a sidecar card overrides or completes it."""
    from . import sidecar_card_path  # the package imports loaders lazily, so no cycle

    path = Path(path).expanduser().resolve()
    session = _open_session(path, ["CPUExecutionProvider"])
    derived = card_fields_from_metadata(session, path)
    sidecar = sidecar_card_path(path)
    if sidecar is None:
        missing = [f for f in _REQUIRED if f not in derived]
        if missing:
            example = {"bands": ["B04", "B03", "B02", "B08"], "class_names": ["…"], "patch_size": 256}
            raise ModelError(
                f"ONNX model {path} does not say its {', '.join(missing)} in its metadata, so a sidecar card is required: "
                f"write {path.with_suffix('.card.json')} with at least "
                + json.dumps({k: example[k] for k in missing})
                + " (any other card field, e.g. mean, std, input_scale, activation, class_colours, overrides the metadata)"
            )
        return ModelCard.from_dict(derived, origin=f"ONNX model {path}")
    overrides = _sidecar_data(sidecar)
    if isinstance(overrides.get("class_names"), list) and "class_colours" not in overrides:
        # The sidecar renames the classes: colour its classes, not the metadata's.
        derived["class_colours"] = default_colours([str(n) for n in overrides["class_names"]])
    card = ModelCard.load(sidecar, defaults=derived)
    if card.format != "onnx":
        raise ModelError(f"model card {sidecar}: format must be 'onnx' for the ONNX model {path}, got {card.format!r}")
    return card


class OnnxModel:
    """An onnxruntime session behind the :class:`SegmentationModel` interface."""

    def __init__(self, card: ModelCard, device: torch.device, session, path: Path) -> None:
        self.card = card
        self.device = device
        self.session = session
        model_input = session.get_inputs()
        if len(model_input) != 1:
            raise ModelError(f"ONNX model {path} has {len(model_input)} inputs; s2seg feeds exactly one (N, bands, P, P)")
        self._input = model_input[0]
        self._output = session.get_outputs()[0].name
        shape = self._input.shape
        if len(shape) != 4:
            raise ModelError(f"ONNX model {path}: input {self._input.name!r} has shape {shape}; expected (N, bands, P, P)")
        if _static(shape[1]) and shape[1] != len(card.bands):
            raise ModelError(
                f"ONNX model {path} takes {shape[1]} channels but its card {card.name!r} lists {len(card.bands)} bands"
            )
        for size in shape[2:]:
            if _static(size) and size != card.patch_size:
                raise ModelError(
                    f"ONNX model {path} takes {shape[2]}×{shape[3]} patches but its card {card.name!r} says patch_size {card.patch_size}"
                )
        try:
            self._dtype = INPUT_DTYPES[self._input.type]
        except KeyError:
            raise ModelError(f"ONNX model {path}: input type {self._input.type} is not supported (float32 or float16)") from None
        #: A model exported with a fixed batch size gets batches of exactly that size.
        self.fixed_batch = _static(shape[0])

    def _run(self, array: np.ndarray) -> np.ndarray:
        return self.session.run([self._output], {self._input.name: array})[0]

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            n = batch.shape[0]
            array = batch.detach().to("cpu", torch.float32).numpy().astype(self._dtype, copy=False)
            if self.fixed_batch is None:
                output = self._run(array)
            else:
                step = self.fixed_batch
                chunks = []
                for start in range(0, n, step):
                    chunk = array[start:start + step]
                    if len(chunk) < step:  # pad the last chunk with zeros; their outputs are dropped
                        pad = np.zeros((step - len(chunk),) + chunk.shape[1:], dtype=chunk.dtype)
                        chunk = np.concatenate([chunk, pad])
                    chunks.append(self._run(chunk))
                output = np.concatenate(chunks)[:n]
            result = torch.from_numpy(np.ascontiguousarray(output)).float()
            if self.card.output_kind == "patch" and result.ndim == 4 and result.shape[2:] == (1, 1):
                result = result[:, :, 0, 0]  # classifiers ending in a 1×1 conv
            result = apply_activation(result.to(self.device), self.card.activation)
            return check_output(result, self.card, n)


def providers_for(device: torch.device, log: Log | None = None) -> list[str]:
    """CUDA first when both torch's device and onnxruntime offer it; CPU always as fallback."""
    import onnxruntime as ort

    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        notify(log, "onnxruntime has no CUDA support installed (onnxruntime-gpu): the ONNX model runs on the CPU")
    return ["CPUExecutionProvider"]


def load(card: ModelCard, device: torch.device, log: Log | None = None) -> OnnxModel:
    """Open the card's ONNX file with onnxruntime for ``device``; notices (CPU fallback, onnxruntime's
    warnings at session creation) go to ``log``."""
    if not card.path:
        raise ModelError(f"model card {card.name!r} has no path to its ONNX file")
    path = Path(card.path)
    require_file(path, f"ONNX model file {path} of model card {card.name!r}", "an .onnx file")
    providers = providers_for(device, log)
    session = _open_session(path, providers, log)
    missing = [p for p in providers if p not in session.get_providers()]
    if missing:
        # onnxruntime-gpu without the CUDA/cuDNN libraries it needs falls back to the CPU silently.
        notify(log, f"onnxruntime could not start {', '.join(missing)} for {path.name} (are the CUDA and cuDNN "
                    f"libraries onnxruntime-gpu needs installed?): the ONNX model runs on the CPU")
    model = OnnxModel(card, device, session, path)
    smoke_test(model)
    # Parsing and optimising the graph left freed heap on this thread (about 120 MB for a 40 MB U-Net)
    # that the run's own threads never reuse: hand it back.
    release_freed_memory()
    return model
