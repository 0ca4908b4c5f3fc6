"""The preview PNG's legend, and the one share format every product uses."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from s2seg.core.nomenclature import BIGEARTHNET19_COLOURS, BIGEARTHNET19_NAMES, format_share
from s2seg.core.preview import LEGEND_LINE_CHARS, PreviewBuilder


def test_share_format_says_when_a_present_class_is_below_the_shown_precision():
    assert format_share(0.123) == "12.3 %"
    assert format_share(0.0003) == "< 0.1 %"  # present: never shown as 0.0 %
    assert format_share(0.0) == "0.0 %"
    assert format_share(math.nan) == "–"


def _legend_height(tmp_path, name: str) -> int:
    builder = PreviewBuilder(4, 4, 512)
    builder.add(np.zeros((4, 4), dtype=np.uint8), 0, 0)
    path = tmp_path / f"{len(name)}.png"
    builder.save(path, [name], [BIGEARTHNET19_COLOURS[0]], [1.0])
    return Image.open(path).height


def test_long_class_names_wrap_in_the_legend_instead_of_being_cut(tmp_path):
    longest = max(BIGEARTHNET19_NAMES, key=len)
    assert len(longest) > LEGEND_LINE_CHARS  # "Land principally occupied by agriculture, …"
    assert _legend_height(tmp_path, longest) > _legend_height(tmp_path, "Beaches, dunes, sands")
