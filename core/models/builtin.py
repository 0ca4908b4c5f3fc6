"""The built-in default model: a spectral-prototype classifier that needs no weights.

It computes per-pixel spectral indices (NDVI, MNDWI, NDBI, the blue-red ratio), visible brightness,
near-infrared reflectance and a neighbourhood "open water" fraction from B02, B03, B04, B08 and B11, and
scores them against prototypes (a Gaussian mixture: log-likelihoods, softmax over
prototypes). Each prototype carries a distribution over the BigEarthNet-19 classes:
one class for a clear spectrum, a spread where the spectrum cannot tell classes
apart, so that maxprob, entropy and gap say so: snow (high NDSI, which is the MNDWI,
but bright in the NIR, unlike water; in shade darker and bluer) shows what pokes through it (forest under
snow is forest, open snow is fields, meadows, bogs or frozen lakes, none likely); clouds
(bright and white up to the SWIR) are nearly uniform; leafless winter broad-leaved
forest is told from bare fields by its dark SWIR. The blue-red ratio tells water (bluer than red) from
marsh and dark ground. Prototypes were placed by hand on the first six features from published
spectral behaviour and from the k-means centres of real BigEarthNet patches; then the positions
and priors of the one-class (land-cover) prototypes were fitted on the 60 labelled patches of the
evaluation (``benchmarks/fit_builtin.py``: the evaluation's precision and recall made smooth, anchored
to the hand-set places and to the demo scene's class shares; the blue-red coordinate of each row starts
at its pixels' mean, and no land row may be bluer than measured land surfaces). The snow, cloud,
leafless-forest and tidal-mudflat rows are not fitted. Scored on data it did not learn from by two-fold
cross-validation (docs/models.md).

Limits: no texture or context beyond 150 m (the receptive field), so classes defined
by land use rather than spectra (agro-forestry, permanent crops, complex
cultivation, industrial vs urban, pastures vs arable land) are guesses; small
villages are mostly missed; turbid shallow water and tidal flats are confused;
marine vs inland water is decided by the extent of open water around a pixel, not by
salinity; L1C and L2A share one set of prototypes (the model does not know which it
sees).
"""
from __future__ import annotations

import torch

from ..errors import ModelError
from ..nomenclature import BIGEARTHNET19_NAMES, class_index
from ..uncertainty import Confidence
from . import prototype_kernels
from .base import apply_activation, non_finite_error
from .builtin_card import BUILTIN_CARD, BUILTIN_CARDS, OPEN_WATER_RADIUS  # noqa: F401 - the card belongs to this model
from .card import ModelCard
from .runlog import Log

#: The features :meth:`SpectralPrototypeNet._features` makes, in its order. The compiled pass makes its own
#: (:data:`.prototype_kernels.FEATURES`, another implementation): :class:`.prototype_kernels.MixtureTables` refuses
#: this model when the two lists differ. "blue_red" is (B02 − B04) / (B02 + B04): water is bluer than red (it
#: absorbs the red), wet vegetation, soil and dark ground are not, so it tells calm dark sea and lakes from marsh
#: where the other five cannot.
_FEATURES = ("ndvi", "mndwi", "ndbi", "visible", "nir", "open_water", "blue_red")
#: Reflectances are raised to this before the ratios (no division by zero on nodata or dark pixels).
_REFLECTANCE_FLOOR = 1e-4
#: Water, whose extent around a pixel is the open-water feature: high MNDWI and dark in the NIR (snow has as
#: high an MNDWI, the NDSI, but is bright): σ((MNDWI − 0.2) / 0.05) · σ((0.12 − NIR) / 0.02).
_WATER_TEST = (0.2, 0.05, 0.12, 0.02)
_FEATURE_SCALE = (0.15, 0.15, 0.15, 0.05, 0.07, 0.25, 0.2)

#: What a prototype says about the land cover: one class, or a spread over classes (weights summing to 1)
#: where the spectrum does not tell them apart (snow hides what lies under it, a cloud everything).
_FOREST_UNDER_SNOW = (("Coniferous forest", 0.45), ("Mixed forest", 0.25), ("Transitional woodland, shrub", 0.15),
                      ("Broad-leaved forest", 0.15))
