"""The peer row: Deepness's tiling, re-implemented from its documented behaviour, on the same model and scene.

Deepness (PUTvision/qgis-plugin-deepness, ``MapProcessorSegmentation``) segments a raster layer
like this; the facts below were read from its source, the code is ours:

* the processing resolution is the model's (30 m here): every tile is read from the layer at that
  resolution with bilinear resampling (``get_tile_image``: ``setZoomedOutResamplingMethod(Bilinear)``);
* the extent is grown by half the overlap on every side, clipped to the layer, then extended on the
  right and at the bottom to ``N · stride + tile`` pixels (``calculate_extended_processing_extent``),
  where ``stride = tile − overlap``; pixels beyond the layer read as no data (0);
* tiles of ``tile × tile`` start at ``k · stride`` and are batched in row-major order; each batch is
  one ``InferenceSession.run``; each tile's output becomes a class map by ``argmax`` over the
  channels (``_process_tile``);
* each tile's class map is pasted into the full image, cropped by half the overlap on every side
  that has a neighbour (``TileParams.get_slice_on_full_image_for_copying``): the last tile pasted
  wins, no blending, no confidence;
* the image is cut back to the layer's extent (the median filter of size 1, the default, is a no-op).

Input scaling is the model card's (reflectance = DN / 10000, then the card's mean/std), so that
both runs give the network the same numbers. Used by :mod:`.bench` (the peer section) only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Deepness's defaults for this comparison: its tile (the model's input size) and overlap in pixels.
PEER_TILE = 256
PEER_OVERLAP = 50


@dataclass(frozen=True)
class PeerPlan:
    """Deepness's tile grid over a ``height × width`` image (processing-resolution pixels)."""

    height: int
    width: int
    tile: int
    overlap: int

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def _extended(self, n: int) -> int:
        """Pixels after growing by half the overlap (clipped to the layer: no change) and rounding up to N·stride + tile."""
        if n <= self.tile:
            return self.tile
        return n + (self.stride - (n - self.tile) % self.stride) % self.stride

    @property
    def extended_shape(self) -> tuple[int, int]:
        return self._extended(self.height), self._extended(self.width)

    @property
    def bins(self) -> tuple[int, int]:
        """Tiles along y and x."""
        eh, ew = self.extended_shape
        return (eh - self.tile) // self.stride + 1, (ew - self.tile) // self.stride + 1

    @property
    def n_tiles(self) -> int:
        ny, nx = self.bins
        return ny * nx

    def paste_slices(self, by: int, bx: int) -> tuple[slice, slice, slice, slice]:
        """(rows, cols) on the full image, then (rows, cols) on the tile, of tile ``(by, bx)``'s centre crop."""
        half = max(self.overlap // 2, 0)
        ny, nx = self.bins
        y0, x0 = by * self.stride, bx * self.stride
        top = 0 if by == 0 else half
        left = 0 if bx == 0 else half
        bottom = self.tile if by == ny - 1 else self.tile - half
        right = self.tile if bx == nx - 1 else self.tile - half
        return slice(y0 + top, y0 + bottom), slice(x0 + left, x0 + right), slice(top, bottom), slice(left, right)


@dataclass
class PeerResult:
    classes: np.ndarray  # (height, width) uint8, class index + 1 as Deepness writes it (0: never)
    n_tiles: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def read_scene(paths: list[Path], window: tuple[int, int, int, int], factor: int) -> np.ndarray:
    """The bands of ``window`` = ``(row0, col0, height, width)`` in 10 m pixels, read at ``factor × 10 m``
    with GDAL's bilinear resampling (what the QGIS provider does for Deepness); float32 DN, ``(C, h, w)``."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    row0, col0, height, width = window
    out_h, out_w = height // factor, width // factor
    bands = []
    for path in paths:
        with rasterio.open(path) as ds:
            scale = 10.0 / ds.res[0]  # 10 m pixels → this band's pixels
            win = Window(col0 * scale, row0 * scale, width * scale, height * scale)
            bands.append(ds.read(1, window=win, out_shape=(out_h, out_w), resampling=Resampling.bilinear,
                                 out_dtype="float32"))
    return np.stack(bands)


def segment_like_deepness(session, image: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: float,
                          tile: int = PEER_TILE, overlap: int = PEER_OVERLAP, batch_size: int = 16) -> PeerResult:
    """Deepness's tiling of ``image`` (``(C, h, w)`` DN) through the ONNX ``session``; see the module docstring."""
    started = time.perf_counter()
    channels, height, width = image.shape
    plan = PeerPlan(height, width, tile, overlap)
    eh, ew = plan.extended_shape
    padded = np.zeros((channels, eh, ew), dtype=np.float32)  # beyond the layer: no data
    padded[:, :height, :width] = image
    full = np.zeros((eh, ew), dtype=np.uint8)
    name = session.get_inputs()[0].name
    ny, nx = plan.bins
    order = [(by, bx) for by in range(ny) for bx in range(nx)]
    timings = {"model": 0.0}
    for start in range(0, len(order), batch_size):
        group = order[start:start + batch_size]
        batch = np.stack([padded[:, by * plan.stride: by * plan.stride + tile, bx * plan.stride: bx * plan.stride + tile]
                          for by, bx in group])
        batch = ((batch * scale - mean) / std).astype(np.float32)
        t0 = time.perf_counter()
        out = session.run(None, {name: batch})[0]
        timings["model"] += time.perf_counter() - t0
        classes = (np.argmax(out, axis=1) + 1).astype(np.uint8)  # Deepness's "+1": 0 stays "not processed"
        for (by, bx), cls in zip(group, classes):
            fy, fx, ty, tx = plan.paste_slices(by, bx)
            full[fy, fx] = cls[ty, tx]
    seconds = time.perf_counter() - started
    return PeerResult(full[:height, :width], plan.n_tiles, seconds, timings)
