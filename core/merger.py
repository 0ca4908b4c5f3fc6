"""Mergers: a chunk's model outputs, batch by batch, into per-strip probabilities and confidence.

One merger per output kind, with one interface (as MONAI separates splitter, inferer and
``Merger``): :meth:`add` takes a batch's chunk-relative patch indices and outputs as they
arrive; :meth:`result` hands the writer a :class:`ChunkProbabilities`, whose
:meth:`~ChunkProbabilities.strip` gives the 10 m probabilities (or None) and the
:class:`~.uncertainty.Confidence` of a strip of rows, whatever the output kind. The
writer no longer branches on it.
"""
from __future__ import annotations

from typing import Protocol

import torch

from .blend import DenseCanvas, blend_patch_level, blend_patch_level_confidence
from .grid import Chunk, model_chunk
from .models.card import ModelCard
from .resample import to_10m
from .uncertainty import Confidence, confidence


class ChunkProbabilities(Protocol):
    """A chunk's merged outputs, read by the writer strip by strip."""

    def strip(self, rows: tuple[int, int], valid: torch.Tensor) -> tuple[torch.Tensor | None, Confidence]:
        """``(probs (C, h, w) or None, confidence)`` of global rows ``rows`` over the chunk's columns;
        ``probs`` is None when probabilities are not written (and need not be materialised)."""
        ...

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The device buffers the strips are computed from (for CUDA stream bookkeeping)."""
        ...


class Merger(Protocol):
    def add(self, ky: torch.Tensor, kx: torch.Tensor, outputs: torch.Tensor) -> None: ...

    def result(self) -> ChunkProbabilities: ...


class _Resampled:
    """Probabilities ``(C, h, w)`` on the model grid of ``window`` (a :func:`.grid.model_chunk`),
    or on the chunk itself when ``factor`` is 1."""

    def __init__(self, probs: torch.Tensor, chunk: Chunk, window: Chunk, factor: int, write_probs: bool):
        self.probs, self.chunk, self.window, self.factor, self.write_probs = probs, chunk, window, factor, write_probs

    def strip(self, rows: tuple[int, int], valid: torch.Tensor) -> tuple[torch.Tensor | None, Confidence]:
        chunk = self.chunk
        if self.factor > 1:
            probs = to_10m(self.probs, self.window, self.factor, rows, (chunk.col0, chunk.col1))
        else:
            probs = self.probs[:, rows[0] - chunk.row0: rows[1] - chunk.row0]
        return (probs if self.write_probs else None), confidence(probs, valid)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.probs,)


class DenseMerger:
    """Dense outputs ``(n, C, P, P)`` overlap-added into a :class:`.blend.DenseCanvas` as batches arrive
    (a canvas 4× smaller than the patch grid)."""

    def __init__(self, chunk: Chunk, card: ModelCard, device: torch.device, write_probs: bool):
        self.chunk, self.write_probs = chunk, write_probs
        self.factor = card.pixel_factor
        self.window = model_chunk(chunk, self.factor)
        self.canvas = DenseCanvas(self.window, card.patch_size, card.num_classes, device)

    def add(self, ky: torch.Tensor, kx: torch.Tensor, outputs: torch.Tensor) -> None:
        self.canvas.add(ky, kx, outputs)

    def result(self) -> ChunkProbabilities:
        return _Resampled(self.canvas.result(), self.chunk, self.window, self.factor, self.write_probs)


class _PatchGrid:
    """A patch-level chunk's ``(ny, nx, C)`` grid, blended strip by strip by the writer: at 10 m the
    class and confidence come in one pass without materialising probabilities; a coarser model's grid
    is small, so it is blended whole (on first use, on the writer's side) and resampled."""

    def __init__(self, grid: torch.Tensor, chunk: Chunk, card: ModelCard, write_probs: bool):
        self.grid, self.chunk, self.write_probs = grid, chunk, write_probs
        self.patch_size, self.factor = card.patch_size, card.pixel_factor
        self._coarse: _Resampled | None = None

    def strip(self, rows: tuple[int, int], valid: torch.Tensor) -> tuple[torch.Tensor | None, Confidence]:
        if self.factor > 1:
            if self._coarse is None:
                window = model_chunk(self.chunk, self.factor)
                self._coarse = _Resampled(blend_patch_level(self.grid, window, self.patch_size), self.chunk, window,
                                          self.factor, self.write_probs)
            return self._coarse.strip(rows, valid)
        if self.write_probs:
            probs = blend_patch_level(self.grid, self.chunk, self.patch_size, rows=rows)
            return probs, confidence(probs, valid)
        return None, blend_patch_level_confidence(self.grid, self.chunk, self.patch_size, valid, rows=rows)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.grid,)


class PatchMerger:
    """Patch-level outputs ``(n, C)`` placed into the chunk's ``(ny, nx, C)`` grid."""

    def __init__(self, chunk: Chunk, card: ModelCard, device: torch.device, write_probs: bool):
        self.chunk, self.card, self.write_probs = chunk, card, write_probs
        self.grid = torch.zeros((chunk.n_patches_y, chunk.n_patches_x, card.num_classes), dtype=torch.float32, device=device)

    def add(self, ky: torch.Tensor, kx: torch.Tensor, outputs: torch.Tensor) -> None:
        self.grid[ky, kx] = outputs

    def result(self) -> ChunkProbabilities:
        return _PatchGrid(self.grid, self.chunk, self.card, self.write_probs)


class OnePassMerger:
    """A one-pass model's outputs (a card with a ``receptive_field``), row strip by row strip, into the chunk's
    ``(C, h, w)`` probabilities: every pixel is written once, nothing overlaps, nothing is blended."""

    def __init__(self, chunk: Chunk, card: ModelCard, device: torch.device, write_probs: bool):
        self.chunk, self.write_probs = chunk, write_probs
        self.probs = torch.empty((card.num_classes, chunk.height, chunk.width), dtype=torch.float32, device=device)

    def add_rows(self, row: int, outputs: torch.Tensor) -> None:
        """``outputs`` ``(C, rows, w)``: the chunk's rows from ``row`` (chunk-relative) on."""
        self.probs[:, row: row + outputs.shape[1]] = outputs

    def result(self) -> ChunkProbabilities:
        return _Resampled(self.probs, self.chunk, self.chunk, 1, self.write_probs)


def merger_for(chunk: Chunk, card: ModelCard, device: torch.device, write_probs: bool) -> Merger:
    """The merger of ``card``'s output kind for one chunk."""
    kind = DenseMerger if card.output_kind == "dense" else PatchMerger
    return kind(chunk, card, device, write_probs)
