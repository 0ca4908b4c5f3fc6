"""End to end on a segmented 480² sample tile whose truth is known (core.sample.truth_window).

The built-in model maps BigEarthNet-19 classes, the truth has the six sample classes, so the
reference class of a pixel is its truth class carried over to the map class most of that
truth class was mapped as (a fixed crosswalk computed once from the whole tile). The true
area of a class is then known exactly, and the designs' intervals can be checked against it.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from osgeo import ogr

from s2seg.core.accuracy.assess import assess
from s2seg.core.accuracy.config import REFERENCE_FIELD, SAMPLE_LAYER, DesignConfig
from s2seg.core.accuracy.design import draw_design, find_products, sample_design
from s2seg.core.accuracy.estimate import Z95, estimate
from s2seg.core.accuracy.report import write_reports
from s2seg.core.cli import main
from s2seg.core.config import EngineConfig
from s2seg.core.pipeline import segment
from s2seg.core.sample import truth_window, write_sample_tile

SIZE = 480
SEEDS = 50
TOTAL = 1000
THRESHOLD = 0.2  # gap below it: uncertain


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """(products, reference raster in map classes, class codes, true area proportions)."""
    root = tmp_path_factory.mktemp("accuracy")
    tile = write_sample_tile(root / "tile", size=SIZE, seed=0)
    products = find_products(segment(tile, root / "out", config=EngineConfig()).output_dir)
    with rasterio.open(products.paths["class"]) as ds:
        classes = ds.read(1)
    truth = truth_window(SIZE, 0)
    crosswalk = np.zeros(256, np.int64)
    for t in np.unique(truth):
        mapped, count = np.unique(classes[truth == t], return_counts=True)
        crosswalk[t] = mapped[np.argmax(count)]
    reference = crosswalk[truth]
    codes = sorted(set(np.unique(classes).tolist()) | set(np.unique(reference).tolist()))
    true_p = np.array([(reference == c).mean() for c in codes])
    return products, reference, codes, true_p


def intervals(scene, confidence: str, minimum: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Over SEEDS designs of TOTAL units: (covered (seeds, classes), interval width (seeds, classes)),
    for the 95 % intervals the assessment reports (``Estimate.ci95``)."""
    products, reference, codes, true_p = scene
    covered, width = [], []
    for seed in range(SEEDS):
        d = draw_design(products, DesignConfig(total=TOTAL, minimum=minimum, confidence=confidence,
                                               threshold=THRESHOLD, seed=seed))
        a = estimate(d.stratum, d.map_class, reference[d.rows, d.cols], {s.code: s.pixels for s in d.strata}, codes)
        low = np.array([e.ci95[0] for e in a.proportions])
        high = np.array([e.ci95[1] for e in a.proportions])
        covered.append((low - 1e-12 <= true_p) & (true_p <= high + 1e-12))
        width.append(high - low)
    return np.array(covered), np.array(width)


@pytest.fixture(scope="module")
def class_only(scene):
    return intervals(scene, "none")


@pytest.fixture(scope="module")
def by_confidence(scene):
    return intervals(scene, "gap")


@pytest.mark.parametrize("design", ["class_only", "by_confidence"])
def test_area_intervals_cover_the_true_areas(scene, design, request):
    covered, _ = request.getfixturevalue(design)
    present = scene[3] > 0  # classes with a true area (the others cannot be missed: their intervals start at 0)
    rates = covered[:, present].mean(axis=0)
    print(f"{design}: coverage per class {np.round(rates, 2).tolist()}, pooled {covered[:, present].mean():.3f}")
    assert covered[:, present].mean() >= 0.90
    assert rates.min() >= 0.80


@pytest.mark.parametrize("confidence", ["none", "gap"])
def test_area_intervals_cover_with_the_default_minimum(scene, confidence):
    """Minimum 50 of 1,000 units leaves the large strata a few dozen units, so the rare errors in them are
    mostly not drawn: ``value ± 1.96 SE`` covered 0.74 (gap) and 0.87 (none) of the designs with the
    built-in model here; the Price & Bonett intervals hold."""
    covered, _ = intervals(scene, confidence, minimum=50)
    present = scene[3] > 0
    rates = covered[:, present].mean(axis=0)
    print(f"minimum 50, {confidence}: coverage per class {np.round(rates, 2).tolist()}, "
          f"pooled {covered[:, present].mean():.3f}")
    assert covered[:, present].mean() >= 0.90
    assert rates.min() >= 0.80


