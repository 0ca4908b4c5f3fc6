"""Model input batches from one chunk's pixels: normalised patches, on the model's device.

On the CPU each batch is gathered from a strided view of the chunk and normalised
then (the chunk is never copied whole). On an accelerator the chunk goes to the
device once, staged in page-locked memory and copied without blocking the host,
and is normalised there; every batch is then gathered on the device. Nothing
between two forward passes waits for the host, so the host queues the next
batches (and the reader reads the next chunk) while the device computes.

No qgis import here: this is engine code.
"""
from __future__ import annotations

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from .models import ModelCard
from .sentinel2 import BandSet


class Normaliser:
    """Product DN → model input on the device: remove the baseline offset, scale, standardise."""

    def __init__(self, card: ModelCard, bandset: BandSet, device: torch.device):
        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)

        self.offset = column([bandset.offset(b) for b in card.bands])
        scale = card.scale_factor
        mean = list(card.mean) if card.mean else [0.0] * len(card.bands)
        std = list(card.std) if card.std else [1.0] * len(card.bands)
        # (x · scale − mean) / std folded into one multiply-add (gain and shift computed in float64 once):
        # three passes over every batch instead of five. The offset stays a separate, exact addition, so
        # that the same reflectance stored as DN + offset or as plain DN gives bit-identical inputs.
        self.gain = column([scale / sd for sd in std])
        self.shift = column([-m / sd for m, sd in zip(mean, std)])

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        """``raw`` (N, bands, H, W) digital numbers of any real dtype → float32 model input."""
        x = raw.to(torch.float32) + self.offset  # a new tensor: the caller's float input is never written to
        return x.mul_(self.gain).add_(self.shift)


def patches_with_data(valid: np.ndarray, ny: int, nx: int, stride: int) -> np.ndarray:
    """(ny, nx) bool: does patch (ky, kx) hold at least one valid pixel? Block-reduce, no loop.

    ``valid`` covers ``(ny + 1) · stride`` rows and ``(nx + 1) · stride`` columns: patch
    (ky, kx) is the 2 × 2 stride blocks from (ky, kx).
    """
    blocks = valid.reshape(ny + 1, stride, nx + 1, stride).any(axis=(1, 3))
    return blocks[:-1, :-1] | blocks[1:, :-1] | blocks[:-1, 1:] | blocks[1:, 1:]


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` as a tensor on ``device``; on CUDA through page-locked memory, without blocking the host.

    A copy from pageable memory would make the host wait for every kernel queued before it.
    uint16 travels as its int16 bit pattern (CUDA has few uint16 kernels); see :func:`widen`.
    """
    if array.dtype == np.uint16:
        array = array.view(np.int16)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def widen(tensor: torch.Tensor) -> torch.Tensor:
    """The uint16 values of an int16 bit pattern made by :func:`to_device`, as int32; others unchanged."""
    if tensor.dtype == torch.int16:
        return tensor.to(torch.int32).bitwise_and_(0xFFFF)
    return tensor


class PatchFeed:
    """The patches ``todo`` (chunk-relative ``(ky, kx)`` rows) of one chunk, batch by batch.

    ``data`` is the chunk's ``(bands, rows, cols)`` digital numbers on the model grid.
    ``resident`` (default: on any device but the CPU, where it is optional) copies the
    chunk to the device and normalises it there once, instead of gathering and
    normalising on the host per batch; both give the same values.
    """

    def __init__(self, data: np.ndarray, todo: np.ndarray, patch_size: int, stride: int, normaliser: Normaliser,
                 device: torch.device, resident: bool | None = None):
        p, s = patch_size, stride
        self.count = len(todo)
        self.resident = device.type != "cpu" if resident is None else resident
        if not self.resident and device.type != "cpu":
            raise ValueError(f"patches are gathered on the host for the CPU only, not for {device}")
        self._normaliser = normaliser
        todo = np.ascontiguousarray(todo, dtype=np.int64)
        if self.resident:
            chunk = normaliser(widen(to_device(data, device))[None])[0]
            self._windows = chunk.unfold(1, p, s).unfold(2, p, s)  # (bands, ny, nx, P, P), a view
            self._todo = to_device(todo, device)
        else:
            self._windows = sliding_window_view(data, (p, p), axis=(1, 2))[:, ::s, ::s]
            self._todo = torch.from_numpy(todo)

    def indices(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ky, kx)`` of patches ``start:stop``, int64 on the feed's device."""
        ky, kx = self._todo[start:stop].T
        return ky, kx

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """Normalised patches ``start:stop`` as ``(n, bands, P, P)`` float32."""
        ky, kx = self.indices(start, stop)
        if self.resident:
            return self._windows[:, ky, kx].transpose(0, 1).contiguous()
        raw = np.ascontiguousarray(self._windows[:, ky.numpy(), kx.numpy()].transpose(1, 0, 2, 3))
        return self._normaliser(torch.from_numpy(raw))
