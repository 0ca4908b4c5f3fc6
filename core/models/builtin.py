"""The built-in default model: a spectral-index network that needs no weights.

It computes per-pixel spectral indices (NDVI, MNDWI, NDBI), visible brightness,
near-infrared reflectance and a neighbourhood "open water" fraction, and scores
them against hand-set class prototypes of the BigEarthNet-19 nomenclature
(a nearest-prototype classifier: Gaussian log-likelihoods, softmax). It gives a
meaningful map of water, wetlands, beaches, forests, fields and built-up land
with honest probabilities: pixels between prototypes get spread probabilities,
so maxprob, entropy and gap mean something.

Limits: no texture or context beyond ~300 m, so classes defined by land use
rather than spectra (agro-forestry, permanent crops, complex cultivation,
industrial vs urban) are guesses; no cloud class (clouds look like sand or
industrial roofs); marine vs inland water is decided by the extent of open
water around a pixel, not by salinity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nomenclature import BIGEARTHNET19_COLOURS, BIGEARTHNET19_NAMES, class_index
from .base import apply_activation
from .card import ModelCard

_FEATURES = ("ndvi", "mndwi", "ndbi", "visible", "nir", "open_water")
_FEATURE_SCALE = (0.15, 0.15, 0.15, 0.05, 0.07, 0.25)
#: (class, prototype feature values in _FEATURES order, log prior)
_PROTOTYPES = (
    ("Marine waters", (-0.30, 0.70, -0.60, 0.08, 0.03, 0.95), 0.0),
    ("Inland waters", (-0.20, 0.60, -0.50, 0.07, 0.04, 0.45), 0.0),
    ("Coastal wetlands", (0.25, 0.15, -0.10, 0.06, 0.12, 0.55), 0.0),  # salt marsh
    ("Coastal wetlands", (0.00, 0.15, -0.05, 0.09, 0.08, 0.40), 0.0),  # tidal mudflats
    ("Inland wetlands", (0.35, 0.05, -0.15, 0.05, 0.15, 0.20), -0.5),
    ("Beaches, dunes, sands", (0.05, -0.05, 0.10, 0.22, 0.25, 0.40), 0.0),
    ("Coniferous forest", (0.75, -0.45, -0.35, 0.03, 0.22, 0.0), 0.0),
    ("Broad-leaved forest", (0.80, -0.50, -0.40, 0.035, 0.32, 0.0), 0.0),
    ("Mixed forest", (0.78, -0.48, -0.38, 0.033, 0.27, 0.0), 0.0),
    ("Transitional woodland, shrub", (0.60, -0.40, -0.20, 0.045, 0.22, 0.0), -0.3),
    ("Arable land", (0.15, -0.30, 0.15, 0.12, 0.20, 0.0), 0.0),  # bare, ploughed fields
    ("Arable land", (0.60, -0.40, -0.20, 0.05, 0.35, 0.0), 0.0),  # growing crops
    ("Pastures", (0.55, -0.35, -0.10, 0.06, 0.28, 0.0), 0.0),
    ("Complex cultivation patterns", (0.40, -0.30, 0.00, 0.07, 0.22, 0.0), -0.5),
    ("Natural grassland and sparsely vegetated areas", (0.25, -0.25, 0.10, 0.10, 0.18, 0.0), -0.3),
    ("Urban fabric", (0.15, -0.15, 0.05, 0.12, 0.15, 0.0), 0.0),
    ("Industrial or commercial units", (0.05, -0.10, 0.05, 0.18, 0.18, 0.0), -0.3),
    ("Moors, heathland and sclerophyllous vegetation", (0.40, -0.30, 0.00, 0.05, 0.17, 0.0), -1.0),
    ("Agro-forestry areas", (0.60, -0.40, -0.25, 0.05, 0.26, 0.0), -1.5),
    ("Land principally occupied by agriculture, with significant areas of natural vegetation", (0.55, -0.38, -0.20, 0.05, 0.25, 0.0), -1.0),
    ("Permanent crops", (0.50, -0.35, -0.10, 0.06, 0.25, 0.0), -1.5),
)
_OPEN_WATER_WINDOW = 31  # pixels (310 m): extent over which "open water" is measured

BUILTIN_CARD = ModelCard(
    name="builtin",
    format="builtin",
    bands=("B03", "B04", "B08", "B11"),
    patch_size=120,
    class_names=BIGEARTHNET19_NAMES,
    class_colours=BIGEARTHNET19_COLOURS,
    output_kind="dense",
    activation="softmax",
    input_scale="reflectance",
    resampling="bilinear",
    levels=("L1C", "L2A"),
    description="Spectral-index prototype classifier (NDVI, MNDWI, NDBI, brightness, open-water extent); no weights needed.",
    licence="GPL-2.0-or-later (part of s2seg)",
    source="s2seg built-in",
)
BUILTIN_CARDS = {BUILTIN_CARD.name: BUILTIN_CARD}


class SpectralPrototypeNet(torch.nn.Module):
    """Features from reflectances (B03, B04, B08, B11) → class logits (N, 19, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("centres", torch.tensor([p for _, p, _ in _PROTOTYPES], dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(_FEATURE_SCALE, dtype=torch.float32))
        self.register_buffer("log_prior", torch.tensor([lp for _, _, lp in _PROTOTYPES], dtype=torch.float32))
        membership = torch.zeros(len(BIGEARTHNET19_NAMES), len(_PROTOTYPES))
        for k, (name, _, _) in enumerate(_PROTOTYPES):
            membership[class_index(name), k] = 1.0
        self.register_buffer("membership", membership)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        green, red, nir, swir = x.clamp_min(1e-4).unbind(dim=1)

        def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a - b) / (a + b)

        mndwi = ratio(green, swir)
        water = torch.sigmoid((mndwi - 0.2) / 0.05).unsqueeze(1)
        k = _OPEN_WATER_WINDOW
        # Box mean as two 1-D passes (separable): k× cheaper than a k × k pool.
        padded = F.pad(water, (k // 2,) * 4, mode="replicate")
        open_water = F.avg_pool2d(F.avg_pool2d(padded, (k, 1), stride=1), (1, k), stride=1).squeeze(1)
        return torch.stack([ratio(nir, red), mndwi, ratio(swir, nir), (green + red) / 2, nir, open_water], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x) / self.scale[None, :, None, None]  # (N, F, H, W), standardised
        mu = self.centres / self.scale  # (K, F)
        # −½‖f − μ‖² expanded so the prototype term is one matrix product (a 1 × 1 convolution).
        cross = torch.einsum("nfhw,kf->nkhw", f, mu)
        log_lik = cross - 0.5 * (f * f).sum(dim=1, keepdim=True) - 0.5 * (mu * mu).sum(dim=1)[None, :, None, None]
        log_lik = log_lik + self.log_prior[None, :, None, None]
        # Class score = log Σ of its prototypes' likelihoods (a mixture), computed stably.
        peak = log_lik.amax(dim=1, keepdim=True)
        mixture = torch.einsum("ck,nkhw->nchw", self.membership, torch.exp(log_lik - peak))
        return torch.log(mixture.clamp_min(1e-30)) + peak


class BuiltinModel:
    """:class:`SegmentationModel` wrapper of :class:`SpectralPrototypeNet`."""

    def __init__(self, card: ModelCard, device: torch.device):
        self.card = card
        self.device = device
        self.net = SpectralPrototypeNet().to(device).eval()

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return apply_activation(self.net(batch), self.card.activation)


def load(card: ModelCard, device: torch.device) -> BuiltinModel:
    return BuiltinModel(card, device)