def test_confidence_strata_hold_the_errors_and_their_intervals_are_measured(scene, class_only, by_confidence):
    """The split by confidence rests on the map's errors gathering in its low-gap pixels: checked on the
    whole raster. How much narrower the intervals get depends on how sharply they gather, i.e. on the
    model: measured and printed, not asserted (33 % narrower with the built-in model before issue 16's
    prototypes, about 1 % with them: that model is openly unsure between crops and meadows, so its
    uncertain part is half the tile and errs at 39 % against 10 % in the confident part)."""
    products, reference, _, true_p = scene
    with rasterio.open(products.paths["class"]) as ds:
        classes = ds.read(1)
    with rasterio.open(products.paths["gap"]) as ds:
        uncertain = ds.read(1) < THRESHOLD
    wrong = classes != reference
    assert wrong[uncertain].mean() >= 2 * wrong[~uncertain].mean()
    present = true_p > 0
    plain, split = class_only[1][:, present].mean(), by_confidence[1][:, present].mean()
    print(f"errors: {wrong[uncertain].mean():.3f} of uncertain pixels ({uncertain.mean():.2f} of the tile), "
          f"{wrong[~uncertain].mean():.3f} of confident ones; mean 95 % interval width of the area proportions: "
          f"class strata {plain:.4f}, class × gap strata {split:.4f} ({100 * (1 - split / plain):.0f} % narrower)")


def label_with_truth(path, products, reference, names: bool) -> None:
    """Fill the reference field of a sample file from the reference raster (as a person would)."""
    ds = ogr.Open(str(path), update=1)
    layer = ds.GetLayerByName(SAMPLE_LAYER)
    for feature in layer:
        code = int(reference[feature.GetField("row"), feature.GetField("col")])
        feature.SetField(REFERENCE_FIELD, products.class_names[code].upper() if names else str(code))
        layer.SetFeature(feature)
    ds = None


def test_cli_design_label_assess_report(scene, tmp_path, capsys):
    products, reference, codes, true_p = scene
    folder = products.paths["class"].parent
    sample = tmp_path / "sample.gpkg"
    assert main(["sample-design", str(folder), str(sample), "--size", "400", "--minimum", "5",
                 "--confidence", "entropy", "--threshold", "1.0", "--seed", "3"]) == 0
    assert main(["sample-design", str(folder), str(sample)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    label_with_truth(sample, products, reference, names=True)
    # Two units left unlabelled, one with a label that is no class: reported and left out.
    ds = ogr.Open(str(sample), update=1)
    layer = ds.GetLayerByName(SAMPLE_LAYER)
    for fid, value in ((1, None), (2, ""), (3, "not a class")):
        feature = layer.GetFeature(fid)
        if value is None:
            feature.SetFieldNull(REFERENCE_FIELD)
        else:
            feature.SetField(REFERENCE_FIELD, value)
        layer.SetFeature(feature)
    ds = None
    assert main(["assess", str(folder), str(sample)]) == 0
    captured = capsys.readouterr()
    assert "overall accuracy" in captured.out and "'not a class'" in captured.err
    report = json.loads((tmp_path / "sample_assessment.json").read_text())
    assert report["n_units"] == 397 and report["unlabelled_units"] == [1, 2] and report["unknown_labels"] == {
        "3": "not a class"}
    estimated = {c["code"]: c["area"]["value"] for c in report["classes"]}
    assert sum(estimated.values()) == pytest.approx(SIZE * SIZE * products.pixel_area)
    for code, p in zip(codes, true_p):
        if p > 0.15:  # the large classes' areas come out close to the truth from 397 labels
            assert estimated[code] == pytest.approx(p * SIZE * SIZE * products.pixel_area, rel=0.1)
    page = (tmp_path / "sample_assessment.html").read_text()
    assert "<svg" in page and "Overall accuracy" in page and products.tile in page


def test_assess_reads_codes_and_matches_direct_estimate(scene, tmp_path):
    products, reference, codes, _ = scene
    sample = tmp_path / "s.gpkg"
    design = sample_design(products.paths["class"].parent, sample, DesignConfig(total=300, minimum=5, seed=8))
    label_with_truth(sample, products, reference, names=False)
    result = assess(products.paths["class"].parent, sample)
    direct = estimate(design.stratum, design.map_class, reference[design.rows, design.cols],
                      {s.code: s.pixels for s in design.strata}, result.assessment.classes)
    assert result.assessment.overall.value == pytest.approx(direct.overall.value)
    assert [e.value for e in result.assessment.areas] == pytest.approx(
        [e.value * products.pixel_area * SIZE * SIZE for e in direct.proportions])
    html_path, json_path = write_reports(result, tmp_path / "r.html", tmp_path / "r.json")
    assert html_path.is_file() and json.loads(json_path.read_text())["tile"] == products.tile
