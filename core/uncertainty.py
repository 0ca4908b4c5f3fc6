"""Per-pixel class and confidence products from blended probabilities, in one pass (DESIGN §4)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CLASS_NODATA = 255
LOW_GAP = 0.1  # a top-1/top-2 gap below this means "near a decision boundary"


@dataclass
class Confidence:
    """Products of one window; float products are NaN and class is 255 where not valid."""

    classes: torch.Tensor  # uint8 (h, w)
    maxprob: torch.Tensor  # float32
    entropy: torch.Tensor  # float32, bits, 0 … log2 C
    gap: torch.Tensor  # float32, top-1 − top-2


def confidence(probs: torch.Tensor, valid: torch.Tensor) -> Confidence:
    """``probs (C, h, w)`` → class, max probability, entropy of p/Σp in bits, top-1/top-2 gap."""
    c = probs.shape[0]
    if c >= 2:
        top = torch.topk(probs, 2, dim=0)
        maxprob, classes = top.values[0], top.indices[0]
        gap = top.values[0] - top.values[1]
    else:
        maxprob, classes = probs[0], torch.zeros_like(probs[0], dtype=torch.long)
        gap = maxprob.clone()
    # Sigmoid (multi-label) outputs need not sum to 1: entropy is taken of q = p / Σp.
    total = probs.sum(dim=0).clamp_min(torch.finfo(probs.dtype).tiny)
    q = probs / total
    entropy = -torch.special.xlogy(q, q).sum(dim=0) / math.log(2.0)
    invalid = ~valid
    nan = torch.tensor(float("nan"), dtype=probs.dtype, device=probs.device)
    return Confidence(
        classes=classes.to(torch.uint8).masked_fill(invalid, CLASS_NODATA),
        maxprob=torch.where(invalid, nan, maxprob),
        entropy=torch.where(invalid, nan, entropy.clamp(0.0, math.log2(max(c, 1)))),
        gap=torch.where(invalid, nan, gap),
    )
