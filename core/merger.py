"""Mergers: a chunk's model outputs, batch by batch, into per-strip probabilities and confidence.

One merger per output kind, with one interface (as MONAI separates splitter, inferer and
``Merger``): :meth:`add` takes a batch's chunk-relative patch indices and outputs as they
arrive; :meth:`result` hands the writer a :class:`ChunkProbabilities`, whose
:meth:`~ChunkProbabilities.strip` gives the 10 m probabilities (or None) and the
:class:`~.uncertainty.Confidence` of a strip of rows, whatever the output kind. The
writer no longer branches on it.
"""
from __future__ import annotations

from typing import Iterator, Protocol

import torch

from .blend import DenseCanvas, blend_patch_level, blend_patch_level_confidence
from .grid import Chunk, model_chunk
from .models.card import ModelCard
from .resample import to_10m
from .uncertainty import CLASS_NODATA, Confidence, confidence

STRIP_ROWS = 512  # rows the writer takes at once: bounds the (C, rows, width) probability buffer


class ChunkProbabilities(Protocol):
    """A chunk's merged outputs, read by the writer strip by strip."""

    def strips(self) -> Iterator[tuple[int, int]]:
        """The global row ranges, at most :data:`STRIP_ROWS` high, that the writer should ask for, in order
        (those that cost no copy)."""
        ...

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


def even_strips(chunk: Chunk) -> Iterator[tuple[int, int]]:
    """The chunk's rows in strips of :data:`STRIP_ROWS` from its first row."""
    for r0 in range(chunk.row0, chunk.row1, STRIP_ROWS):
        yield r0, min(r0 + STRIP_ROWS, chunk.row1)


class _Resampled:
    """Probabilities ``(C, h, w)`` on the model grid of ``window`` (a :func:`.grid.model_chunk`),
    or on the chunk itself when ``factor`` is 1."""

    def __init__(self, probs: torch.Tensor, chunk: Chunk, window: Chunk, factor: int, write_probs: bool):
        self.probs, self.chunk, self.window, self.factor, self.write_probs = probs, chunk, window, factor, write_probs

    def strips(self) -> Iterator[tuple[int, int]]:
        return even_strips(self.chunk)

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

    def strips(self) -> Iterator[tuple[int, int]]:
        return even_strips(self.chunk)

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


class _RowPieces:
    """A one-pass chunk's outputs as the model computed them, in row pieces: views of the model's probabilities
    ``(C, rows, w)`` when they are written (never copied into a chunk-sized array), else only each piece's
    confidence products, computed as the piece came (13 bytes a pixel instead of 4 C). The writer's strips
    lie inside one piece (:meth:`strips`)."""

    def __init__(self, pieces: list[tuple[int, torch.Tensor | None, Confidence | None]], chunk: Chunk, write_probs: bool):
        #: ``(first chunk-relative row, probs or None, confidence or None)`` in row order, covering the chunk
        self.pieces, self.chunk, self.write_probs = pieces, chunk, write_probs

    def strips(self) -> Iterator[tuple[int, int]]:
        row0 = self.chunk.row0
        for first, probs, conf in self.pieces:
            end = first + (probs.shape[1] if probs is not None else conf.classes.shape[0])
            for r in range(first, end, STRIP_ROWS):
                yield row0 + r, row0 + min(r + STRIP_ROWS, end)

    def strip(self, rows: tuple[int, int], valid: torch.Tensor) -> tuple[torch.Tensor | None, Confidence]:
        if self.write_probs:
            probs = self.rows(rows)
            return probs, confidence(probs, valid)
        part = lambda t: self._join(rows, [(first, conf.__dict__[t]) for first, _, conf in self.pieces], 0)  # noqa: E731
        return None, masked(Confidence(part("classes"), part("maxprob"), part("entropy"), part("gap")), valid)

    def rows(self, rows: tuple[int, int]) -> torch.Tensor:
        """``(C, h, w)`` probabilities of global rows ``rows`` (only when they are written)."""
        return self._join(rows, [(first, probs) for first, probs, _ in self.pieces], 1)

    def _join(self, rows: tuple[int, int], pieces: list[tuple[int, torch.Tensor]], dim: int) -> torch.Tensor:
        """Rows ``rows`` (global) of ``pieces`` (row axis ``dim``): a view inside one piece, else joined."""
        a, z = rows[0] - self.chunk.row0, rows[1] - self.chunk.row0
        parts = [t.narrow(dim, max(a, first) - first, min(z, first + t.shape[dim]) - max(a, first))
                 for first, t in pieces if first < z and first + t.shape[dim] > a]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)

    @property
    def probs(self) -> torch.Tensor:
        """The whole chunk's ``(C, h, w)`` probabilities (a copy; for inspection; only when they are written)."""
        return self.rows((self.chunk.row0, self.chunk.row1))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        if self.write_probs:
            return tuple(probs for _, probs, _ in self.pieces)
        return tuple(t for _, _, conf in self.pieces for t in (conf.classes, conf.maxprob, conf.entropy, conf.gap))


