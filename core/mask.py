"""Clouds, cloud shadows and snow: the mask of every run, chunk by chunk (``<tile>_mask.tif``).

Sources, chosen by :func:`resolve_mode` from ``EngineConfig.mask`` (:data:`.config.MASK_MODES`):

- ``scl``: the L2A Scene Classification Layer (``SCL_20m``), read as a categorical layer of the
  tile (:attr:`.sentinel2.BandSet.layers`) by nearest onto the 10 m grid, codes translated by
  :data:`SCL_TO_MASK`.
- ``spectral``: a per-pixel reflectance test, for tiles without SCL (L1C) — see
  :func:`spectral_mask`. It finds thick clouds and snow; it does not find shadows or thin cirrus.
- ``model``: a cloud / cloud-shadow model (``s2-cloud-l1c``/``s2-cloud-l2a``, the ukis-csmask
  U-Nets at 30 m, or ``EngineConfig.mask_model``) run in the same pass as the land-cover model
  (:class:`ModelMask`): on its own global patch grid, with the same chunks, so that its output
  for a pixel does not depend on the chunk size either. The cloud models know no snow (clear,
  cloud, shadow): where the model says clear, the spectral snow test (:func:`spectral_snow`, the
  same test as ``spectral``, on the same 10 m pixels) marks snow, so that snow is masked whatever
  the source.
- ``auto``: ``scl`` when the tile has an SCL, else ``model`` when the cloud model of the tile's
  level is installed, else ``spectral`` when the tile has its bands, else no mask.

``scl`` and ``spectral`` are per pixel: the reader thread computes them on the chunk's output
window only (:class:`ChunkMasker`). ``model`` reads the cloud model's inputs and runs the snow test
on the output window in the reader thread (:class:`ModelMaskReader`), and infers in the inference
thread, after the land cover. Its patches (768 px at 10 m, stride
384) reach far past a chunk, so neighbouring chunks share patch rows and columns: each patch is
computed once per run and kept (:class:`PatchReuse`) until the last chunk that needs it, in the
run's chunk order, and a chunk reads only the region of the patches it computes (and of its own
window, for the validity). After a resume the store starts empty and the first chunks compute
what they need again: the same outputs, added to the chunk's canvas in the same (row-major)
order, so the same bytes. The codes travel with the chunk to the writer, which writes them and
sets the land-cover products to nodata under :data:`HIDDEN` classes (unless ``keep_masked``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
import torch
from rasterio.errors import RasterioIOError

from .chunkwriter import STRIP_ROWS
from .config import MASK_MODES
from .errors import ConfigError, InputError, ModelError
from .feed import Normaliser, patches_with_data
from .grid import Chunk, GridPlan, plan, plan_window, reflect_indices
from .inferer import ChunkInferer
from .merger import ChunkProbabilities, DenseMerger
from .models import available_cards
from .models.base import SegmentationModel
from .reader import ChunkPixels, ChunkReader, input_cache_bytes, read_nearest
from .scl import (CIRRUS, CLEAR, CLOUD, HIDDEN, MASK_CLASSES, MASK_COLOURS, MASK_NODATA,  # noqa: F401 (re-exported)
                  SCL_CODES, SHADOW, SNOW)
from .sentinel2 import BandSet
from .urls import redact

#: ESA Scene Classification (SCL) code → mask code (:data:`.scl.SCL_CODES`; other codes are clear).
SCL_TO_MASK = np.full(256, CLEAR, dtype=np.uint8)
SCL_TO_MASK[list(SCL_CODES)] = list(SCL_CODES.values())
_HIDDEN_LUT = np.zeros(256, dtype=bool)
_HIDDEN_LUT[list(HIDDEN)] = True

#: Bands of the spectral test, and its thresholds (reflectance, TOA or BOA alike).
SPECTRAL_BANDS = ("B02", "B03", "B04", "B08", "B11")
#: Bands of the snow test alone (:func:`spectral_snow`): green, NIR, SWIR 1.6 µm.
SNOW_BANDS = ("B03", "B08", "B11")
#: cloud: bright and white in the visible (blue, green and red all above this) and not snow
CLOUD_VISIBLE_MIN = 0.2
#: snow: normalised difference snow index (green − SWIR) / (green + SWIR) above this, as in MODIS
#: and Sen2Cor, with a bright NIR and green (water has a high NDSI too, but is dark)
NDSI_SNOW_MIN = 0.4
SNOW_NIR_MIN = 0.11
SNOW_GREEN_MIN = 0.1
#: The snow test's thresholds, as the resume key records them (a change starts a masked run over).
SNOW_TEST = {"ndsi_min": NDSI_SNOW_MIN, "nir_min": SNOW_NIR_MIN, "green_min": SNOW_GREEN_MIN}
SPECTRAL_NAME = "spectral cloud test"
SNOW_NAME = "spectral snow test"
_QUANTIFICATION = 10000.0  # DN per unit reflectance (after the baseline offset), as in feed.Normaliser


def cloud_model_name(level: str | None) -> str:
    """The cloud model matching a product level (L2A when the level is unknown)."""
    return "s2-cloud-l1c" if level == "L1C" else "s2-cloud-l2a"


def resolve_mode(mode: str, bandset: BandSet, mask_model: str | None = None) -> tuple[str, str]:
    """The concrete mask source (``scl``, ``model``, ``spectral`` or ``none``) for ``mode`` on
    ``bandset``, and a sentence for the log. ``mask_model``: the model of ``model`` (default: the
    cloud model of the tile's level). Raises :class:`ConfigError` for an unknown mode and
    :class:`InputError` when the tile lacks what an explicit mode needs."""
    if mode not in MASK_MODES:
        raise ConfigError(f"mask must be one of {', '.join(MASK_MODES)}, got {mode!r}")
    source, note = _resolve(mode, bandset, mask_model)
    if mode == "auto" and source != "none":  # the default of the CLI and QGIS: say what it chose and how to stop it
        note = f"mask auto: {note}; to turn it off: --mask none (QGIS: Mask clouds, shadows and snow = none)"
    return source, note


def _resolve(mode: str, bandset: BandSet, mask_model: str | None) -> tuple[str, str]:
    if mode == "model" or (mode == "auto" and "SCL" not in bandset.layers
                           and (mask_model is not None or cloud_model_name(bandset.level) in available_cards())):
        name = mask_model or cloud_model_name(bandset.level)
        return "model", (f"cloud/shadow mask from model {name!r}, in the same pass, snow where it says clear "
                         f"from the spectral snow test (NDSI)")
    has_scl = "SCL" in bandset.layers
    has_bands = all(b in bandset.files for b in SPECTRAL_BANDS)
    if mode == "none":
        return "none", "no cloud/shadow/snow mask"
    if mode == "scl" or (mode == "auto" and has_scl):
        if not has_scl:
            raise InputError(f"tile {bandset.source} has no scene classification layer (SCL_20m of an L2A "
                             f"product) to mask clouds, shadows and snow with")
        return "scl", f"cloud/shadow/snow mask from the scene classification {redact(bandset.layers['SCL'].path)}"
    if mode == "spectral" or has_bands:
        bandset.require(SPECTRAL_BANDS, SPECTRAL_NAME)  # InputError naming the missing bands
        return "spectral", ("cloud/snow mask from a spectral test (no scene classification in the tile; "
                            "shadows and thin cirrus are not detected)")
    return "none", (f"warning: no cloud/shadow/snow mask: the tile has neither a scene classification nor the "
                    f"bands of the spectral test ({', '.join(SPECTRAL_BANDS)})")


def hidden(codes: np.ndarray) -> np.ndarray:
    """Where the land cover is set to nodata under mask ``codes``."""
    return _HIDDEN_LUT[codes]


def spectral_mask(reflectance: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mask codes from ``(5, rows, cols)`` reflectance of :data:`SPECTRAL_BANDS` (nodata: ``~valid``).

    Snow where the NDSI is above :data:`NDSI_SNOW_MIN` with a bright NIR and green; cloud where
    blue, green and red are all above :data:`CLOUD_VISIBLE_MIN` (white and bright) and it is not
    snow. Bright white roofs and sand can be flagged as cloud; shadows are not detected.
    """
    blue, green, red, nir, swir = reflectance
    snow = spectral_snow(green, nir, swir)
    cloud = (blue > CLOUD_VISIBLE_MIN) & (green > CLOUD_VISIBLE_MIN) & (red > CLOUD_VISIBLE_MIN) & ~snow
    codes = np.full(valid.shape, CLEAR, dtype=np.uint8)
    codes[snow] = SNOW
    codes[cloud] = CLOUD
    codes[~valid] = MASK_NODATA
    return codes


def spectral_snow(green: np.ndarray, nir: np.ndarray, swir: np.ndarray) -> np.ndarray:
    """Where reflectance is snow: NDSI (green − SWIR) / (green + SWIR) above :data:`NDSI_SNOW_MIN`
    with NIR above :data:`SNOW_NIR_MIN` and green above :data:`SNOW_GREEN_MIN` (bands B03, B08, B11)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ndsi = (green - swir) / (green + swir)
    return (ndsi > NDSI_SNOW_MIN) & (nir > SNOW_NIR_MIN) & (green > SNOW_GREEN_MIN)


class ReflectanceReader:
    """Reflectance (float32 ``(bands, rows, cols)``, the baseline offset applied) and validity of any
    10 m window of ``bands`` of ``bandset``, read by nearest like the land cover's 10 m inputs.
    Open it with ``with``; one instance per thread."""

    def __init__(self, bandset: BandSet, bands: Sequence[str], name: str):
        self._reader = ChunkReader(bandset, bands, name, threads=1)
        self._offsets = np.array([bandset.offset(b) for b in bands], dtype=np.float32)[:, None, None]

    def __enter__(self) -> "ReflectanceReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        pixels = self._reader.read(rows, cols)
        return (pixels.data.astype(np.float32) + self._offsets) / np.float32(_QUANTIFICATION), pixels.valid


class ChunkMasker:
    """Mask codes of any 10 m window of ``bandset`` from ``source`` (``scl`` or ``spectral``).
    Open it with ``with``; one instance per thread (it holds open datasets)."""

    def __init__(self, bandset: BandSet, source: str):
        if source not in ("scl", "spectral"):
            raise ValueError(f"mask source must be scl or spectral, got {source!r}")
        self.bandset, self.source = bandset, source
        self._dataset = None
        self._reader = ReflectanceReader(bandset, SPECTRAL_BANDS, SPECTRAL_NAME) if source == "spectral" else None

    def __enter__(self) -> "ChunkMasker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """uint8 mask codes of 10 m rows ``[rows[0], rows[1])`` × cols ``[cols[0], cols[1])``."""
        if self._reader is not None:
            return spectral_mask(*self._reader.read(rows, cols))
        return SCL_TO_MASK[self._read_scl(rows, cols)]

    def _read_scl(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        layer, ref = self.bandset.layers["SCL"], self.bandset.reference
        ys = ref.transform.f + (reflect_indices(rows[0], rows[1], ref.height) + 0.5) * ref.transform.e
        xs = ref.transform.c + (reflect_indices(cols[0], cols[1], ref.width) + 0.5) * ref.transform.a
        try:
            if self._dataset is None:
                self._dataset = rasterio.open(layer.path)
            return read_nearest(self._dataset, layer.transform, layer.width, layer.height, ys, xs)
        except RasterioIOError as exc:
            raise InputError(f"cannot read the scene classification {redact(layer.path)} (rows {rows[0]}–{rows[1]}, "
                             f"cols {cols[0]}–{cols[1]}): {redact(str(exc))}") from None


#: Output class of a cloud model (ukis-csmask: background, cloud, cloud shadow) → mask code.
MODEL_TO_MASK = np.array([CLEAR, CLOUD, SHADOW], dtype=np.uint8)


def mask_grid(grid: GridPlan, card) -> GridPlan:
    """The chunks of the land-cover ``grid`` (same chunk size, corner and area of interest) over the
    global patches of the cloud model ``card``. Raises ConfigError when the chunk size is not a
    multiple of the cloud model's chunk unit."""
    if grid.window is None:
        return plan(grid.height, grid.width, card.patch_size, grid.chunk_size, card.pixel_factor)
    return plan_window(grid.height, grid.width, card.patch_size, grid.chunk_size, grid.window, card.pixel_factor)


def input_bytes(bandset: BandSet, card, grid: GridPlan) -> int:
    """GDAL block cache that the cloud model's reads of ``grid``'s chunks need (see
    :func:`.reader.input_cache_bytes`): added to the run's, so that its second read of the bands it
    shares with the land-cover model is served from the cache, not decoded again."""
    rows = max(c.input_rows[1] - c.input_rows[0] for c in grid.chunks)
    cols = max(c.input_cols[1] - c.input_cols[0] for c in grid.chunks)
    return input_cache_bytes(bandset, card.bands, card.name, rows, cols)


class PatchReuse:
    """Which of the cloud model's global patches each chunk computes, and the outputs kept for later chunks.

    Planned once from the run's chunk ``order`` (the chunks not yet journaled, row-major): a chunk
    computes the patches of its range that no earlier chunk of the run computed and takes the
    others from the store; an output is stored only when a later chunk needs it and released
    after the last one, so the store holds at most the patch rows (and columns) that neighbouring
    chunks share: :attr:`capacity` patches. The plan is a pure function of ``order``: the reader
    thread (what to read) and the inference thread (what to compute) follow it independently.
    """

    def __init__(self, grid: GridPlan, order: Sequence[int]):
        self.grid = grid
        self.y0, self.x0 = min(c.ky0 for c in grid.chunks), min(c.kx0 for c in grid.chunks)
        shape = (max(c.ky1 for c in grid.chunks) - self.y0, max(c.kx1 for c in grid.chunks) - self.x0)
        uses = np.zeros(shape, dtype=np.int32)  # chunks of the run still to come that need each patch
        for index in order:  # a loop over chunks; each step is one slice over its patches
            uses[self._window(grid.chunks[index])] += 1
        self._uses = uses.copy()
        held = np.zeros(shape, dtype=bool)
        #: chunk index → bool (ny, nx): the patches of its range that it computes
        self.compute: dict[int, np.ndarray] = {}
        #: chunk index → bool (ny, nx): the patches it computes that a later chunk needs (stored)
        self.keep: dict[int, np.ndarray] = {}
        self.capacity = 0
        for index in order:
            window = self._window(grid.chunks[index])
            compute = ~held[window]
            uses[window] -= 1
            keep = compute & (uses[window] > 0)
            self.compute[index], self.keep[index] = compute, keep
            self.capacity = max(self.capacity, int(held.sum() + keep.sum()))
            held[window] |= keep
            held &= uses > 0
        self._slot = np.full(shape, -1, dtype=np.int64)  # store slot of each held patch output, -1: none
        self._free = list(range(self.capacity - 1, -1, -1))
        self._pool: torch.Tensor | None = None
        #: patches computed so far (with data), against :attr:`.grid.GridPlan.n_patches` for a whole-tile run
        self.computed = 0

    def _window(self, chunk: Chunk) -> tuple[slice, slice]:
        return (slice(chunk.ky0 - self.y0, chunk.ky1 - self.y0), slice(chunk.kx0 - self.x0, chunk.kx1 - self.x0))

    def region(self, index: int) -> Chunk:
        """The patches of chunk ``index`` whose input region is read: the bounding box of those it
        computes, grown to cover its output window (whose 10 m validity the mask needs)."""
        chunk = self.grid.chunks[index]
        s = chunk.stride
        ky0, ky1 = chunk.row0 // s, math.ceil(chunk.row1 / s) - 1  # input rows (ky0·S, (ky1 + 1)·S) ⊇ the window
        kx0, kx1 = chunk.col0 // s, math.ceil(chunk.col1 / s) - 1
        rows, cols = np.flatnonzero(self.compute[index].any(axis=1)), np.flatnonzero(self.compute[index].any(axis=0))
        if len(rows):
            ky0, ky1 = min(ky0, chunk.ky0 + rows[0]), max(ky1, chunk.ky0 + rows[-1] + 1)
            kx0, kx1 = min(kx0, chunk.kx0 + cols[0]), max(kx1, chunk.kx0 + cols[-1] + 1)
        return replace(chunk, ky0=ky0, ky1=ky1, kx0=kx0, kx1=kx1)

    def merger(self, chunk: Chunk, region: Chunk, todo: np.ndarray, card, device: torch.device) -> "ReuseMerger":
        """A merger of chunk ``chunk``'s canvas from the store and from ``todo``, the patches computed
        now (``(ky, kx)`` rows relative to ``region``, in the order the inferer sends them)."""
        return ReuseMerger(self, chunk, region, todo, card, device)

    def held(self, chunk: Chunk) -> np.ndarray:
        """Chunk-relative ``(ky, kx)`` of the stored patch outputs in ``chunk``'s range, row-major."""
        return np.argwhere(self._slot[self._window(chunk)] >= 0)

    def take(self, chunk: Chunk, rel: np.ndarray, device: torch.device) -> torch.Tensor:
        """The stored outputs of chunk-relative patches ``rel`` (``(n, 2)``)."""
        slots = self._slot[rel[:, 0] + chunk.ky0 - self.y0, rel[:, 1] + chunk.kx0 - self.x0]
        return self._pool[torch.as_tensor(slots, device=device)]

    def store(self, chunk: Chunk, rel: np.ndarray, outputs: torch.Tensor) -> None:
        """Keep ``outputs`` of chunk-relative patches ``rel`` for later chunks."""
        if len(rel) == 0:
            return
        if self._pool is None:  # the capacity is planned; pages are touched as slots fill
            self._pool = torch.empty((self.capacity, *outputs.shape[1:]), dtype=torch.float32, device=outputs.device)
        slots = np.array(self._free[-len(rel):], dtype=np.int64)
        del self._free[-len(rel):]
        self._pool[torch.as_tensor(slots, device=outputs.device)] = outputs.to(torch.float32)
        self._slot[rel[:, 0] + chunk.ky0 - self.y0, rel[:, 1] + chunk.kx0 - self.x0] = slots

    def release(self, chunk: Chunk) -> None:
        """Chunk ``chunk`` is merged: free the outputs that no later chunk needs."""
        window = self._window(chunk)
        self._uses[window] -= 1
        done = (self._uses[window] <= 0) & (self._slot[window] >= 0)
        self._free.extend(self._slot[window][done].tolist())
        self._slot[window][done] = -1


class ReuseMerger:
    """A chunk's cloud-model canvas (:class:`.merger.DenseMerger` of the whole chunk) from stored and
    newly computed patch outputs, added in row-major patch order whatever their source (the
    canvas is a float sum: the order of the four patches over a pixel decides its last bits), so
    a chunk gives the same bytes with or without the store."""

    def __init__(self, reuse: PatchReuse, chunk: Chunk, region: Chunk, todo: np.ndarray, card, device: torch.device):
        self.reuse, self.chunk, self.device = reuse, chunk, device
        self.dense = DenseMerger(chunk, card, device, write_probs=False)
        width = chunk.n_patches_x
        self._rel = todo + np.array([region.ky0 - chunk.ky0, region.kx0 - chunk.kx0])  # chunk-relative
        self._keys = self._rel[:, 0] * width + self._rel[:, 1]
        self._keep = reuse.keep[chunk.index][self._rel[:, 0], self._rel[:, 1]] if len(todo) else np.zeros(0, bool)
        self._held = reuse.held(chunk)
        self._held_keys = self._held[:, 0] * width + self._held[:, 1]
        self._next_new = 0  # position in todo of the next batch
        self._next_held = 0  # position in _held of the next stored patch to add
        self.added = 0
        self._finished = False

    def add(self, ky: torch.Tensor, kx: torch.Tensor, outputs: torch.Tensor) -> None:
        start, count = self._next_new, outputs.shape[0]
        keys = self._keys[start: start + count]
        i = 0
        while i < count:  # runs of new patches between stored ones (a few per patch row)
            self._add_held(keys[i])
            j = count if self._next_held >= len(self._held_keys) else \
                i + int(np.searchsorted(keys[i:], self._held_keys[self._next_held]))
            rel = torch.as_tensor(self._rel[start + i: start + j], device=self.device)
            self.dense.add(rel[:, 0], rel[:, 1], outputs[i:j])
            i = j
        keep = np.flatnonzero(self._keep[start: start + count])
        self.reuse.store(self.chunk, self._rel[start + keep], outputs[torch.as_tensor(keep, device=outputs.device)])
        self.reuse.computed += count
        self.added += count
        self._next_new = start + count

    def _add_held(self, before: float) -> None:
        """Add the stored patches that come before key ``before`` (row-major)."""
        stop = int(np.searchsorted(self._held_keys, before))
        if stop > self._next_held:
            rel = self._held[self._next_held: stop]
            index = torch.as_tensor(rel, device=self.device)
            self.dense.add(index[:, 0], index[:, 1], self.reuse.take(self.chunk, rel, self.device))
            self.added += stop - self._next_held
            self._next_held = stop

    def result(self) -> ChunkProbabilities | None:
        """The chunk's blended outputs (None when no patch of its range holds data). The first call
        adds the remaining stored patches and releases what no later chunk needs (the inferer calls
        it when it computed patches; :meth:`ModelMask.codes` always does)."""
        if not self._finished:
            self._add_held(math.inf)
            self.reuse.release(self.chunk)
            self._finished = True
        return self.dense.result() if self.added else None


class ModelMask:
    """A cloud / cloud-shadow model run as the mask beside the land-cover model, in the same pass.

    It has its own :class:`.grid.GridPlan` — the land-cover ``grid``'s chunks (same chunk size,
    same corner, same area of interest) over the cloud model's own global patches, at its own
    resolution — so a mask pixel is what a whole-tile run gives it, whatever the chunk size.
    Patches shared by neighbouring chunks are computed once (:class:`PatchReuse`, planned by
    :meth:`start` for the run's chunk order). The reader thread reads a chunk's inputs with
    :meth:`reader` / :meth:`read`, the inference thread turns them into mask codes with
    :meth:`codes`; nothing here starts a thread.
    """

    def __init__(self, model: SegmentationModel, bandset: BandSet, grid: GridPlan, batch_size: int, *,
                 asynchronous: bool, check=None, log=None):
        card = model.card
        if card.num_classes != len(MODEL_TO_MASK):
            raise ModelError(f"mask model {card.name!r} has {card.num_classes} classes; a cloud mask model gives "
                             f"{len(MODEL_TO_MASK)}: clear, cloud and cloud shadow")
        bandset.require(card.bands, card.name)
        self.model, self.card, self.bandset = model, card, bandset
        #: whether the snow test runs (the ukis-csmask models read its bands; a custom one may not)
        self.snow = all(b in bandset.files for b in SNOW_BANDS)
        if not self.snow and log is not None:
            log(f"warning: snow is not masked: the tile lacks the bands of the snow test ({', '.join(SNOW_BANDS)})")
        self.grid = mask_grid(grid, card)
        self.inferer = ChunkInferer(model, Normaliser(card, bandset, model.device), batch_size,
                                    asynchronous=asynchronous, check=check, log=log)
        self.start(range(len(self.grid.chunks)))

    def start(self, order: Sequence[int]) -> None:
        """Plan the patch reuse for the chunks ``order`` of a run (before its threads start)."""
        self.reuse = PatchReuse(self.grid, list(order))

    def reader(self, threads: int) -> "ModelMaskReader":
        """The reader of the cloud model's bands onto its grid, and of the snow test's bands (close
        it, or use it with ``with``)."""
        cloud = ChunkReader(self.bandset, self.card.bands, self.card.name, self.card.resampling, threads,
                            self.card.pixel_factor)
        return ModelMaskReader(cloud, ReflectanceReader(self.bandset, SNOW_BANDS, SNOW_NAME) if self.snow else None)

    def read(self, reader: "ModelMaskReader", index: int) -> "ModelMaskInput":
        """Chunk ``index``'s inputs for the cloud model (the region of the patches it computes) and
        the snow test on its output window."""
        region, chunk = self.reuse.region(index), self.grid.chunks[index]
        pixels = reader.cloud.read(region.input_rows, region.input_cols)
        snow = None
        if reader.snow is not None:
            reflectance, valid = reader.snow.read((chunk.row0, chunk.row1), (chunk.col0, chunk.col1))
            snow = spectral_snow(*reflectance) & valid
        return ModelMaskInput(pixels.data, pixels.valid, pixels.output_valid, snow=snow)

    def codes(self, index: int, pixels: "ModelMaskInput") -> np.ndarray:
        """uint8 mask codes of chunk ``index``'s output window from the cloud model's inputs: the
        model's classes, and snow where the model says clear and the snow test says snow."""
        chunk, region = self.grid.chunks[index], self.reuse.region(index)
        top, left = chunk.row0 - region.input_rows[0], chunk.col0 - region.input_cols[0]
        valid = pixels.output_valid[top: top + chunk.height, left: left + chunk.width]
        codes = np.full((chunk.height, chunk.width), MASK_NODATA, dtype=np.uint8)
        dy, dx = region.ky0 - chunk.ky0, region.kx0 - chunk.kx0
        only = self.reuse.compute[index][dy: dy + region.n_patches_y, dx: dx + region.n_patches_x]
        todo = np.argwhere(patches_with_data(pixels.valid, region.n_patches_y, region.n_patches_x, self.card.stride)
                           & only)  # what the inferer computes, in its order
        merger = self.reuse.merger(chunk, region, todo, self.card, self.model.device)
        inferred = self.inferer.infer(region, pixels, only=only, merger=merger)
        if inferred is not None:
            inferred.raise_if_bad(self.card)
        probabilities = merger.result()
        if probabilities is None:  # no data under any of its patches
            return codes
        for r0 in range(chunk.row0, chunk.row1, STRIP_ROWS):
            r1 = min(r0 + STRIP_ROWS, chunk.row1)
            strip_valid = valid[r0 - chunk.row0: r1 - chunk.row0]
            _, conf = probabilities.strip((r0, r1), torch.from_numpy(strip_valid).to(self.model.device))
            classes = conf.classes.cpu().numpy()
            codes[r0 - chunk.row0: r1 - chunk.row0] = np.where(
                strip_valid, MODEL_TO_MASK[np.minimum(classes, len(MODEL_TO_MASK) - 1)], MASK_NODATA)
        if pixels.snow is not None:  # the cloud model knows no snow: clear snow is snow (cloud stays cloud)
            codes[(codes == CLEAR) & pixels.snow] = SNOW
        return codes


@dataclass
class ModelMaskInput(ChunkPixels):
    """A chunk's inputs for :meth:`ModelMask.codes`: the cloud model's (on its grid), and ``snow``,
    the spectral snow test on the chunk's 10 m output window (None: the tile lacks its bands)."""

    snow: np.ndarray | None = None


class ModelMaskReader:
    """The reader-thread side of :class:`ModelMask`: ``cloud`` reads the cloud model's bands onto its
    grid, ``snow`` (None when the tile lacks :data:`SNOW_BANDS`) the snow test's at 10 m."""

    def __init__(self, cloud: ChunkReader, snow: ReflectanceReader | None):
        self.cloud, self.snow = cloud, snow

    def __enter__(self) -> "ModelMaskReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.cloud.close()
        finally:
            if self.snow is not None:
                self.snow.close()


@dataclass(frozen=True)
class MaskSummary:
    """What a run's mask covered: pixel counts per :data:`MASK_CLASSES` over the pixels with data."""

    source: str
    counts: tuple[int, ...]
    kept: bool  # land cover kept under the mask (``keep_masked``)

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def masked_share(self) -> float:
        """Share of the pixels with data under a class that hides the land cover."""
        hidden_count = sum(n for code, n in enumerate(self.counts) if code in HIDDEN)
        return hidden_count / self.total if self.total else 0.0

    def shares(self) -> dict[str, float]:
        return {name: (n / self.total if self.total else 0.0) for name, n in zip(MASK_CLASSES, self.counts)}

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "kept_under_mask": self.kept, "masked_share": self.masked_share,
                "pixels": dict(zip(MASK_CLASSES, self.counts)), "shares": self.shares()}


def summarise(path: Path, source: str, kept: bool, strip_rows: int = 1024) -> MaskSummary:
    """Count the mask classes of a finished ``<tile>_mask.tif`` (strip by strip: bounded memory).
    Counted from the file, so a resumed run counts exactly like an uninterrupted one."""
    counts = np.zeros(256, dtype=np.int64)
    with rasterio.open(path) as ds:
        for row0 in range(0, ds.height, strip_rows):
            window = rasterio.windows.Window(0, row0, ds.width, min(strip_rows, ds.height - row0))
            counts += np.bincount(ds.read(1, window=window).ravel(), minlength=256)
    return MaskSummary(source, tuple(int(n) for n in counts[:len(MASK_CLASSES)]), kept)
