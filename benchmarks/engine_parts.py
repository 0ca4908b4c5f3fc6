"""Every engine internal the benchmarks use, in one place.

The harness measures the engine's stages one by one (the inference stage alone, the pipeline
without GeoTIFF encoding, the writer's overview factors), which needs parts the engine does not
export. This module is the only place that reaches them: when the engine's internals change,
only this file changes. Everything else in ``benchmarks/`` uses the engine's public API.

Uses today (all in ``s2seg.core.pipeline`` unless said):

* ``auto_chunk_size(card, bandset, device)`` — the automatic chunk size;
* ``STRIP_ROWS`` — rows the writer stage blends at once;
* ``ChunkStages(bandset, model, grid, config, batch, cancel)``: ``infer(chunk, pixels)`` (the
  inference stage's work on one chunk), ``run(writer, record, done)`` (reader, inference, writer
  and journal threads, no commit) and ``busy`` (:class:`StageRun`);
* ``s2seg.core.writer._overview_factors(width, height)`` (:func:`overview_factors`);
* ``s2seg.core.inferer.one_pass_strip_rows`` and ``one_pass_span`` (:func:`one_pass_strips`,
  :func:`one_pass_windows`): the row strips a one-pass model is run in, and their output rows.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from s2seg.core import pipeline
from s2seg.core.config import EngineConfig
from s2seg.core.grid import GridPlan
from s2seg.core.inferer import one_pass_span, one_pass_strip_rows
from s2seg.core.writer import _overview_factors

#: Rows blended at once by the writer stage.
STRIP_ROWS: int = pipeline.STRIP_ROWS


def auto_chunk_size(card: Any, bandset: Any, device: torch.device) -> int:
    """The chunk size the engine picks when ``EngineConfig.chunk_size`` is 0 (``bandset`` needs height/width)."""
    return pipeline.auto_chunk_size(card, bandset, device)


def one_pass_strips(chunk: Any, rows_in: int, cols_in: int, halo: int, batch: int, patch_size: int) -> list[tuple[int, int]]:
    """Input rows ``(a, z)`` of each strip the inference stage runs a one-pass model on, for a chunk whose input is
    ``rows_in × cols_in`` px (at the default batch, no out-of-memory retry): :func:`one_pass_windows` without
    the output rows."""
    return [(a, z) for a, z, _, _ in one_pass_windows(chunk, rows_in, cols_in, halo, batch, patch_size)]


def one_pass_windows(chunk: Any, rows_in: int, cols_in: int, halo: int, batch: int, patch_size: int
                     ) -> list[tuple[int, int, int, int]]:
    """:func:`one_pass_strips` with each strip's output rows: ``(a, z, first, rows)``, the output rows being input
    rows ``first … first + rows - 1`` (what the inference stage hands a ``ConfidenceModel``)."""
    strip = one_pass_strip_rows(halo, batch, patch_size, cols_in)
    top = chunk.row0 - chunk.input_rows[0]
    windows, row = [], 0
    while row < chunk.height:
        end, a, z = one_pass_span(chunk, row, strip, halo, rows_in)
        windows.append((a, z, top + row, end - row))
        row = end
    return windows


def overview_factors(width: int, height: int) -> list[int]:
    """The overview levels the writer builds for a product of this size."""
    return _overview_factors(width, height)


class StageRun:
    """One pipeline run over a planned grid, driven stage by stage (no output folder, no journal file)."""

    def __init__(self, bandset: Any, model: Any, grid: GridPlan, config: EngineConfig, batch: int) -> None:
        self._stages = pipeline.ChunkStages(bandset, model, grid, config, batch, threading.Event())
        self.model = model

    def infer_chunk(self, chunk: Any, pixels: Any, n_chunks: int) -> Any:
        """The inference stage's work on one chunk (patch gathering, normalisation, forward passes, merging)."""
        return self._stages.infer(chunk, pixels)

    def execute(self, writer: Any, journal: Any, done: dict[int, np.ndarray] | None = None) -> None:
        """Reader, inference, writer and journal threads over every chunk not in ``done`` into ``writer``
        (a ProductWriter stand-in: write/flush/sync); ``journal.record`` receives the journaled chunks."""
        self._stages.run(writer, journal.record, set(done or {}))

    @property
    def busy(self) -> dict[str, float]:
        """Seconds each stage thread was busy."""
        return dict(self._stages.busy)
