"""The chunk inferer: a chunk's pixels → batches of patches → the model → a merger.

Nodata-only patches are never sent to the model. On an out-of-memory error the batch
is halved and the same patches retried (kept for the rest of the run). On an
asynchronous device (any accelerator) nothing between two batches reads a result
back: the outputs' checks are folded into a device-side flag that the writer reads
once per chunk (:meth:`Inferred.raise_if_bad`): NaN/Inf, and values outside [0, 1]
(a model that outputs logits while its card declares probabilities).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .config import ThreadBudget
from .errors import ModelError, S2SegError
from .feed import Normaliser, PatchFeed, patches_with_data, to_device, widen
from .grid import Chunk
from .merger import ChunkProbabilities, Merger, OnePassMerger, merger_for
from .models.base import SegmentationModel, check_extremes, check_output, check_shape, error_summary, extremes, makes_own_confidence
from .models.card import ModelCard
from .reader import ChunkPixels

LogCallback = Callable[[str], None]
#: ``(chunk, patches done, patches in the chunk, batches done, batches expected)`` after every batch
BatchCallback = Callable[[Chunk, int, int, int, int], None]


@dataclass
class Inferred:
    """One chunk's merged model outputs, as the inferer hands them to the writer."""

    probabilities: ChunkProbabilities
    #: asynchronous devices: ``[min, max]`` over every batch's outputs, on the device (read by the writer,
    #: once per chunk: NaN/Inf or no probabilities stop the run); None: each batch was checked on the host
    extremes: torch.Tensor | None
    #: CUDA: recorded after the chunk's last kernel
    ready: Any = None

    def tensors(self) -> tuple[torch.Tensor, ...]:
        flags = (self.extremes,) if self.extremes is not None else ()
        return (*self.probabilities.tensors(), *flags)

    def raise_if_bad(self, card: ModelCard) -> None:
        """Read the device-side extremes (waits for the chunk's kernels): ModelError when a batch was bad."""
        if self.extremes is not None:
            check_extremes(card, self.extremes)


