"""The built-in default model: a spectral-prototype classifier that needs no weights.

It computes per-pixel spectral indices (NDVI, MNDWI, NDBI), visible brightness,
near-infrared reflectance and a neighbourhood "open water" fraction, and scores
them against hand-set prototypes (a Gaussian mixture: log-likelihoods, softmax over
prototypes). Each prototype carries a distribution over the BigEarthNet-19 classes:
one class for a clear spectrum, a spread where the spectrum cannot tell classes
apart, so that maxprob, entropy and gap say so: snow (high NDSI, which is the MNDWI,
but bright in the NIR, unlike water) shows what pokes through it (forest under snow
is forest, open snow is fields, meadows, bogs or frozen lakes, none likely); clouds
(bright and white up to the SWIR) are nearly uniform; leafless winter broad-leaved
forest is told from bare fields by its dark SWIR. Prototypes come from published
spectral behaviour and from the k-means centres of 30 BigEarthNet patches; 30 others
(BEN v1 LMDB) are the held-out check (``benchmarks/evaluate.py``, docs/models.md).

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

from ..nomenclature import BIGEARTHNET19_NAMES, class_index
from . import prototype_kernels
from .base import apply_activation
from .builtin_card import BUILTIN_CARD, BUILTIN_CARDS, OPEN_WATER_RADIUS  # noqa: F401 - the card belongs to this model
from .card import ModelCard
from .runlog import Log

_FEATURES = ("ndvi", "mndwi", "ndbi", "visible", "nir", "open_water")
_FEATURE_SCALE = (0.15, 0.15, 0.15, 0.05, 0.07, 0.25)

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
#: (L2A) or top-of-atmosphere (L1C) alike: the prototypes sit between the two where they differ.
_PROTOTYPES = (
    ("Marine waters", (-0.30, 0.70, -0.60, 0.08, 0.03, 0.95), 0.0),
    ("Inland waters", (-0.20, 0.60, -0.50, 0.07, 0.04, 0.45), 0.0),
    ("Inland waters", (-0.05, 0.38, -0.15, 0.075, 0.05, 0.30), 0.0),  # turbid or glacial lakes, rivers
    ("Marine waters", (0.05, 0.60, -0.70, 0.15, 0.12, 0.70), 0.0),  # surf: white foam on open water, not snow
    ("Inland waters", (0.30, -0.15, -0.05, 0.012, 0.02, 0.40), -0.5),  # dark humic (boreal) lakes
    ("Coastal wetlands", (0.25, 0.15, -0.10, 0.06, 0.12, 0.55), 0.0),  # salt marsh
    ("Coastal wetlands", (0.00, 0.15, -0.05, 0.09, 0.08, 0.40), 0.0),  # tidal mudflats
    ("Inland wetlands", (0.35, 0.05, -0.15, 0.05, 0.15, 0.20), -0.5),
    ("Beaches, dunes, sands", (0.05, -0.05, 0.10, 0.22, 0.25, 0.40), 0.0),
    ("Coniferous forest", (0.75, -0.45, -0.35, 0.03, 0.22, 0.0), 0.0),
    ("Broad-leaved forest", (0.80, -0.50, -0.40, 0.035, 0.32, 0.0), 0.0),
    ("Mixed forest", (0.78, -0.48, -0.38, 0.033, 0.27, 0.0), 0.0),
    ("Transitional woodland, shrub", (0.60, -0.40, -0.20, 0.045, 0.22, 0.0), -0.3),
    (_LEAFLESS_FOREST, (0.42, -0.38, -0.08, 0.045, 0.16, 0.0), -0.5),  # winter: bare crowns, dark in the SWIR
    ("Arable land", (0.15, -0.30, 0.15, 0.12, 0.20, 0.0), 0.0),  # bare, ploughed fields
    ("Arable land", (0.26, -0.36, 0.04, 0.17, 0.33, 0.0), 0.0),  # bare fields, bottom of atmosphere
    ("Arable land", (0.60, -0.40, -0.20, 0.05, 0.35, 0.0), 0.0),  # growing crops
    ("Arable land", (0.86, -0.50, -0.40, 0.05, 0.47, 0.0), -0.3),  # dense crops
    ("Pastures", (0.55, -0.35, -0.10, 0.06, 0.28, 0.0), 0.0),
    ("Pastures", (0.88, -0.50, -0.45, 0.05, 0.55, 0.0), 0.0),  # lush meadows: brighter in the NIR than forest
    ("Complex cultivation patterns", (0.40, -0.30, 0.00, 0.07, 0.22, 0.0), -0.5),
    ("Natural grassland and sparsely vegetated areas", (0.25, -0.25, 0.10, 0.10, 0.18, 0.0), -0.5),
    ("Urban fabric", (0.15, -0.15, 0.05, 0.12, 0.15, 0.0), 0.0),
    ("Urban fabric", (0.25, -0.25, -0.04, 0.14, 0.24, 0.0), -1.0),  # villages, bottom of atmosphere
    ("Industrial or commercial units", (0.05, -0.10, 0.05, 0.18, 0.18, 0.0), -0.3),
    ("Moors, heathland and sclerophyllous vegetation", (0.40, -0.30, 0.00, 0.05, 0.17, 0.0), -1.5),
    ("Agro-forestry areas", (0.60, -0.40, -0.25, 0.05, 0.26, 0.0), -1.5),
    ("Land principally occupied by agriculture, with significant areas of natural vegetation", (0.55, -0.38, -0.20, 0.05, 0.25, 0.0), -1.0),
    ("Permanent crops", (0.50, -0.35, -0.10, 0.06, 0.25, 0.0), -1.5),
    # Snow (NDSI = MNDWI high, but bright in the NIR, unlike water): what shows through it.
    (_FOREST_UNDER_SNOW, (0.42, 0.50, -0.72, 0.08, 0.18, 0.0), 0.0),
    (_TREES_IN_SNOW, (0.20, 0.72, -0.80, 0.17, 0.22, 0.0), 0.0),
    (_OPEN_SNOW, (0.08, 0.78, -0.80, 0.35, 0.40, 0.0), 0.0),
    (_OPEN_SNOW, (0.04, 0.82, -0.80, 0.65, 0.70, 0.0), 0.0),
    # Clouds: bright and white from the visible to the SWIR (NDSI near 0).
    (_CLOUD, (0.15, -0.05, -0.15, 0.35, 0.45, 0.0), 0.0),
    (_CLOUD, (0.08, -0.03, -0.10, 0.60, 0.68, 0.0), 0.0),
)


def _target_matrix() -> torch.Tensor:
    """``(K, C)``: row k is prototype k's class distribution."""
    matrix = torch.zeros(len(_PROTOTYPES), len(BIGEARTHNET19_NAMES), dtype=torch.float64)
    for k, (target, _, _) in enumerate(_PROTOTYPES):
        for name, weight in ((target, 1.0),) if isinstance(target, str) else target:
            matrix[k, class_index(name)] += weight
    return matrix / matrix.sum(dim=1, keepdim=True)


