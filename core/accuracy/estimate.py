"""Stratified estimators of map accuracy and class area, with standard errors.

One general estimator serves every design: Stehman (2014, IJRS 35:4923-4939) writes
overall, user's and producer's accuracy, the cells of the error matrix in area
proportions and the class-area proportions as totals or ratios of per-unit indicator
variables under stratified random sampling. When the strata are the map classes these
are exactly the estimators of Olofsson et al. (2013, RSE 129:122-131; 2014, RSE
148:42-57, eqs. 1-11): the same point estimates, and the same variances (eq. 5 for
overall accuracy, eq. 6 user's, eq. 7 producer's, eq. 10 area), since the ratio
variance's residual ``y - R x`` reduces to Olofsson's two terms. So strata of class ×
confidence need no second code path.

Intervals: the standard errors are Olofsson's (design-unbiased), but ``value ± 1.96 SE``
under-covers where a stratum with few units and a rare class in it shows no variation (no
unit of the class drawn: that stratum's s² is 0, though its true share is not). The area
proportions and overall accuracy are linear functions Σ_h W_h p_h of the strata's binomial
proportions, so their 95 % intervals are those of Price & Bonett (2004, Comput. Stat. Data
Anal. 45:449-456) for a linear function of k binomial proportions: add 2/k successes and 4/k
trials to each stratum's proportion, then a Wald interval on the adjusted proportions
(Agresti & Caffo 2000 for k = 2, the "plus four" of Agresti & Coull 1998 for k = 1). User's
and producer's accuracies (ratios) keep ``value ± 1.96 SE``. On Olofsson's Table 8 this
widens the area intervals of the two rare classes by 14 % and 35 % (their large stable strata
drew none of them, which Wald reads as "none there") and the others, and overall accuracy's,
by 1-2 %; on the known-truth tile of the tests it lifts the coverage of the designs from
74-95 % (six-feature built-in table) and 80-93 % (seven-feature) to 92-99 %.

Sample-size planning: Olofsson 2014 eq. 13 (target standard error of overall accuracy)
and the allocation advice of its section 5.1.1 (a minimum per stratum, the rest
proportional to area).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from ..errors import S2SegError

#: Normal quantile of the 95 % intervals, as Olofsson et al. (2014) use it (± 1.96 × SE).
Z95 = 1.96


class AccuracyError(S2SegError):
    """The sample or the design cannot give an estimate (no labelled unit in a stratum …)."""


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its standard error; ``value is None`` when it cannot be estimated."""

    value: float | None
    se: float | None
    interval: tuple[float, float] | None = None  # a 95 % interval other than value ± 1.96 SE

    @property
    def ci95(self) -> tuple[float, float] | None:
        """The 95 % confidence interval: ``interval`` where one was computed, else ``value ± 1.96 SE``; or None."""
        if self.interval is not None:
            return self.interval
        if self.value is None or self.se is None:
            return None
        return self.value - Z95 * self.se, self.value + Z95 * self.se

    def scaled(self, factor: float) -> "Estimate":
        """The same estimate in other units (proportion → m², …)."""
        if self.value is None:
            return self
        interval = None if self.interval is None else (self.interval[0] * factor, self.interval[1] * factor)
        return Estimate(self.value * factor, None if self.se is None else self.se * factor, interval)

    def to_dict(self) -> dict[str, Any]:
        ci = self.ci95
        return {"value": self.value, "se": self.se, "ci95": list(ci) if ci else None}


