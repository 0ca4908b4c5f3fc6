"""The interface every loaded model offers to the pipeline."""
from __future__ import annotations

import builtins
import math
import re
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from ..errors import DeviceUnavailable, ModelError
from .card import ModelCard

if TYPE_CHECKING:  # annotations only: importing the kernels' module would import numba with every model
    from ..uncertainty import Confidence


@runtime_checkable
class SegmentationModel(Protocol):
    """A model ready to run: its card, its device, and a batched forward pass.

    ``predict`` takes normalised float32 patches ``(N, bands, P, P)`` already on
    ``device`` and returns probabilities (the card's activation applied) as
    float32: ``(N, C)`` for patch-level models, ``(N, C, P, P)`` for dense ones.
    """

    card: ModelCard
    device: torch.device

    def predict(self, batch: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ConfidenceModel(SegmentationModel, Protocol):
    """A one-pass model (card ``receptive_field``) that can also make a strip's confidence products itself,
    without materialising its ``(C, h, w)`` probabilities (the built-in model's compiled pass). The inferer asks
    for them when probabilities are not written and :meth:`can_predict_confidence` says yes; else it calls
    ``predict`` and :func:`..uncertainty.confidence`, which give the same products."""

    def can_predict_confidence(self) -> bool:
        """Can :meth:`predict_confidence` run on this model's device (and build)?"""
        ...

    def predict_confidence(self, batch: torch.Tensor, valid: torch.Tensor, window: tuple[int, int]) -> Confidence:
        """The products of the output pixels ``valid (h, w)`` (nodata where False), whose first one is input
        pixel ``window = (row, col)`` of ``batch (1, bands, H, W)``: what ``confidence(predict(batch)[0, :,
        row:row + h, col:col + w], valid)`` gives. Raises ModelError on non-finite outputs."""
        ...


def makes_own_confidence(model: SegmentationModel, write_probs: bool) -> bool:
    """Does the inference stage ask ``model`` for a strip's confidence products (:class:`ConfidenceModel`) instead of
    its probabilities? Only when probabilities are not written and the model can make them here."""
    return not write_probs and isinstance(model, ConfidenceModel) and model.can_predict_confidence()


def apply_activation(logits: torch.Tensor, activation: str, dim: int = 1) -> torch.Tensor:
    """Turn raw outputs into probabilities as the card says."""
    if activation == "softmax":
        return torch.softmax(logits, dim=dim)
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    return logits


def check_shape(output: torch.Tensor, card: ModelCard, batch_size: int) -> None:
    """Raise ModelError naming the model when ``output`` does not have the shape its card promises."""
    p = card.patch_size
    expected = (batch_size, card.num_classes) if card.output_kind == "patch" else (batch_size, card.num_classes, p, p)
    if tuple(output.shape) != expected:
        raise ModelError(
            f"model {card.name!r} returned shape {tuple(output.shape)}, expected {expected} "
            f"({card.num_classes} classes, {card.output_kind} output); check the card's class_names and output_kind"
        )


def non_finite(output: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor on ``output``'s device: does it hold NaN or ±Inf? Reading it waits for the device."""
    low, high = extremes(output)
    return ~(torch.isfinite(low) & torch.isfinite(high))


#: How far a probability may stray outside [0, 1] by rounding (e.g. a float16 softmax) and still count as one.
PROBABILITY_TOLERANCE = 1e-3


def extremes(output: torch.Tensor) -> torch.Tensor:
    """``[min, max]`` of ``output`` as a float32 tensor on its device (NaN when it holds NaN; ±Inf shows as an
    extreme): enough to tell non-finite values and values that are no probabilities, far cheaper than
    ``isfinite`` over every value. Nothing is read back: accelerators fold it into a running pair."""
    low, high = torch.aminmax(output)
    return torch.stack([low, high]).float()


def non_finite_error(card: ModelCard) -> ModelError:
    return ModelError(f"model {card.name!r} produced NaN or Inf values")


def check_extremes(card: ModelCard, pair: torch.Tensor) -> None:
    """Raise ModelError when ``pair`` (:func:`extremes`) shows NaN/Inf or values outside [0, 1], naming the
    card's activation; reading ``pair`` waits for the device."""
    low, high = (float(v) for v in pair.cpu())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise non_finite_error(card)
    if low >= -PROBABILITY_TOLERANCE and high <= 1 + PROBABILITY_TOLERANCE:
        return
    found = f"values outside [0, 1] (min {low:.3g}, max {high:.3g})"
    if card.activation == "none":
        raise ModelError(f"model {card.name!r} declares activation 'none' (its outputs are probabilities) but produced "
                         f"{found}: set activation to 'softmax' or 'sigmoid' in its card")
    raise ModelError(f"model {card.name!r} produced {found} after its activation {card.activation!r}")


def check_output(output: torch.Tensor, card: ModelCard, batch_size: int) -> torch.Tensor:
    """Verify the shape, finiteness and probability range of a model's output; raise ModelError naming the model."""
    check_shape(output, card, batch_size)
    check_extremes(card, extremes(output))
    return output.float()


def mps_available() -> bool:
    """Apple-silicon GPU (Metal Performance Shaders) usable by torch."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else MPS (Apple silicon), else CPU; ``cuda`` or ``mps``
    without that device raises :class:`DeviceUnavailable` (the front ends say which option to change)."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("device 'cuda' was requested but no CUDA GPU is available to torch")
    if requested == "mps" and not mps_available():
        raise DeviceUnavailable("device 'mps' was requested but torch has no usable Apple-silicon GPU (MPS)")
    return torch.device(requested)


class TorchModel:
    """A torch module (eager or TorchScript) behind the :class:`SegmentationModel` interface."""

    def __init__(self, card: ModelCard, device: torch.device, module: torch.nn.Module) -> None:
        self.card = card
        self.device = device
        #: CUDA: weights and inputs channels-last (NHWC), the layout cuDNN's tensor-core convolutions
        #: run natively; measured on an H100 with a ResNet-50 at batch 256: 15k → 23k patches/s
        #: (float32), 20k → 28k (float16). Same values: only the memory layout changes.
        self.channels_last = device.type == "cuda"
        self.module = module.to(memory_format=torch.channels_last) if self.channels_last else module

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            try:
                output = self.module(batch)
            except Exception as exc:
                plain = plain_scripted_error(exc)
                if plain is None:
                    raise
                raise plain from exc
            if not isinstance(output, torch.Tensor):
                raise ModelError(f"model {self.card.name!r} returned {type(output).__name__}, expected one tensor")
            # float() first: a half-precision model's logits would lose precision in softmax.
            probabilities = apply_activation(output.float(), self.card.activation)
            # Shape only: the engine checks finiteness where it does not stall an accelerator.
            check_shape(probabilities, self.card, batch.shape[0])
            return probabilities


def smoke_test(model: SegmentationModel) -> None:
    """Run one all-zero patch through a freshly loaded model so that a card that does
    not fit the model (band count, patch size, classes, output kind) fails at load
    time with a message naming the model, not in the middle of a tile."""
    card = model.card
    batch = torch.zeros(1, len(card.bands), card.patch_size, card.patch_size, device=model.device)
    try:
        model.predict(batch)
    except ModelError:
        raise
    except Exception as exc:  # torch and onnxruntime raise many types; all mean the same here
        # A TorchScript summary already starts with the scripted code's exception type.
        what = error_summary(exc) if scripted_exception(exc) else f"{type(exc).__name__}: {error_summary(exc)}"
        raise ModelError(
            f"model {card.name!r} fails on a ({len(card.bands)}, {card.patch_size}, {card.patch_size}) patch "
            f"as its card describes it: {what}"
        ) from exc


#: The first line of a TorchScript interpreter error, followed by the serialized and original tracebacks.
_SCRIPTED_HEAD = "The following operation failed in the TorchScript interpreter"
_TRACEBACK_HEAD = "Traceback of TorchScript"
#: The scripted code's exception after the tracebacks: unindented "[builtins.]SomeError: message".
_EXCEPTION_LINE = re.compile(r"(?:builtins\.)?([A-Za-z_][\w.]*?(?:Error|Exception)): ?(.*)")


def scripted_exception(exc: BaseException) -> tuple[str, str] | None:
    """For an error raised by the TorchScript interpreter: the type name and message of the exception
    the scripted code raised (``("ValueError", "expected 3 bands")``), without the tracebacks; else None."""
    text = str(exc)
    if not text.startswith(_SCRIPTED_HEAD):
        return None
    lines = text.rstrip("\n").splitlines()
    last_header = max((i for i, line in enumerate(lines) if line.startswith(_TRACEBACK_HEAD)), default=0)
    for i in range(last_header + 1, len(lines)):
        match = None if lines[i][:1].isspace() else _EXCEPTION_LINE.fullmatch(lines[i])
        if match:
            return match.group(1), "\n".join([match.group(2), *lines[i + 1:]]).strip()
    return None


def plain_scripted_error(exc: BaseException) -> Exception | None:
    """The exception a TorchScript model's code raised, as if run by Python: its builtin type when it
    has one (``ValueError``), else a RuntimeError saying the type; None for other errors and for
    running out of memory (kept as they are: the engine halves the batch on those)."""
    found = scripted_exception(exc)
    if found is None or isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in found[1].lower():
        return None
    name, message = found
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(message)
        except Exception:  # noqa: BLE001 - a builtin with another constructor (UnicodeDecodeError …)
            pass
    return RuntimeError(f"{name}: {message}")


def error_summary(exc: BaseException) -> str:
    """What went wrong, without tracebacks: for the TorchScript interpreter the scripted code's
    exception type and message, else the first line of the message (or the exception's type)."""
    found = scripted_exception(exc)
    if found is not None:
        return f"{found[0]}: {found[1]}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