class ChunkInferer:
    """Runs a model over the patches of one chunk at a time (:meth:`infer`).

    ``check`` is called before every batch (it raises to stop the run); ``on_batch`` reports
    progress. ``batch_size`` is halved on out-of-memory errors, for the rest of the run.
    """

    def __init__(self, model: SegmentationModel, normaliser: Normaliser, batch_size: int, *, asynchronous: bool,
                 half: bool = False, write_probs: bool = False, log: LogCallback | None = None,
                 check: Callable[[], None] | None = None, on_batch: BatchCallback | None = None,
                 record_ready: bool = False):
        self.model, self.card = model, model.card
        self.normaliser = normaliser
        self.batch_size = batch_size
        self.asynchronous = asynchronous
        #: autocast to float16 around the model (torch models; ONNX Runtime ignores it)
        self.half = half
        self.write_probs = write_probs
        self.log = log or (lambda message: None)
        self.check = check or (lambda: None)
        self.on_batch = on_batch
        #: CUDA: record an event after the chunk's last kernel, for the writer's stream to wait on
        self.record_ready = record_ready
        if model.device.type == "cpu":
            cap_torch_threads(ThreadBudget.for_machine(1).model)

    def infer(self, chunk: Chunk, pixels: ChunkPixels, *, only: np.ndarray | None = None,
              merger: Merger | None = None) -> Inferred | None:
        """The merged outputs of ``chunk``; None when no patch holds data. ``only`` (bool ``(ny, nx)``):
        compute these of the chunk's patches only; ``merger``: merge into this one instead of the
        card's (the cloud mask reuses patches shared with the previous chunks: :mod:`.mask`)."""
        if self.card.receptive_field:
            return self._infer_one_pass(chunk, pixels)
        p, s = self.card.patch_size, self.card.stride
        wanted = patches_with_data(pixels.valid, chunk.n_patches_y, chunk.n_patches_x, s)
        todo = np.argwhere(wanted if only is None else wanted & only)
        if len(todo) == 0:  # nodata-only patches cost nothing
            return None
        device = self.model.device
        feed = PatchFeed(pixels.data, todo, p, s, self.normaliser, device, resident=self.asynchronous)
        span = None  # asynchronous: the running [min, max] of the outputs, on the device (no host copy, no sync)
        merger = merger or merger_for(chunk, self.card, device, self.write_probs)
        start, b = 0, 0  # first patch of the next batch, batches done
        while start < feed.count:
            self.check()
            stop = min(start + self.batch_size, feed.count)
            out = self._predict(chunk, lambda: feed.batch(start, stop))
            if out is None:  # out of memory: the same patches again, in a batch half as large
                continue
            if not self.asynchronous:
                out = check_output(out, self.card, stop - start)
            else:
                check_shape(out, self.card, stop - start)
                pair = extremes(out)  # NaN propagates through minimum/maximum
                span = pair if span is None else torch.stack([torch.minimum(span[0], pair[0]), torch.maximum(span[1], pair[1])])
                out = out.float()
            ky, kx = feed.indices(start, stop)
            merger.add(ky, kx, out)
            start, b = stop, b + 1
            if self.on_batch is not None:
                self.on_batch(chunk, start, feed.count, b, b + math.ceil((feed.count - start) / self.batch_size))
        ready = None
        if self.record_ready:
            ready = torch.cuda.Event()
            ready.record()
        return Inferred(merger.result(), span, ready)

    def _infer_one_pass(self, chunk: Chunk, pixels: ChunkPixels) -> Inferred | None:
        """A one-pass model (card ``receptive_field`` R): the chunk's input region (the window plus a halo of R,
        see :func:`.grid.plan_one_pass`) through the model in row strips, each strip with R rows of context
        above and below, so every output pixel is computed once. The strip holds about ``batch_size``
        patches' worth of pixels (at least 16 R rows, so the recomputed context stays under 1/8); halved on
        out-of-memory errors like the batch. The merger keeps views of the outputs (nothing is copied), or only
        their confidence products when probabilities are not written: then a :class:`.models.base.ConfidenceModel`
        (the built-in model on the CPU) makes them in its own pass, and no probability exists at all."""
        if not pixels.valid.any():
            return None
        card, device, halo = self.card, self.model.device, self.card.receptive_field
        top, left = chunk.row0 - chunk.input_rows[0], chunk.col0 - chunk.input_cols[0]
        data = pixels.data
        rows_in = data.shape[1]
        resident = self.normaliser(widen(to_device(data, device))[None]) if self.asynchronous else None
        merger = OnePassMerger(chunk, card, device, self.write_probs)
        valid = torch.from_numpy(pixels.valid).to(device)
        model = self.model
        fused = makes_own_confidence(model, self.write_probs)
        span = None
        row, b = 0, 0
        while row < chunk.height:
            self.check()
            strip = one_pass_strip_rows(halo, self.batch_size, card.patch_size, data.shape[2])
            end, a, z = one_pass_span(chunk, row, strip, halo, rows_in)
            out_valid = valid[top + row: top + end, left: left + chunk.width]

            def batch() -> torch.Tensor:
                if resident is not None:
                    return resident[:, :, a:z]
                # A view: the normaliser's first step makes the contiguous float32 input (one copy, not two).
                return self.normaliser(torch.from_numpy(data[None, :, a:z]))

            if fused:  # the strip's products straight from the model: no (C, rows, w) probabilities
                window = (top + row - a, left)
                products = self._predict(chunk, batch, lambda x: model.predict_confidence(x, out_valid, window))
                if products is None:  # out of memory: the same rows again, in a strip half as high
                    continue
                merger.add_confidence(row, products)
            else:
                out = self._predict(chunk, batch)
                if out is None:
                    continue
                span = self._check_one_pass(out, (1, card.num_classes, z - a, data.shape[2]), span)
                merger.add_rows(row, out[0, :, top + row - a: top + end - a, left: left + chunk.width].float(), out_valid)
            row, b = end, b + 1
            if self.on_batch is not None:
                self.on_batch(chunk, row, chunk.height, b, b + math.ceil((chunk.height - row) / strip))
        ready = None
        if self.record_ready:
            ready = torch.cuda.Event()
            ready.record()
        return Inferred(merger.result(), span, ready)

    def _check_one_pass(self, out: torch.Tensor, expected: tuple[int, ...], span: torch.Tensor | None) -> torch.Tensor | None:
        """Check a one-pass strip's output shape (ModelError) and its extremes: now on the host, else folded into
        the running device-side ``span`` (returned)."""
        card = self.card
        if tuple(out.shape) != expected:
            raise ModelError(f"model {card.name!r} returned shape {tuple(out.shape)} for an input of "
                             f"{expected[2]} × {expected[3]} px, expected {expected}: a card with a receptive_field "
                             f"declares a model with one output per input pixel")
        pair = extremes(out)
        if not self.asynchronous:
            check_extremes(card, pair)
            return span
        return pair if span is None else torch.stack([torch.minimum(span[0], pair[0]), torch.maximum(span[1], pair[1])])

    def _predict(self, chunk: Chunk, make_batch: Callable[[], torch.Tensor],
                 run: Callable[[torch.Tensor], Any] | None = None) -> Any:
        """The model's output for the batch ``make_batch()`` gives (``run(batch)``, default ``model.predict``),
        or None after halving ``self.batch_size`` because the device ran out of memory (the caller retries
        the same input)."""
        device = self.model.device
        batch = None
        try:
            batch = make_batch()
            precision = torch.autocast("cuda", dtype=torch.float16) if self.half else contextlib.nullcontext()
            with torch.inference_mode(), precision:
                return (run or self.model.predict)(batch)
        except S2SegError:
            raise
        except Exception as exc:
            if not out_of_memory(exc, device):
                raise ModelError(f"model {self.card.name!r} failed on chunk {chunk.index + 1}: {type(exc).__name__}: {exc}") from exc
            message = error_summary(exc)
        # Outside the except block: the exception (and the frames holding the batch) is released.
        del batch
        empty_cache(device)
        if self.batch_size == 1:
            raise ModelError(f"model {self.card.name!r} ran out of memory on {device} (chunk {chunk.index + 1}) even with "
                             f"a batch of 1 patch: {message}; free the device's memory or use --device cpu")
        smaller = self.batch_size // 2
        self.log(f"out of memory on {device} with a batch of {self.batch_size} patches: retrying with {smaller} "
                 f"(kept for the rest of the run)")
        self.batch_size = smaller
        return None


