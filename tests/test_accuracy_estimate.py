"""The estimators against the published worked examples, and their edge cases.

Sources of the numbers (the sample counts and map areas are the papers' tables, as also
transcribed in the examples of the R package mapaccuracy, man/olofsson.Rd and
man/stehman2014.Rd; the expected results are the values printed in the papers, at the
printed precision):
- Olofsson et al. 2014, RSE 148:42-57, Table 8 and the results on p. 54.
- Olofsson et al. 2013, RSE 129:122-131, Example 1 (Table 4).
- Stehman 2014, IJRS 35:4923-4939, numerical example (pp. 4932-4936).
- Olofsson et al. 2014 §5.1.1: n = 641 for a target SE(Ô) of 0.01.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from s2seg.core.accuracy.estimate import (Z95, AccuracyError, adjusted_linear_function, allocate, estimate,
                                          sample_size_overall, sample_size_users)


def units(counts: list[list[int]]) -> tuple[list[int], list[int]]:
    """Map and reference class of every unit of an error matrix of sample counts (rows: map)."""
    m, r = [], []
    for i, row in enumerate(counts):
        for j, n in enumerate(row):
            m += [i] * n
            r += [j] * n
    return m, r


# Olofsson et al. 2014, Table 8: deforestation, forest gain, stable forest, stable non-forest.
TABLE8 = [[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]]
TABLE8_PIXELS = {0: 200_000, 1: 150_000, 2: 3_200_000, 3: 6_450_000}  # 30 m Landsat pixels


def test_olofsson_2014_table8_accuracies_and_areas():
    m, r = units(TABLE8)
    a = estimate(m, m, r, TABLE8_PIXELS, [0, 1, 2, 3], unit_area=0.09)  # 30 m pixel = 0.09 ha
    # p. 54, left: user's, producer's and overall accuracy ± the 95 % half-width, two decimals.
    assert [round(u.value, 2) for u in a.users] == [0.88, 0.73, 0.93, 0.96]
    assert [round(Z95 * u.se, 2) for u in a.users] == [0.07, 0.10, 0.04, 0.02]
    assert [round(p.value, 2) for p in a.producers] == [0.75, 0.85, 0.93, 0.96]
    assert [round(Z95 * p.se, 2) for p in a.producers] == [0.21, 0.25, 0.03, 0.02]
    assert (round(a.overall.value, 2), round(Z95 * a.overall.se, 2)) == (0.95, 0.02)
    # p. 54, right: error-adjusted areas ± the 95 % half-width, in ha.
    assert [round(e.value) for e in a.areas] == [21_158, 11_686, 285_770, 581_386]
    assert [round(Z95 * e.se) for e in a.areas] == [6_158, 3_756, 15_510, 16_282]
    # Mapped areas and the proportions matrix (eq. 4: p̂_ij = W_i n_ij / n_i·).
    assert [round(x) for x in a.mapped_areas] == [18_000, 13_500, 288_000, 580_500]
    w = np.array(list(TABLE8_PIXELS.values())) / 1e7
    expected = w[:, None] * np.array(TABLE8) / np.array(TABLE8).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(a.matrix, expected, rtol=1e-12)


def test_olofsson_2013_example1():
    # Table 4: rows map, columns reference; map areas in pixels.
    counts = [[97, 0, 3], [3, 279, 18], [2, 1, 97]]
    m, r = units(counts)
    a = estimate(m, m, r, {0: 22_353, 1: 1_122_543, 2: 610_228}, [0, 1, 2])
    assert [round(u.value, 2) for u in a.users] == [0.97, 0.93, 0.97]
    assert [round(p.value, 2) for p in a.producers[:2]] == [0.48, 0.99]
    # (The paper prints 0.88 for the third producer's accuracy; the estimator gives 0.897.)
    assert round(a.overall.value, 2) == 0.94


STEHMAN_S = ["A"] * 10 + ["B"] * 10 + ["C"] * 10 + ["D"] * 10
STEHMAN_M = ["A"] * 7 + ["B"] * 3 + ["A"] + ["B"] * 11 + ["C"] * 6 + ["B", "B"] + ["D"] * 10
STEHMAN_R = (["A"] * 5 + ["C", "B", "A", "B", "C", "A"] + ["B"] * 5 + ["A", "A", "B", "B"] + ["C"] * 5
             + ["D", "D", "B", "B", "A"] + ["D"] * 7 + ["C", "C", "B"])
STEHMAN_N = {"A": 40_000, "B": 30_000, "C": 20_000, "D": 10_000}


def test_stehman_2014_strata_differ_from_map_classes():
    code = {c: i for i, c in enumerate("ABCD")}
    a = estimate(STEHMAN_S, [code[x] for x in STEHMAN_M], [code[x] for x in STEHMAN_R], STEHMAN_N, [0, 1, 2, 3],
                 fpc=True)
    assert round(a.proportions[0].value, 2) == 0.35 and round(a.proportions[2].value, 2) == 0.20
    assert round(a.overall.value, 2) == 0.63
    assert round(a.users[1].value, 3) == 0.574 and round(a.producers[1].value, 3) == 0.794
    assert round(a.matrix[1, 2], 2) == 0.08
    assert round(a.proportions[0].se, 3) == 0.082 and round(a.proportions[2].se, 3) == 0.064
    assert round(a.overall.se, 3) == 0.085 and round(a.users[1].se, 3) == 0.125


def test_olofsson_2014_sample_size_eq13():
    # §5.1.1: W = 0.02, 0.015, 0.32, 0.645; expected U = 0.70, 0.60, 0.90, 0.95; SE(Ô) = 0.01 → n ≈ 641.
    assert sample_size_overall([0.02, 0.015, 0.32, 0.645], [0.70, 0.60, 0.90, 0.95], 0.01) == 641
    # SE(U)² = U(1 − U)/(n − 1): U = 0.9 and SE 0.03 → 101 units.
    assert sample_size_users(0.9, 0.03) == 101


def test_allocation_minimum_then_proportional():
    n = allocate(641, list(TABLE8_PIXELS.values()), 75)
    assert n[:2] == [75, 75] and sum(n) == 641
    assert n[3] / n[2] == pytest.approx(6_450_000 / 3_200_000, rel=0.01)  # the rest in proportion to area
    assert allocate(10, [1, 2, 3, 100], 5) == [1, 2, 3, 4]  # capped by the pixels a stratum has
    assert allocate(1000, [3, 4], 50) == [3, 4]  # never more units than pixels


def test_general_estimator_equals_olofsson_when_strata_are_classes():
    """Stehman's ratio variance reduces to Olofsson eq. 7 for producer's accuracy (strata = map classes)."""
    counts = np.array(TABLE8, float)
    w = np.array(list(TABLE8_PIXELS.values()), float)
    m, r = units(TABLE8)
    a = estimate(m, m, r, TABLE8_PIXELS, [0, 1, 2, 3])
    n_i = counts.sum(axis=1)
    p = (w / w.sum())[:, None] * counts / n_i[:, None]
    for j in range(4):
        n_j = (w[:, None] * counts / n_i[:, None])[:, j].sum()  # N̂_·j
        pa = p[j, j] / p[:, j].sum()
        ua = counts[j, j] / n_i[j]
        others = sum(w[i] ** 2 * counts[i, j] / n_i[i] * (1 - counts[i, j] / n_i[i]) / (n_i[i] - 1)
                     for i in range(4) if i != j)
        var = (w[j] ** 2 * (1 - pa) ** 2 * ua * (1 - ua) / (n_i[j] - 1) + pa ** 2 * others) / n_j ** 2
        assert a.producers[j].value == pytest.approx(pa, rel=1e-12)
        assert a.producers[j].se == pytest.approx(np.sqrt(var), rel=1e-9)


def test_class_without_sample_is_a_message_not_a_division_by_zero():
    # Class 2 is a map class (stratum) but no unit has reference 2; class 3 has no map stratum units labelled.
    a = estimate([0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 0], {0: 100, 1: 300}, [0, 1, 2])
    assert a.users[2].value is None and a.producers[2].value is None
    assert a.proportions[2].value == 0 and a.proportions[2].se == 0
    assert any("'2'" in msg and "user's" in msg for msg in a.messages)
    assert any("'2'" in msg and "producer's" in msg for msg in a.messages)
    assert sum(p.value for p in a.proportions) == pytest.approx(1)


def test_stratum_without_labelled_units_is_refused_by_name():
    with pytest.raises(AccuracyError, match="stratum 7 has area but no labelled sample unit"):
        estimate([0, 0], [0, 0], [0, 0], {0: 100, 7: 50}, [0])


def test_single_unit_stratum_reported():
    a = estimate([0, 0, 1], [0, 0, 1], [0, 1, 1], {0: 100, 1: 10}, [0, 1])
    assert any("single labelled unit" in msg for msg in a.messages)
    assert np.isfinite(a.overall.se)


def test_census_with_fpc_has_no_variance():
    m, r = [0, 0, 1, 1], [0, 1, 1, 1]
    a = estimate(m, m, r, {0: 2, 1: 2}, [0, 1], fpc=True)
    assert a.overall.se == 0 and a.overall.value == 0.75


def test_rare_class_in_small_strata_keeps_its_interval_coverage():
    """A class absent from a large stratum and rare (5 %) in a small one (5 units): most samples draw no
    unit of it there, so that stratum's s² is 0 and ``value ± 1.96 SE`` collapses to a point that misses the
    true area. The Price & Bonett interval keeps its coverage; computed exactly over the binomial outcomes."""
    sizes = {0: 9_000, 1: 800, 2: 200}  # stratum 2 is the class's own map stratum, pure
    n_small, share = 5, 0.05
    true = (sizes[1] * share + sizes[2]) / sum(sizes.values())
    wald = price_bonett = 0.0
    for drawn in range(n_small + 1):
        strata = [0] * 100 + [1] * n_small + [2] * 5
        reference = [0] * 100 + [1] * drawn + [0] * (n_small - drawn) + [1] * 5
        a = estimate(strata, [0] * 100 + [0] * n_small + [1] * 5, reference, sizes, [0, 1])
        e = a.proportions[1]
        chance = math.comb(n_small, drawn) * share ** drawn * (1 - share) ** (n_small - drawn)
        wald += chance * (abs(e.value - true) <= Z95 * e.se)
        low, high = e.ci95
        price_bonett += chance * (low <= true <= high)
    assert wald < 0.5  # P(no unit drawn) = 0.95⁵ = 0.77, and then the Wald interval has width 0
    assert price_bonett >= 0.95


def test_interval_close_to_wald_where_every_stratum_shows_variation():
    """The adjustment is 2/k successes in 4/k trials per stratum: negligible for overall accuracy of
    Table 8 (every stratum has errors), noticeable only for the rare classes whose large strata drew none."""
    m, r = units(TABLE8)
    a = estimate(m, m, r, TABLE8_PIXELS, [0, 1, 2, 3])
    low, high = a.overall.ci95
    assert high - low == pytest.approx(2 * Z95 * a.overall.se, rel=0.05)
    assert low < a.overall.value < high
    for e in a.proportions:
        low, high = e.ci95
        assert 0 <= low < e.value < high <= 1
        assert high - low >= 2 * Z95 * e.se * 0.99  # never much narrower than Wald


def test_class_absent_from_the_sample_gets_an_upper_bound():
    a = estimate([0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 0], {0: 100, 1: 300}, [0, 1, 2])
    low, high = a.proportions[2].ci95
    assert low == 0 and 0 < high < 0.5  # no unit of class 2 seen: its share is small, not known to be 0
    assert a.areas[2].ci95 == pytest.approx((0.0, high * 400))


def test_adjusted_linear_function_reproduces_price_bonett():
    # The example of ci.lc.prop.bs in the R package statpsych (D. G. Bonett), which implements Price & Bonett
    # (2004): f = 26, 24, 38 of n = 60 each, contrast −.5, −.5, 1 → estimate 0.2119565, SE 0.07602892.
    centre, se = adjusted_linear_function(np.array([26, 24, 38]), np.array([60, 60, 60]), np.array([-.5, -.5, 1]))
    assert centre[0] == pytest.approx(0.2119565, abs=1e-7) and se[0] == pytest.approx(0.07602892, abs=1e-8)