_TREES_IN_SNOW = (("Coniferous forest", 0.28), ("Mixed forest", 0.12), ("Transitional woodland, shrub", 0.15),
                  ("Arable land", 0.15), ("Land principally occupied by agriculture, with significant areas of natural vegetation", 0.1),
                  ("Inland wetlands", 0.08), ("Pastures", 0.06), ("Natural grassland and sparsely vegetated areas", 0.06))
#: Open snow: mostly fields, meadows, bogs and frozen lakes in the snowy parts of Europe; none of them likely.
_OPEN_SNOW = (("Arable land", 0.26), ("Pastures", 0.1),
              ("Land principally occupied by agriculture, with significant areas of natural vegetation", 0.1),
              ("Natural grassland and sparsely vegetated areas", 0.1), ("Inland wetlands", 0.1), ("Inland waters", 0.1),
              ("Transitional woodland, shrub", 0.08), ("Moors, heathland and sclerophyllous vegetation", 0.06),
              ("Coniferous forest", 0.1))
#: A cloud says nothing about the ground: nearly uniform (the tilt keeps the arg-max stable, not meaningful).
_CLOUD = tuple((name, (1.0 + (0.5 if name == "Arable land" else 0.0)) / (len(BIGEARTHNET19_NAMES) + 0.5))
               for name in BIGEARTHNET19_NAMES)
_LEAFLESS_FOREST = (("Broad-leaved forest", 0.5), ("Mixed forest", 0.2), ("Transitional woodland, shrub", 0.2),
                    ("Land principally occupied by agriculture, with significant areas of natural vegetation", 0.1))

