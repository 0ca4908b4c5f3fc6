"""Every engine internal the benchmarks use, in one place.

The harness measures the engine's stages one by one (the inference stage alone, the pipeline
without GeoTIFF encoding, the writer's overview factors), which needs parts the engine does not
export. This module is the only place that reaches them: when the engine's internals change
(``core/pipeline.py`` is being split into a stage runner, a chunk inferer, mergers and a chunk
writer), only this file changes. Everything else in ``benchmarks/`` uses the engine's public API.

Uses today (all in ``s2seg.core.pipeline`` unless said):

* ``_auto_chunk_size(card, bandset, device)`` — the automatic chunk size (:func:`auto_chunk_size`);
* ``STRIP_ROWS`` — rows the writer stage blends at once (:data:`STRIP_ROWS`);
* ``_Run(bandset, card, model, grid, config, batch, output_dir, progress, cancel, log)``, its
  ``_position`` map, ``_infer_chunk(chunk, pixels, n_chunks)``, ``execute(writer, journal, done)``
  and ``busy`` (:class:`StageRun`);
* ``s2seg.core.writer._overview_factors(width, height)`` (:func:`overview_factors`).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2seg.core import pipeline
from s2seg.core.config import EngineConfig
from s2seg.core.grid import GridPlan
from s2seg.core.writer import _overview_factors

#: Rows blended at once by the writer stage.
STRIP_ROWS: int = pipeline.STRIP_ROWS


def auto_chunk_size(card: Any, bandset: Any, device: torch.device) -> int:
    """The chunk size the engine picks when ``EngineConfig.chunk_size`` is 0 (``bandset`` needs height/width)."""
    return pipeline._auto_chunk_size(card, bandset, device)


def overview_factors(width: int, height: int) -> list[int]:
    """The overview levels the writer builds for a product of this size."""
    return _overview_factors(width, height)


class StageRun:
    """One pipeline run over a planned grid, driven stage by stage (no output folder, no journal)."""

    def __init__(self, bandset: Any, model: Any, grid: GridPlan, config: EngineConfig, batch: int) -> None:
        self._run = pipeline._Run(bandset, model.card, model, grid, config, batch, Path("/nonexistent"), None,
                                  threading.Event(), lambda message: None)
        self._run._position = {c.index: c.index for c in grid.chunks}  # progress positions, as execute sets them
        self.model = model

    def infer_chunk(self, chunk: Any, pixels: Any, n_chunks: int) -> Any:
        """The inference stage's work on one chunk (patch gathering, normalisation, forward passes, dense blending)."""
        return self._run._infer_chunk(chunk, pixels, n_chunks)

    def execute(self, writer: Any, journal: Any, done: dict[int, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Reader, inference and writer threads over every chunk into ``writer`` (a ProductWriter stand-in)."""
        return self._run.execute(writer, journal, done or {})

    @property
    def busy(self) -> dict[str, float]:
        """Seconds each stage thread was busy."""
        return dict(self._run.busy)