class SpectralPrototypeNet(torch.nn.Module):
    """Features from reflectances (B03, B04, B08, B11) → class probabilities / logits (N, 19, H, W), at any H, W.

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
        self.kernel_tables = prototype_kernels.MixtureTables(self.affine, self.targets)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 6, H, W)``: NDVI, MNDWI, NDBI, visible brightness, NIR, open-water fraction."""
        return self._features(x)[:, : len(_FEATURES)].unflatten(2, x.shape[2:])

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, F + 1, H·W)``: the features and a row of ones (the affine map's bias input)."""
        n, _, h, w = x.shape
        green, red, nir, swir = x.clamp_min(1e-4).unbind(dim=1)
        out = torch.empty((n, len(_FEATURES) + 1, h, w), dtype=x.dtype, device=x.device)
        ndvi, mndwi, ndbi, visible, near, open_water, ones = out.unbind(dim=1)

        def ratio(a: torch.Tensor, b: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
            torch.sub(a, b, out=into)
            return into.div_(a + b)

        ratio(nir, red, ndvi)
        ratio(green, swir, mndwi)
        ratio(swir, nir, ndbi)
        torch.add(green, red, out=visible).mul_(0.5)
        near.copy_(nir)
        # Water: high MNDWI and dark in the NIR (snow has as high an MNDWI, the NDSI, but is bright).
        water = torch.sigmoid((mndwi - 0.2) / 0.05) * torch.sigmoid((0.12 - nir) / 0.02)
        open_water.copy_(box_mean(water, OPEN_WATER_RADIUS))
        ones.fill_(1.0)
        return out.flatten(2)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, C, H, W)`` (each pixel sums to 1). On the CPU with numba, one compiled pass
        per block of pixels (:mod:`.prototype_kernels`, the same ``affine`` and ``targets``); else the torch
        steps below (the reference: the two agree within 1e-5)."""
        if prototype_kernels.usable(x):
            features = self._features(x)
            return prototype_kernels.mixture_probabilities(features, self.kernel_tables, torch.get_num_threads()
                                                           ).unflatten(2, x.shape[2:])
        z = torch.matmul(self.affine, self._features(x))  # (N, K, H·W) prototype scores
        z.sub_(z.amax(dim=1, keepdim=True)).exp_()  # stable: the best prototype scores exp(0) = 1
        total = z.sum(dim=1, keepdim=True)
        # Each prototype's weight spread over its classes: one (C, K) × (K, H·W) product.
        return torch.matmul(self.targets, z).div_(total).unflatten(2, x.shape[2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (log-probabilities): their softmax is :meth:`probabilities`."""
        return torch.log(self.probabilities(x).clamp_min(1e-30))


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


def load(card: ModelCard, device: torch.device, log: Log | None = None) -> BuiltinModel:  # noqa: ARG001 - nothing to tell
    return BuiltinModel(card, device)