@dataclass
class Assessment:
    """Every estimate of one assessment; classes are the map/reference class codes, in order."""

    classes: list[int]
    class_names: list[str]
    total_area: float  # in the unit of the stratum sizes × unit_area (m² for pixel counts × pixel area)
    counts: np.ndarray  # (K, K) sample counts, rows map class, columns reference class
    matrix: np.ndarray  # (K, K) estimated area proportions p̂_ij
    overall: Estimate
    users: list[Estimate]
    producers: list[Estimate]
    proportions: list[Estimate]  # estimated area proportion of each reference class
    mapped_proportions: list[float]  # share of each map class in the map (from the strata sizes)
    n_units: int
    messages: list[str] = field(default_factory=list)

    @property
    def areas(self) -> list[Estimate]:
        """Error-adjusted area of each class, in the unit of ``total_area``."""
        return [p.scaled(self.total_area) for p in self.proportions]

    @property
    def mapped_areas(self) -> list[float]:
        return [p * self.total_area for p in self.mapped_proportions]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (floats, lists, None)."""
        return {
            "classes": [{"code": c, "name": n, "mapped_area": a, "mapped_proportion": p,
                         "users_accuracy": u.to_dict(), "producers_accuracy": q.to_dict(),
                         "area_proportion": e.to_dict(), "area": ea.to_dict()}
                        for c, n, a, p, u, q, e, ea in zip(self.classes, self.class_names, self.mapped_areas,
                                                           self.mapped_proportions, self.users, self.producers,
                                                           self.proportions, self.areas)],
            "overall_accuracy": self.overall.to_dict(),
            "error_matrix_proportions": self.matrix.tolist(),
            "error_matrix_counts": self.counts.astype(int).tolist(),
            "total_area": self.total_area,
            "n_units": self.n_units,
            "z": Z95,
            "messages": list(self.messages),
        }


def estimate(strata: Sequence[Hashable] | np.ndarray, map_class: Sequence[int] | np.ndarray,
             reference: Sequence[int] | np.ndarray, stratum_sizes: Mapping[Hashable, float],
             classes: Sequence[int], *, class_names: Sequence[str] | None = None, unit_area: float = 1.0,
             fpc: bool = False) -> Assessment:
    """Accuracy and area estimates from a stratified random sample (Stehman 2014).

    ``strata``, ``map_class``, ``reference``: one entry per labelled sample unit.
    ``stratum_sizes``: N_h of every stratum of the design (pixels, or any area unit), strata
    with no unit included; ``unit_area`` converts them to the area unit of the results.
    ``classes``: the class codes, in report order (map and reference share them).
    ``fpc``: apply the finite population correction (1 − n_h/N_h); Olofsson et al. omit it
    (n_h ≪ N_h for pixel populations), so it is off by default.
    """
    strata = np.asarray(strata)
    map_class = np.asarray(map_class, dtype=np.int64)
    reference = np.asarray(reference, dtype=np.int64)
    if not (strata.shape == map_class.shape == reference.shape) or strata.ndim != 1:
        raise AccuracyError(f"strata, map classes and reference labels must be equally long vectors, got "
                            f"{strata.shape}, {map_class.shape} and {reference.shape}")
    classes = [int(c) for c in classes]
    names = [str(c) for c in classes] if class_names is None else [str(n) for n in class_names]
    if len(names) != len(classes):
        raise AccuracyError(f"{len(names)} class names given for {len(classes)} classes")
    keys = list(stratum_sizes)
    sizes = np.array([float(stratum_sizes[k]) for k in keys])
    if (sizes < 0).any() or sizes.sum() <= 0:
        raise AccuracyError(f"stratum sizes must be non-negative with a positive total, got {dict(stratum_sizes)}")
    position = {k: i for i, k in enumerate(keys)}
    unknown = sorted({str(s) for s in strata.tolist() if s not in position})
    if unknown:
        raise AccuracyError(f"sample units in stratum {', '.join(unknown)}, which the design does not list")
    h = np.array([position[s] for s in strata.tolist()], dtype=np.int64)
    code = {c: i for i, c in enumerate(classes)}
    for label, values in (("map class", map_class), ("reference class", reference)):
        bad = sorted(set(values.tolist()) - set(code))
        if bad:
            raise AccuracyError(f"{label} {', '.join(map(str, bad))} is not one of the classes {classes}")
    m = np.array([code[v] for v in map_class.tolist()], dtype=np.int64)
    r = np.array([code[v] for v in reference.tolist()], dtype=np.int64)
    k = len(classes)
    n_h = np.bincount(h, minlength=len(keys)).astype(float)
    messages: list[str] = []
    empty = [str(keys[i]) for i in np.flatnonzero((n_h == 0) & (sizes > 0))]
    if empty:
        raise AccuracyError(f"stratum {', '.join(empty)} has area but no labelled sample unit, so its area "
                            "cannot be represented: label at least two of its points")
    single = [str(keys[i]) for i in np.flatnonzero(n_h == 1)]
    if single:
        messages.append(f"stratum {', '.join(single)} has a single labelled unit: its variance cannot be "
                        "estimated and is taken as 0 (standard errors are too small)")
    total = sizes.sum()

    # Indicator variables per unit: cell (i, j) of the matrix, map = c, reference = c, correct.
    n = len(h)
    cell = np.zeros((n, k * k))
    cell[np.arange(n), m * k + r] = 1.0
    on_map = np.zeros((n, k))
    on_map[np.arange(n), m] = 1.0
    on_ref = np.zeros((n, k))
    on_ref[np.arange(n), r] = 1.0
    correct = (m == r).astype(float)[:, None]
    stats = _Strata(h, n_h, sizes, fpc)

    matrix = (stats.total(cell) / total).reshape(k, k)
    counts = np.bincount(m * k + r, minlength=k * k).reshape(k, k).astype(float)
    p_ref = stats.total(on_ref) / total
    se_ref = np.sqrt(stats.variance_of_total(on_ref)) / total
    low_ref, high_ref = stats.linear_interval(on_ref)
    oa = float(stats.total(correct)[0] / total)
    low_oa, high_oa = stats.linear_interval(correct)
    overall = Estimate(oa, float(np.sqrt(stats.variance_of_total(correct))[0] / total),
                       (float(low_oa[0]), float(high_oa[0])))
    diag = on_map * on_ref
    users = _ratios(stats, diag, on_map, names, "map class", "user's", messages)
    producers = _ratios(stats, diag, on_ref, names, "reference class", "producer's", messages)
    # Mapped share of each class: from the sample's map labels per stratum (exact when a stratum
    # holds one map class, as every design of this package does).
    mapped = stats.total(on_map) / total
    return Assessment(classes=classes, class_names=names, total_area=float(total * unit_area), counts=counts,
                      matrix=matrix, overall=overall, users=users, producers=producers,
                      proportions=[Estimate(float(p), float(s), (float(lo), float(hi)))
                                   for p, s, lo, hi in zip(p_ref, se_ref, low_ref, high_ref)],
                      mapped_proportions=[float(x) for x in mapped], n_units=n, messages=messages)


class _Strata:
    """Per-stratum sums of unit variables and the stratified total/variance formulas."""

    def __init__(self, h: np.ndarray, n_h: np.ndarray, sizes: np.ndarray, fpc: bool):
        self.h, self.n_h, self.sizes = h, n_h, sizes
        self.sampled = n_h > 0
        finite = (1 - n_h / np.where(sizes > 0, sizes, 1)) if fpc else np.ones_like(n_h)
        self.finite = np.clip(finite, 0.0, 1.0)
        # N_h² (1 − f_h) / n_h: the weight of the sample variance s²_h in V(total); 0 for unsampled strata.
        self.var_weight = np.where(self.sampled, sizes ** 2 * finite / np.maximum(n_h, 1), 0.0)

    def _sums(self, y: np.ndarray) -> np.ndarray:
        out = np.zeros((len(self.n_h), y.shape[1]))
        np.add.at(out, self.h, y)
        return out

    def total(self, y: np.ndarray) -> np.ndarray:
        """Ŷ = Σ_h N_h ȳ_h for each column of ``y``."""
        means = self._sums(y) / np.maximum(self.n_h, 1)[:, None]
        return (self.sizes[:, None] * means).sum(axis=0)

    def variance_of_total(self, y: np.ndarray) -> np.ndarray:
        """V̂(Ŷ) = Σ_h N_h² (1 − f_h) s²_yh / n_h for each column of ``y``."""
        sums = self._sums(y)
        squares = self._sums(y * y)
        n = self.n_h[:, None]
        ss = squares - sums ** 2 / np.maximum(n, 1)
        s2 = np.where(n > 1, np.maximum(ss, 0) / np.maximum(n - 1, 1), 0.0)
        return (self.var_weight[:, None] * s2).sum(axis=0)

    def linear_interval(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """95 % interval of Ŷ/N = Σ_h W_h p_h for each 0/1 column of ``y`` (Price & Bonett 2004),
        clipped to [0, 1]. A censused stratum (f_h = 1 under ``fpc``) is known exactly: it gets no
        pseudo-counts and adds no variance."""
        weights = np.where(self.sampled, self.sizes / self.sizes.sum(), 0.0)
        centre, se = adjusted_linear_function(self._sums(y), self.n_h, weights, self.finite,
                                              adjust=self.finite > 0)
        return np.clip(centre - Z95 * se, 0.0, 1.0), np.clip(centre + Z95 * se, 0.0, 1.0)


def adjusted_linear_function(successes: np.ndarray, trials: np.ndarray, coefficients: np.ndarray,
                             finite: np.ndarray | None = None,
                             adjust: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Centre and standard error of Σ_h c_h p_h from independent binomial samples, Price & Bonett (2004,
    Comput. Stat. Data Anal. 45:449-456, doi:10.1016/S0167-9473(03)00007-0): each of the k proportions
    with c_h ≠ 0 gets 2/k successes and 4/k trials, p̃_h = (y_h + 2/k)/(n_h + 4/k), and
    SE² = Σ_h c_h² (1 − f_h) p̃_h (1 − p̃_h)/(n_h + 4/k); the interval is centre ± z SE.

    ``successes``: (H,) or (H, columns) counts y_h; ``trials``: (H,) n_h; ``coefficients``: (H,) c_h;
    ``finite``: (H,) 1 − f_h (1 if omitted); ``adjust``: (H,) which proportions get the pseudo-counts
    (all with c_h ≠ 0 if omitted).
    """
    y = np.asarray(successes, dtype=float)
    y = y[:, None] if y.ndim == 1 else y
    n = np.asarray(trials, dtype=float)[:, None]
    c = np.asarray(coefficients, dtype=float)[:, None]
    f = np.ones_like(n) if finite is None else np.asarray(finite, dtype=float)[:, None]
    used = c != 0
    k = max(int(used.sum()), 1)
    pseudo = used & (np.ones_like(used) if adjust is None else np.asarray(adjust, bool)[:, None])
    n_adj = n + pseudo * 4.0 / k
    p_adj = np.where(n_adj > 0, (y + pseudo * 2.0 / k) / np.where(n_adj > 0, n_adj, 1.0), 0.0)
    centre = (c * p_adj).sum(axis=0)
    variance = np.where(used & (n_adj > 0), c ** 2 * f * p_adj * (1 - p_adj) / np.where(n_adj > 0, n_adj, 1.0),
                        0.0).sum(axis=0)
    return centre, np.sqrt(variance)


