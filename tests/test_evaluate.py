"""The evaluation on real labelled BigEarthNet patches (benchmarks/evaluate.py), through the real engine path.

The six BEN v1 GeoTIFF patches come from the ``bigearthnet-common`` wheel (fixture ``real_patches`` of
conftest.py, fetched into pytest's cache once; without the package registry the tests that need them are skipped).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from s2seg.benchmarks.evaluate import GROUPS, PatchScore, group_shares, score_patches, summary, tables
from s2seg.benchmarks.evaluation_data import EvalPatch
from s2seg.core.nomenclature import BIGEARTHNET19_NAMES, LABEL_GROUPS, class_index

#: Targets of issue 16 (mean over the patches), checked on the six GeoTIFF patches.
PRECISION_MIN = 0.90
RECALL_MIN = 0.85


@pytest.fixture(scope="session")
def builtin_scores(real_patches: list[EvalPatch]) -> list[PatchScore]:
    return score_patches(real_patches, "builtin")


def test_groups_cover_the_nomenclature_once() -> None:
    names = [name for group in LABEL_GROUPS.values() for name in group]
    assert sorted(names) == sorted(BIGEARTHNET19_NAMES)


def test_scores_of_a_known_raster() -> None:
    """Precision and recall by hand: 60 % forest, 30 % water, 10 % urban, 4 nodata pixels."""
    classes = np.full((10, 10), class_index("Coniferous forest"), dtype=np.uint8)
    classes.flat[60:90] = class_index("Inland waters")
    classes.flat[90:100] = class_index("Urban fabric")
    classes = np.concatenate([classes.ravel(), np.full(4, 255, np.uint8)])
    shares, valid = group_shares(classes, BIGEARTHNET19_NAMES)
    assert valid == 100
    assert shares[GROUPS.index("forest")] == pytest.approx(0.6) and shares[GROUPS.index("urban")] == pytest.approx(0.1)
    patch = EvalPatch("p", Path("."), "test", "X", "summer", "L2A", False, ("Mixed forest", "Arable land"))
    score = PatchScore(patch, shares, valid, 0.5)
    assert score.precision == pytest.approx(0.6)  # forest only: water and urban are not labelled
    assert score.recall == pytest.approx(0.5)  # forest found, agriculture not
    assert summary([score])["precision"] == pytest.approx(0.6)


def test_six_geotiff_patches_are_the_real_ones(real_patches: list[EvalPatch]) -> None:
    assert len(real_patches) == 6
    assert {p.country for p in real_patches} == {"Austria", "Ireland", "Portugal", "Finland"}
    assert sum(p.snow for p in real_patches) == 1  # the Finnish February patch
    for p in real_patches:
        assert p.labels and set(p.labels) <= set(BIGEARTHNET19_NAMES)
        assert len(list(p.folder.glob("*_B*.tif"))) == 12


def test_builtin_meets_the_targets_on_the_geotiff_patches(builtin_scores: list[PatchScore]) -> None:
    total = summary(builtin_scores)
    report = tables(builtin_scores, "builtin")
    assert total["precision"] >= PRECISION_MIN, report
    assert total["recall"] >= RECALL_MIN, report


def test_snow_is_not_water_with_confidence(builtin_scores: list[PatchScore]) -> None:
    """The Finnish February patch (snow over fields and forest) was 72 % water at maxprob 0.90."""
    snowy = [s for s in builtin_scores if s.patch.snow]
    assert snowy
    for s in snowy:
        assert s.shares[GROUPS.index("water")] < 0.05, tables([s], "snow")


def test_ben_v1_pickles_are_read_without_running_code():
    """The BEN v1 LMDB holds pickles: only numpy arrays and stand-ins for the patch classes are rebuilt."""
    import io
    import os
    import pickle

    from s2seg.benchmarks.evaluation_data import _PatchUnpickler

    with pytest.raises(pickle.UnpicklingError, match=r"refused to load posix\.system"):
        _PatchUnpickler(io.BytesIO(pickle.dumps(os.system))).load()
    array = np.arange(6, dtype=np.uint16).reshape(2, 3)
    np.testing.assert_array_equal(_PatchUnpickler(io.BytesIO(pickle.dumps(array))).load(), array)


def test_a_patch_left_without_valid_pixels_by_the_mask_is_listed_not_scored() -> None:
    """The 5 % rule: a patch with fewer than MIN_VALID_SHARE of its pixels valid is "masked": its row
    says so, and the mean and the subsets leave it out and say how many."""
    from s2seg.benchmarks.evaluate import MIN_VALID_SHARE

    labels = ("Mixed forest",)
    forest = tuple(1.0 if g == "forest" else 0.0 for g in GROUPS)
    water = tuple(1.0 if g == "water" else 0.0 for g in GROUPS)
    seen = PatchScore(EvalPatch("seen", Path("."), "test", "X", "summer", "L2A", False, labels), forest, 900, 0.8,
                      1000, 0.1)
    under = int(MIN_VALID_SHARE * 1000) - 1
    snowed = PatchScore(EvalPatch("snowed", Path("."), "test", "X", "winter", "L2A", True, labels), water, under, 0.5,
                        1000, 1 - under / 1000)
    assert not seen.masked and snowed.masked
    text = tables([seen, snowed], "masked")
    assert "Mean over 1 patches: label-group precision 100.0 %" in text
    assert "1 of 2 patches have fewer than 5% of their pixels valid" in text
    assert "| snowed | test | X | winter | yes | forest | water 100.0 | masked | masked | – |" in text
    assert "| season winter | 0 | – | – | 1 |" in text


def test_evaluation_under_the_default_mask_leaves_the_snowy_patch_out(real_patches: list[EvalPatch]) -> None:
    """``--mask auto`` (the command line's default) on the six GeoTIFF patches: the snow-covered Finnish
    February patch (snow from edge to edge) is masked: without the snow test the U-Net left it clear; masked pixels are not
    counted as valid; the codes are recorded for every patch."""
    from s2seg.core import mask as mask_

    masks: dict[str, np.ndarray] = {}
    scores = score_patches(real_patches, "builtin", mask="auto", masks=masks)
    assert set(masks) == {p.name for p in real_patches}
    for s in scores:
        assert s.valid == int((~mask_.hidden(masks[s.patch.name]) & (masks[s.patch.name] != 255)).sum())
        assert s.masked_share == pytest.approx(1 - s.valid / s.pixels)
    snowy = [s for s in scores if s.patch.snow]
    assert snowy and all(s.masked for s in snowy), tables(scores, "auto")
    assert not any(s.masked for s in scores if not s.patch.snow)