def masked(conf: Confidence, valid: torch.Tensor) -> Confidence:
    """``conf`` with nodata (class 255, NaN) where ``valid`` is False, as :func:`.uncertainty.confidence` of the same
    probabilities and ``valid`` gives (it is per pixel)."""
    if bool(valid.all()):  # most strips: nothing to hide, no four copies
        return conf
    nan = torch.tensor(float("nan"), device=conf.maxprob.device)
    return Confidence(classes=torch.where(valid, conf.classes, torch.tensor(CLASS_NODATA, dtype=torch.uint8, device=valid.device)),
                      maxprob=torch.where(valid, conf.maxprob, nan), entropy=torch.where(valid, conf.entropy, nan),
                      gap=torch.where(valid, conf.gap, nan))


class OnePassMerger:
    """A one-pass model's outputs (a card with a ``receptive_field``), row strip by row strip: every pixel is
    computed once, nothing overlaps, nothing is blended, nothing is copied (:class:`_RowPieces`). Unless
    probabilities are written, each strip's confidence products are computed as it comes and its
    probabilities dropped: a chunk in flight then holds 13 bytes a pixel, not 4 C."""

    def __init__(self, chunk: Chunk, card: ModelCard, device: torch.device, write_probs: bool):  # noqa: ARG002 - one signature for every merger
        self.chunk, self.write_probs = chunk, write_probs
        self.pieces: list[tuple[int, torch.Tensor | None, Confidence | None]] = []

    def add_rows(self, row: int, outputs: torch.Tensor, valid: torch.Tensor) -> None:
        """``outputs`` ``(C, rows, chunk.width)``: the chunk's rows from ``row`` (chunk-relative) on, with their input
        ``valid`` mask (the writer's own mask, which may hide more, is applied when the strip is written).
        Kept as given when probabilities are written (a view holds the model's output alive until then)."""
        if self.write_probs:
            self.pieces.append((row, outputs, None))
        else:
            self.pieces.append((row, None, confidence(outputs, valid)))

    def add_confidence(self, row: int, products: Confidence) -> None:
        """The chunk's rows from ``row`` on as their confidence products only, made by the model itself
        (:class:`.models.base.ConfidenceModel`, probabilities not written): what :meth:`add_rows` keeps."""
        assert not self.write_probs, "probabilities are written: add_rows"
        self.pieces.append((row, None, products))

    def result(self) -> ChunkProbabilities:
        covered = sum(p.shape[1] if p is not None else c.classes.shape[0] for _, p, c in self.pieces)
        assert covered == self.chunk.height, f"one-pass pieces cover {covered} of {self.chunk.height} rows"
        return _RowPieces(self.pieces, self.chunk, self.write_probs)


def merger_for(chunk: Chunk, card: ModelCard, device: torch.device, write_probs: bool) -> Merger:
    """The merger of ``card``'s output kind for one chunk."""
    kind = DenseMerger if card.output_kind == "dense" else PatchMerger
    return kind(chunk, card, device, write_probs)