#: (target, prototype feature values in _FEATURES order, log prior). Reflectances are bottom-of-atmosphere
#: (L2A) or top-of-atmosphere (L1C) alike: the prototypes sit between the two where they differ. The values
#: of the one-class rows are fitted (``benchmarks/fit_builtin.py --fit-on all``), the others set by hand on the first six
#: features (their blue-red coordinate is the mean of the pixels they take, see the fitting script). The wide-lake
#: row was added with the blue-red ratio: the turbid row's spectrum where the open-water extent is a lake's, not a river's.
_PROTOTYPES = (
    ("Marine waters", (-0.300, 0.698, -0.598, 0.080, 0.030, 0.954, 0.331), 0.00),
    ("Inland waters", (-0.202, 0.601, -0.500, 0.070, 0.041, 0.454, 0.208), -0.01),
    ("Inland waters", (0.063, 0.227, -0.065, 0.068, 0.061, 0.320, -0.045), 0.86),  # turbid or glacial lakes, rivers
    ("Marine waters", (0.052, 0.599, -0.702, 0.148, 0.119, 0.703, 0.168), -0.01),  # surf: white foam on open water, not snow
    ("Inland waters", (0.310, -0.252, 0.032, -0.001, 0.002, 0.412, 0.067), -0.50),  # dark humic (boreal) lakes
    ("Inland waters", (-0.036, 0.402, -0.166, 0.075, 0.050, 0.983, 0.582), -0.12),  # wide turbid or glacial lakes
    ("Coastal wetlands", (0.129, 0.137, -0.064, 0.070, 0.126, 0.541, 0.228), -0.06),  # salt marsh
    ("Coastal wetlands", (0.000, 0.150, -0.050, 0.090, 0.080, 0.400, 0.000), 0.00),  # tidal mudflats (hand-set, not fitted: fitted, they took big turbid lakes)
    ("Inland wetlands", (0.304, 0.084, -0.070, 0.039, 0.153, 0.249, 0.052), -0.87),
    ("Beaches, dunes, sands", (0.048, -0.057, 0.124, 0.214, 0.241, 0.441, -0.120), -0.10),
    ("Coniferous forest", (0.732, -0.409, -0.350, 0.033, 0.219, 0.005, -0.142), 0.16),
    ("Broad-leaved forest", (0.842, -0.524, -0.373, 0.032, 0.342, 0.000, -0.002), -0.14),
    ("Mixed forest", (0.780, -0.468, -0.386, 0.032, 0.265, 0.000, -0.115), -0.07),
    ("Transitional woodland, shrub", (0.563, -0.399, -0.188, 0.057, 0.231, 0.004, -0.191), 0.07),
    (_LEAFLESS_FOREST, (0.420, -0.380, -0.080, 0.045, 0.160, 0.000, -0.238), -0.50),  # winter: bare crowns, dark in the SWIR
    ("Arable land", (0.206, -0.321, 0.109, 0.113, 0.197, -0.007, -0.296), 0.11),  # bare, ploughed fields
    ("Arable land", (0.258, -0.366, 0.047, 0.173, 0.337, 0.001, -0.250), -0.05),  # bare fields, bottom of atmosphere
    ("Arable land", (0.631, -0.420, -0.250, 0.049, 0.358, 0.000, -0.175), 0.17),  # growing crops
    ("Arable land", (0.838, -0.474, -0.432, 0.051, 0.459, 0.000, -0.123), -0.38),  # dense crops
    ("Pastures", (0.563, -0.327, -0.099, 0.054, 0.279, 0.001, -0.153), -0.19),
    ("Pastures", (0.880, -0.500, -0.450, 0.050, 0.550, 0.000, -0.053), 0.00),  # lush meadows: brighter in the NIR than forest
    ("Complex cultivation patterns", (0.405, -0.288, 0.008, 0.065, 0.203, 0.005, -0.117), -0.38),
    ("Natural grassland and sparsely vegetated areas", (0.245, -0.241, 0.114, 0.100, 0.176, 0.009, -0.136), -0.52),
    ("Urban fabric", (0.142, -0.126, 0.050, 0.121, 0.152, -0.016, -0.095), 0.04),
    ("Urban fabric", (0.251, -0.251, -0.029, 0.141, 0.239, -0.001, -0.189), -0.95),  # villages, bottom of atmosphere
    ("Industrial or commercial units", (0.050, -0.095, 0.040, 0.187, 0.191, -0.001, -0.128), -0.23),
    ("Moors, heathland and sclerophyllous vegetation", (0.401, -0.299, 0.000, 0.050, 0.171, 0.000, -0.202), -1.51),
    ("Agro-forestry areas", (0.600, -0.400, -0.250, 0.050, 0.260, 0.000, -0.162), -1.50),
    ("Land principally occupied by agriculture, with significant areas of natural vegetation", (0.550, -0.380, -0.200, 0.050, 0.250, 0.000, -0.174), -1.00),
    ("Permanent crops", (0.500, -0.350, -0.100, 0.060, 0.250, 0.000, -0.195), -1.50),
    # Snow (NDSI = MNDWI high, but bright in the NIR, unlike water): what shows through it.
    (_FOREST_UNDER_SNOW, (0.420, 0.500, -0.720, 0.080, 0.180, 0.000, -0.017), 0.00),
    (_TREES_IN_SNOW, (0.200, 0.720, -0.800, 0.170, 0.220, 0.000, 0.006), 0.00),
    (_OPEN_SNOW, (0.080, 0.780, -0.800, 0.350, 0.400, 0.000, -0.009), 0.00),
    (_OPEN_SNOW, (0.040, 0.820, -0.800, 0.650, 0.700, 0.000, 0.004), 0.00),
    (_TREES_IN_SNOW, (0.100, 0.750, -0.780, 0.110, 0.120, 0.000, 0.232), 0.00),  # snow in shade: dark, and blue (sky light)
    # Clouds: bright and white from the visible to the SWIR (NDSI near 0).
    (_CLOUD, (0.150, -0.050, -0.150, 0.350, 0.450, 0.000, -0.034), 0.00),
    (_CLOUD, (0.080, -0.030, -0.100, 0.600, 0.680, 0.000, -0.004), 0.00),
)


def _target_matrix() -> torch.Tensor:
    """``(K, C)``: row k is prototype k's class distribution."""
    matrix = torch.zeros(len(_PROTOTYPES), len(BIGEARTHNET19_NAMES), dtype=torch.float64)
    for k, (target, _, _) in enumerate(_PROTOTYPES):
        for name, weight in ((target, 1.0),) if isinstance(target, str) else target:
            matrix[k, class_index(name)] += weight
    return matrix / matrix.sum(dim=1, keepdim=True)