def _ratios(stats: _Strata, y: np.ndarray, x: np.ndarray, names: Sequence[str], what: str, kind: str,
            messages: list[str]) -> list[Estimate]:
    """R̂ = Ŷ/X̂ per column with V̂(R̂) = V̂(Σ (y − R̂x)) / X̂² (Stehman 2014)."""
    y_total, x_total = stats.total(y), stats.total(x)
    out = []
    for c in range(y.shape[1]):
        if x_total[c] <= 0:
            messages.append(f"no labelled sample unit has {what} {names[c]!r}: its {kind} accuracy cannot be "
                            "estimated")
            out.append(Estimate(None, None))
            continue
        ratio = y_total[c] / x_total[c]
        residual = y[:, c:c + 1] - ratio * x[:, c:c + 1]
        out.append(Estimate(float(ratio), float(math.sqrt(stats.variance_of_total(residual)[0]) / x_total[c])))
    return out


# ------------------------------------------------------------------------------------- planning

def sample_size_overall(weights: Sequence[float], expected_users: Sequence[float], target_se: float) -> int:
    """Total sample size for a target standard error of overall accuracy (Olofsson 2014 eq. 13).

    ``n = (Σ W_i S_i / S(Ô))²`` with ``S_i = √(U_i (1 − U_i))``, the expected user's accuracy
    ``U_i`` of stratum i and its area weight ``W_i``.
    """
    w = np.asarray(weights, dtype=float)
    u = np.asarray(expected_users, dtype=float)
    if w.shape != u.shape or w.ndim != 1 or len(w) == 0:
        raise AccuracyError(f"one expected user's accuracy per stratum weight is needed, got {len(u)} for {len(w)}")
    if not 0 < target_se < 1:
        raise AccuracyError(f"target standard error {target_se} must lie between 0 and 1")
    if ((u < 0) | (u > 1)).any():
        raise AccuracyError(f"expected user's accuracies must lie in [0, 1], got {u.tolist()}")
    w = w / w.sum()
    return max(1, math.ceil(round(((w * np.sqrt(u * (1 - u))).sum() / target_se) ** 2, 9)))


