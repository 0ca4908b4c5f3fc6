"""The chunk writer: one chunk's merged outputs → product windows, preview pixels and statistics.

Works strip by strip (at most :data:`STRIP_ROWS` rows: bounds the ``(C, rows, width)`` probability
buffer) over what a :class:`.merger.ChunkProbabilities` yields, whatever the output kind, in the
strips it names (a one-pass model's strips follow its row pieces, so none is copied).
On CUDA the writer's kernels run on their own stream, so that reading a chunk's products
back waits for that chunk only, not for the batches queued after it.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Collection

import numpy as np
import torch

from . import kernels
from .grid import Chunk
from .inferer import Inferred
from .merger import STRIP_ROWS
from .models.card import ModelCard
from .preview import PreviewBuilder
from .uncertainty import CLASS_NODATA, LOW_GAP, Confidence
from .writer import FLOAT_PRODUCTS, ProductWriter

__all__ = ["ChunkWriter", "STRIP_ROWS"]


@kernels.njit(frozenset())  # no fast-math: the sums in pixel order, as torch.bincount adds them
def _strip_statistics(classes, maxprob, gap, valid, low_gap, out):  # pragma: no cover - compiled by numba
    """``out (3, C)`` float64 += [pixel count, Σ maxprob, count with gap < ``low_gap``] per class of the valid pixels."""
    n_classes = out.shape[1]
    for i in range(classes.shape[0]):
        c = classes[i]
        if valid[i] and c < n_classes:
            out[0, c] += 1.0
            out[1, c] += np.float64(maxprob[i])
            if gap[i] < low_gap:
                out[2, c] += 1.0


def strip_statistics(conf: Confidence, valid: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(3, C)`` float64 [pixel count, Σ maxprob, low-gap count] per class over a strip's ``valid`` pixels. On the
    CPU with numba one compiled pass (the torch steps: three boolean gathers and their bincounts, 0.8 s of a 5040²
    run's writer), else torch; the same bits either way (each sums the pixels in order)."""
    if kernels.enabled() and conf.classes.device.type == "cpu":
        out = np.zeros((3, n_classes), dtype=np.float64)
        _strip_statistics(conf.classes.reshape(-1).numpy(), conf.maxprob.reshape(-1).numpy(),
                          conf.gap.reshape(-1).numpy(), valid.reshape(-1).numpy(), np.float32(LOW_GAP), out)
        return torch.from_numpy(out)
    cls = conf.classes[valid].long()
    return torch.stack([torch.bincount(cls, minlength=n_classes).double(),
                        torch.bincount(cls, weights=conf.maxprob[valid].double(), minlength=n_classes),
                        torch.bincount(cls[conf.gap[valid] < LOW_GAP], minlength=n_classes).double()])


class ChunkWriter:
    """Writes chunks into a :class:`.writer.ProductWriter` and a :class:`.preview.PreviewBuilder`;
    :meth:`write` returns the chunk's ``(3, C)`` float64 statistics [pixel count, Σ maxprob,
    low-gap count] per class over its valid pixels."""

    def __init__(self, writer: ProductWriter, card: ModelCard, preview: PreviewBuilder, write_probs: bool,
                 check: Callable[[], None] | None = None, write_stream: "torch.cuda.Stream | None" = None,
                 products: Collection[str] | None = None):
        self.writer, self.card, self.preview, self.write_probs = writer, card, preview, write_probs
        #: the float products written (the selection; None: every one)
        self.floats = tuple(k for k in FLOAT_PRODUCTS if products is None or k in products)
        self.check = check or (lambda: None)
        self.write_stream = write_stream

    def write(self, chunk: Chunk, valid: np.ndarray, inferred: Inferred | None) -> np.ndarray:
        """Write one chunk (``valid``: its output window's valid pixels); ``None``: nodata only."""
        if inferred is None:
            return self._write_nodata(chunk)
        with self._stream():
            self._receive(inferred)
            acc = torch.zeros((3, self.card.num_classes), dtype=torch.float64, device=inferred.tensors()[0].device)
            for r0, r1 in inferred.probabilities.strips():
                self.check()
                strip_valid = torch.from_numpy(valid[r0 - chunk.row0: r1 - chunk.row0]).to(acc.device)
                probs, conf = inferred.probabilities.strip((r0, r1), strip_valid)
                self._write_strip(conf, probs, strip_valid, r0, chunk.col0, acc)
            return acc.cpu().numpy()

    def _stream(self) -> contextlib.AbstractContextManager:
        """Where the writer's device work runs: its own CUDA stream, else the default."""
        return torch.cuda.stream(self.write_stream) if self.write_stream is not None else contextlib.nullcontext()

    def _receive(self, inferred: Inferred) -> None:
        """Wait until the device has computed the chunk; raise when the model's outputs were bad."""
        if inferred.ready is not None:  # on the writer's stream: wait for the chunk's last kernel, on the device
            self.write_stream.wait_event(inferred.ready)
            for tensor in inferred.tensors():
                tensor.record_stream(self.write_stream)  # not reused by the allocator before the writer is done
        inferred.raise_if_bad(self.card)

    def _write_strip(self, conf: Confidence, probs: torch.Tensor | None, valid: torch.Tensor, row0: int, col0: int,
                     acc: torch.Tensor) -> None:
        """Write the products of one strip (``probs`` only with ``write_probs``) and add up its statistics."""
        writer = self.writer
        classes = conf.classes.cpu().numpy()
        writer.write("class", classes, row0, col0)
        for key in self.floats:  # the selected ones only: nothing else is copied to the host or encoded
            writer.write(key, getattr(conf, key).cpu().numpy(), row0, col0)
        if self.write_probs:
            nan = torch.tensor(float("nan"), device=probs.device)
            writer.write("probs", torch.where(valid, probs, nan).cpu().numpy(), row0, col0)
        self.preview.add(classes, row0, col0)
        acc += strip_statistics(conf, valid, self.card.num_classes)

    def _write_nodata(self, chunk: Chunk) -> np.ndarray:
        h, w = chunk.height, chunk.width
        classes = np.full((h, w), CLASS_NODATA, dtype=np.uint8)
        nan = np.full((h, w), np.nan, dtype=np.float32)
        self.writer.write("class", classes, chunk.row0, chunk.col0)
        for key in self.floats:
            self.writer.write(key, nan, chunk.row0, chunk.col0)
        if self.write_probs:
            self.writer.write("probs", np.full((self.card.num_classes, h, w), np.nan, dtype=np.float32), chunk.row0, chunk.col0)
        self.preview.add(classes, chunk.row0, chunk.col0)
        return np.zeros((3, self.card.num_classes), dtype=np.float64)