class SpectralPrototypeNet(torch.nn.Module):
    """Features from reflectances (B02, B03, B04, B08, B11) → class probabilities / logits (N, 19, H, W), at any H, W.

    The prototype weights are a Gaussian mixture's posterior: with standardised
    features ``f`` and prototype centres ``μₖ``, ``log Lₖ = −½‖f − μₖ‖² + prior_k``.
    The ``−½‖f‖²`` term is shared by every prototype and cancels in the
    normalisation, so the scores are one affine map of the features,
    ``zₖ = f·μₖ − ½‖μₖ‖² + prior_k`` (a 1 × 1 convolution, done as one matrix
    product over all pixels); then ``p_c = Σₖ T_{ck} exp(zₖ − max z) / Σₖ exp(zₖ − max z)``
    with ``T`` the prototypes' class distributions (a second matrix product).
    """

    def __init__(self) -> None:
        super().__init__()
        centres = torch.tensor([c for _, c, _ in _PROTOTYPES], dtype=torch.float64)  # (K, F)
        scale = torch.tensor(_FEATURE_SCALE, dtype=torch.float64)
        log_prior = torch.tensor([p for _, _, p in _PROTOTYPES], dtype=torch.float64)
        mu = centres / scale  # prototype centres in standardised feature space
        # z = affine · [features; 1]: the feature standardisation is folded into the weights.
        affine = torch.cat([mu / scale, (log_prior - 0.5 * (mu * mu).sum(dim=1))[:, None]], dim=1)
        self.register_buffer("affine", affine.float())  # (K, F + 1)
        self.register_buffer("centres", centres.float())
        self.register_buffer("scale", scale.float())
        self.register_buffer("log_prior", log_prior.float())
        self.register_buffer("targets", _target_matrix().T.contiguous().float())  # (C, K)
        self.num_classes = len(BIGEARTHNET19_NAMES)
        #: the same tables for the compiled CPU kernel (:mod:`.prototype_kernels`)
        self.kernel_tables = prototype_kernels.MixtureTables(self.affine, self.targets, _FEATURES, _REFLECTANCE_FLOOR)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 7, H, W)``: NDVI, MNDWI, NDBI, visible brightness, NIR, open-water fraction, blue-red ratio (the
        torch steps: the reference the compiled kernel's features equal bit for bit, tests)."""
        return self._features(x)[:, : len(_FEATURES)].unflatten(2, x.shape[2:])

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, F + 1, H·W)``: the features and a row of ones (the affine map's bias input)."""
        n, _, h, w = x.shape
        blue, green, red, nir, swir = x.clamp_min(_REFLECTANCE_FLOOR).unbind(dim=1)
        out = torch.empty((n, len(_FEATURES) + 1, h, w), dtype=x.dtype, device=x.device)
        ndvi, mndwi, ndbi, visible, near, open_water, blue_red, ones = out.unbind(dim=1)
        _ratio(nir, red, ndvi)
        _ratio(green, swir, mndwi)
        _ratio(swir, nir, ndbi)
        torch.add(green, red, out=visible).mul_(0.5)
        near.copy_(nir)
        open_water.copy_(box_mean(_water(mndwi, nir), OPEN_WATER_RADIUS))
        _ratio(blue, red, blue_red)
        ones.fill_(1.0)
        return out.flatten(2)

    def _open_water(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)``: the open-water feature alone (a neighbourhood mean, made before the compiled pass, which
        computes the other features per block): the same steps as :meth:`_features`, on the two bands it needs."""
        _, green, _, nir, swir = x.unbind(dim=1)
        green, nir, swir = (band.clamp_min(_REFLECTANCE_FLOOR) for band in (green, nir, swir))
        return box_mean(_water(_ratio(green, swir, torch.empty_like(green)), nir), OPEN_WATER_RADIUS)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, C, H, W)`` (each pixel sums to 1). On the CPU with numba, the open-water mean
        (:meth:`_open_water`) and then one compiled pass per block of pixels, from the bands to the probabilities
        (:mod:`.prototype_kernels`: the same features, bit for bit, the same ``affine`` and ``targets``); else the
        torch steps below (the reference: the two agree within 1e-5)."""
        if prototype_kernels.usable(x):
            return prototype_kernels.mixture_probabilities(x, self._open_water(x), self.kernel_tables,
                                                           torch.get_num_threads())
        # (N, K, H·W) prototype scores, in float64 where the device has it: they reach ±220, and their float32
        # rounding alone moved the weights by ~1e-5 (3.6e-6 in the probabilities, measured against float64; 0.9e-6
        # with the scores in float64). The compiled kernel's fused multiply-adds round less.
        exact = torch.float64 if x.device.type in ("cpu", "cuda") else x.dtype
        z = torch.matmul(self.affine.to(exact), self._features(x).to(exact))
        z = z.sub_(z.amax(dim=1, keepdim=True)).to(x.dtype).exp_()  # stable: the best prototype scores exp(0) = 1
        total = z.sum(dim=1, keepdim=True)
        # Each prototype's weight spread over its classes: one (C, K) × (K, H·W) product.
        return torch.matmul(self.targets, z).div_(total).unflatten(2, x.shape[2:])

    def confidence(self, x: torch.Tensor, valid: torch.Tensor, window: tuple[int, int]
                   ) -> tuple[Confidence, bool] | None:
        """``(products, ok)`` of the output window ``valid (h, w)`` from input pixel ``window = (row, col)`` of
        ``x (1, bands, H, W)``, made in the compiled mixture pass without the probabilities
        (:func:`.prototype_kernels.mixture_confidence`; equal to :func:`..uncertainty.confidence` of
        :meth:`probabilities`); ``ok`` False: a valid pixel's probabilities were not finite. None where the
        compiled kernels cannot run (no numba, an accelerator)."""
        if not prototype_kernels.usable(x):
            return None
        return prototype_kernels.mixture_confidence(x, self._open_water(x), window, valid, self.kernel_tables,
                                                    torch.get_num_threads())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (log-probabilities): their softmax is :meth:`probabilities`."""
        return torch.log(self.probabilities(x).clamp_min(1e-30))


def _ratio(a: torch.Tensor, b: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
    """``(a − b) / (a + b)``, written into ``into``."""
    torch.sub(a, b, out=into)
    return into.div_(a + b)


def _water(mndwi: torch.Tensor, nir: torch.Tensor) -> torch.Tensor:
    """Each pixel's water test (:data:`_WATER_TEST`), a new tensor: ``mndwi`` and ``nir`` are kept."""
    mndwi_at, mndwi_width, nir_at, nir_width = _WATER_TEST
    water = (mndwi - mndwi_at).div_(mndwi_width).sigmoid_()
    return water.mul_((nir_at - nir).div_(nir_width).sigmoid_())


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of ``x`` (N, H, W) over the (2r + 1)² square around each pixel, the image's edge pixels
    repeated beyond it. Separable, and each output sums its own window in a fixed order: the value at a
    pixel depends only on the pixels within ``radius``, bit for bit, wherever the image starts (what
    the card's receptive field promises; a running sum would carry rounding from the image's start).
    On the CPU with numba a compiled kernel sums the same windows (:func:`.prototype_kernels.box_mean`)."""
    if prototype_kernels.usable(x):
        return prototype_kernels.box_mean(x, radius)
    k = 2 * radius + 1
    rows = torch.nn.functional.pad(x[:, None], (radius, radius, 0, 0), mode="replicate")
    rows = torch.nn.functional.avg_pool2d(rows, (1, k), stride=1)
    cols = torch.nn.functional.pad(rows, (0, 0, radius, radius), mode="replicate")
    return torch.nn.functional.avg_pool2d(cols, (k, 1), stride=1)[:, 0]


class BuiltinModel:
    """:class:`SegmentationModel` wrapper of :class:`SpectralPrototypeNet`."""

    def __init__(self, card: ModelCard, device: torch.device):
        self.card = card
        self.device = device
        self.net = SpectralPrototypeNet().to(device).eval()

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.card.activation == "softmax":  # the net's probabilities are the softmax of its logits
                return self.net.probabilities(batch)
            return apply_activation(self.net(batch), self.card.activation)

    def can_predict_confidence(self) -> bool:
        """The compiled kernels run here (CPU, numba) and the card's activation is the net's own softmax."""
        return (self.card.activation == "softmax" and self.device.type == "cpu"
                and prototype_kernels.usable(torch.empty(0)))

    def predict_confidence(self, batch: torch.Tensor, valid: torch.Tensor, window: tuple[int, int]) -> Confidence:
        """:class:`.base.ConfidenceModel`: the products of one strip, without its probabilities."""
        with torch.inference_mode():
            made = self.net.confidence(batch, valid, window)
        if made is None:
            raise ModelError(f"model {self.card.name!r} cannot make confidence products on {batch.device} "
                             f"({batch.dtype}): use predict")
        products, ok = made
        if not ok:
            raise non_finite_error(self.card)
        return products


def load(card: ModelCard, device: torch.device, log: Log | None = None) -> BuiltinModel:  # noqa: ARG001 - nothing to tell
    return BuiltinModel(card, device)