def sample_size_users(expected_user: float, target_se: float) -> int:
    """Units a stratum needs for a target standard error of its user's accuracy:
    SE(U)² = U(1 − U)/(n − 1) (Olofsson 2014 eq. 6 with the stratum = the class)."""
    if not 0 < target_se < 1:
        raise AccuracyError(f"target standard error {target_se} must lie between 0 and 1")
    return math.ceil(round(expected_user * (1 - expected_user) / target_se ** 2, 9)) + 1


def allocate(total: int, sizes: Sequence[float], minimum: int) -> list[int]:
    """Split ``total`` units over strata: at least ``minimum`` per stratum (never more than it holds),
    the rest in proportion to area (Olofsson 2014 §5.1.1); largest-remainder rounding, so the
    counts add up to ``total`` (or to the population, if that is smaller)."""
    size = np.asarray(sizes, dtype=float)
    cap = np.floor(size).astype(np.int64)
    if total < 0 or minimum < 0:
        raise AccuracyError(f"sample size {total} and minimum per stratum {minimum} must not be negative")
    total = int(min(total, cap.sum()))
    floor = np.minimum(cap, minimum)
    if floor.sum() >= total:  # the minimum alone uses up the sample: share it as evenly as possible
        return _even(total, cap).tolist()
    n = floor.astype(float)
    free = np.ones(len(size), bool)
    # Proportional shares, raised to the minimum where they fall short; repeated because raising
    # one stratum leaves less for the others.
    for _ in range(len(size) + 1):
        rest = total - n[~free].sum()
        share = rest * size * free / max(size[free].sum(), 1e-300)
        low = free & (share < floor)
        high = free & (share > cap)
        if not low.any() and not high.any():
            n[free] = share[free]
            break
        n[low], n[high] = floor[low], cap[high]
        free &= ~(low | high)
    whole = np.floor(n).astype(np.int64)
    left = total - int(whole.sum())
    order = np.argsort(-(n - whole), kind="stable")
    order = order[whole[order] < cap[order]]
    whole[order[:left]] += 1
    return whole.tolist()


def _even(total: int, cap: np.ndarray) -> np.ndarray:
    """``total`` units spread as evenly as the capacities allow."""
    out = np.zeros(len(cap), np.int64)
    left = total
    while left > 0:
        open_ = np.flatnonzero(out < cap)
        step = max(1, left // len(open_))
        for i in open_:
            add = min(step, cap[i] - out[i], left)
            out[i] += add
            left -= add
            if left == 0:
                break
    return out