def one_pass_strip_rows(halo: int, batch_size: int, patch_size: int, width: int) -> int:
    """Output rows a one-pass model computes at once: ``batch_size`` patches' worth of pixels of a ``width`` wide
    input, at least 16 × the halo (so the context computed twice, above and below, stays under 1/8; larger strips
    measured 57 MB more peak RSS for 6 % less model work on 5040² tiles); even, so that the strips the writer gets
    keep the overviews' 2 × 2 pixel pairs whole (:class:`.writer._OverviewFeed`)."""
    rows = max(16 * halo, -(-batch_size * patch_size**2 // width))
    return rows + rows % 2


def one_pass_span(chunk: Chunk, row: int, strip: int, halo: int, rows_in: int) -> tuple[int, int, int]:
    """``(end, a, z)``: a strip from chunk-relative output row ``row`` ends at ``end`` and reads input rows
    ``a … z`` of the chunk's ``rows_in`` (its output rows and ``halo`` rows of context each side, within the input)."""
    top = chunk.row0 - chunk.input_rows[0]
    end = min(row + strip, chunk.height)
    return end, max(0, top + row - halo), min(rows_in, top + end + halo)


def cap_torch_threads(limit: int) -> None:
    """torch's intra-op pool at most ``limit`` threads (config.ThreadBudget). torch sizes it from the
    machine's cores, not from this process's share of them (a container, ``taskset``): threads beyond
    the share only take turns on it. Never raised: a smaller count set by the caller is kept."""
    if torch.get_num_threads() > limit:
        torch.set_num_threads(limit)


def out_of_memory(error: BaseException, device: torch.device) -> bool:
    """Did the device run out of memory? torch's CUDA OOM error always; on an accelerator also
    a RuntimeError saying "out of memory" (cuDNN/cuBLAS, MPS). On the CPU a RuntimeError is a
    model failure whatever its message: halving the batch would only hide it."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return device.type != "cpu" and isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def empty_cache(device: torch.device) -> None:
    """Give the allocator's cached blocks back before retrying with a smaller batch."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps") and torch.backends.mps.is_available():
        torch.mps.empty_cache()
