"""A downsampled colour preview of the class map, with a legend of the classes present."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_path
from .nomenclature import format_share, hex_to_rgb
from .uncertainty import CLASS_NODATA

NODATA_RGB = (0, 0, 0)
#: Legend entry of the pixels hidden by the cloud/shadow/snow mask.
MASKED_LABEL = "masked (cloud, shadow, snow)"
#: Characters per legend line: longer class names wrap onto further lines instead of being cut.
LEGEND_LINE_CHARS = 40
#: ``<tile>_preview.png``: the tile's name keeps previews of several tiles in one folder apart.
PREVIEW_SUFFIX = "_preview.png"


def preview_name(tile_name: str) -> str:
    """File name of the preview of ``tile_name``."""
    return tile_name + PREVIEW_SUFFIX


class PreviewBuilder:
    """Collects every ``step``-th pixel of the class map as chunks arrive (no second pass over the file)."""

    def __init__(self, width: int, height: int, max_size: int, origin: tuple[int, int] = (0, 0)):
        self.origin = origin  # tile pixel (row, col) of the map's corner; add() takes tile coordinates
        self.step = max(1, math.ceil(max(width, height) / max_size))
        self.classes = np.full((math.ceil(height / self.step), math.ceil(width / self.step)), CLASS_NODATA, dtype=np.uint8)

    def add(self, classes: np.ndarray, row0: int, col0: int) -> None:
        step = self.step
        row0, col0 = row0 - self.origin[0], col0 - self.origin[1]
        first_row = (-row0) % step  # first row of this window on the global sampling lattice
        first_col = (-col0) % step
        sample = classes[first_row::step, first_col::step]
        r, c = (row0 + first_row) // step, (col0 + first_col) // step
        self.classes[r: r + sample.shape[0], c: c + sample.shape[1]] = sample

    def save(self, path: Path, class_names: Sequence[str], class_colours: Sequence[str], shares: Sequence[float],
             masked_share: float | None = None) -> None:
        """Write the PNG: the map on the left, a legend of the classes present (with shares of the
        visible pixels) on the right; ``masked_share``: a last entry for the pixels hidden by the
        cloud/shadow/snow mask (shown in the nodata colour)."""
        palette = np.zeros((256, 3), dtype=np.uint8)
        palette[:] = NODATA_RGB
        for i, colour in enumerate(class_colours):
            palette[i] = hex_to_rgb(colour)
        rgb = palette[self.classes]
        present = [i for i in np.argsort(shares)[::-1] if shares[i] > 0]
        font = ImageFont.load_default()
        line_h, swatch, pad = 12, 10, 6
        entries = [textwrap.wrap(f"{class_names[i]} {format_share(shares[i])}", LEGEND_LINE_CHARS) for i in present]
        if masked_share is not None:
            present.append(CLASS_NODATA)  # palette entry: the nodata colour
            entries.append(textwrap.wrap(f"{MASKED_LABEL} {format_share(masked_share)} of the tile",
                                         LEGEND_LINE_CHARS))
        legend_w = max([font.getlength(line) for lines in entries for line in lines] + [80]) + swatch + 3 * pad
        legend_h = sum(len(lines) * line_h + 2 for lines in entries) + 2 * pad
        height = max(rgb.shape[0], legend_h)
        canvas = Image.new("RGB", (rgb.shape[1] + int(legend_w), height), (255, 255, 255))
        canvas.paste(Image.fromarray(rgb), (0, 0))
        draw = ImageDraw.Draw(canvas)
        x0, y = rgb.shape[1] + pad, pad
        for i, lines in zip(present, entries):
            draw.rectangle([x0, y, x0 + swatch, y + swatch], fill=tuple(int(v) for v in palette[i]), outline=(0, 0, 0))
            for k, line in enumerate(lines):
                draw.text((x0 + swatch + pad, y - 1 + k * line_h), line, fill=(0, 0, 0), font=font)
            y += len(lines) * line_h + 2
        with atomic_path(path) as tmp:  # a fresh file of ours: a planted link is never written through
            canvas.save(tmp, format="PNG")
