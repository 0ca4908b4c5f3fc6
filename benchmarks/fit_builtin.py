"""Fit the built-in model's prototype table on real labelled patches, with an honest split:
``python -m s2seg.benchmarks.fit_builtin --fit-on cv`` (two-fold cross-validation), ``--fit-on all`` (the shipped table).

The patches (:mod:`.evaluation_data`) go through the real engine path once, :func:`segment` with a
recording model, so the fit sees exactly the reflectances the model sees. Patch labels say which
classes are present, not where, so the fit maximises the evaluation's own measures made smooth:

* **precision**: the mean, over a patch's pixels, of the (sharpened) probability of its labelled groups;
* **recall**: for each labelled group, a sigmoid of its (sharpened) share minus the 5 % threshold;

plus two anchors that keep the model what it was where the labels cannot judge it: a penalty on the
distance of every prototype from its starting place (in feature-scale units), and the demo scene's
(L1C, Virginia coast) group shares, which must not move. The snow, cloud and leafless-forest rows and
the tidal-mudflat row are frozen: their honest spreads are physics, not something to fit on 60 patches,
and the mudflats, left free, take big turbid lakes (no tidal flat among the patches to hold them).

Every fit starts from :data:`HAND_SET`, the table placed by hand on the first six features (commit
3ffd3fd), never from a table that has seen the patches: the coordinates of the features added since
(the blue-red ratio) start at each row's responsibility-weighted mean over the fitted patches and the
demo scene under the hand-set six-feature model (an in-fold EM step), except where :data:`HAND_SET_LATER`
sets them by hand; no land row's blue-red coordinate may pass :data:`LAND_BLUE_RED_CEILING`, at the start
or in the fit. The class distributions of the rows are ``builtin._PROTOTYPES``'s.

Prints the fitted ``_PROTOTYPES`` centres and priors to paste into ``core/models/builtin.py``,
and the scores on the fitted split and on the other one (measured again with ``make evaluate``).
The shipped table is ``--fit-on all`` with every option at its default (120 steps, anchor 0.05,
demo weight 20, 2,000 pixels per patch and step).

``--mask MODE`` scores the same fitted tables (nothing is fitted differently) a second time under the
cloud/shadow/snow mask that ``make evaluate`` (``evaluate.py --mask MODE``) recorded for every patch
(``<cache>/masks-<MODE>.npz``: the engine's own mask codes; they do not depend on the land-cover table):
masked pixels are not scored, and a patch with fewer than 5 % valid pixels is left out, as in the evaluation.
"""
from __future__ import annotations

import argparse
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from s2seg.core.config import MASK_MODES
from s2seg.core.nomenclature import BIGEARTHNET19_NAMES, LABEL_GROUPS, group_of

from .evaluate import PatchScore, mask_record_path, summary, tables
from .evaluation_data import DEFAULT_CACHE, EvalPatch, benv1_lmdb_patches, benv2_patches, geotiff_patches

GROUPS = tuple(LABEL_GROUPS)
SPLITS = {"issue30": ("BEN v1 GeoTIFF", "BEN v2 LMDB"), "heldout30": ("BEN v1 LMDB",),
          "all": ("BEN v1 GeoTIFF", "BEN v2 LMDB", "BEN v1 LMDB")}
#: Two-fold cross-validation: each half is scored by the table fitted on the other.
FOLDS = ("issue30", "heldout30")
DEMO = Path("data") / "demo" / "virginia_coast"
#: The hand-set table (commit 3ffd3fd): each row's centre in the first six features of ``builtin._FEATURES``
#: and its log prior, in ``builtin._PROTOTYPES``'s row order. The start of every fit (see the module docstring).
HAND_SET = (
    ((-0.30, 0.70, -0.60, 0.08, 0.03, 0.95), 0.0),  # Marine waters
    ((-0.20, 0.60, -0.50, 0.07, 0.04, 0.45), 0.0),  # Inland waters
    ((-0.05, 0.38, -0.15, 0.075, 0.05, 0.30), 0.0),  # Inland waters: turbid or glacial lakes, rivers
    ((0.05, 0.60, -0.70, 0.15, 0.12, 0.70), 0.0),  # Marine waters: surf
    ((0.30, -0.15, -0.05, 0.012, 0.02, 0.40), -0.5),  # Inland waters: dark humic lakes
    ((-0.05, 0.38, -0.15, 0.075, 0.05, 0.95), 0.0),  # Inland waters: wide turbid or glacial lakes (added later)
    ((0.25, 0.15, -0.10, 0.06, 0.12, 0.55), 0.0),  # Coastal wetlands: salt marsh
    ((0.00, 0.15, -0.05, 0.09, 0.08, 0.40), 0.0),  # Coastal wetlands: tidal mudflats
    ((0.35, 0.05, -0.15, 0.05, 0.15, 0.20), -0.5),  # Inland wetlands
    ((0.05, -0.05, 0.10, 0.22, 0.25, 0.40), 0.0),  # Beaches, dunes, sands
    ((0.75, -0.45, -0.35, 0.03, 0.22, 0.0), 0.0),  # Coniferous forest
    ((0.80, -0.50, -0.40, 0.035, 0.32, 0.0), 0.0),  # Broad-leaved forest
    ((0.78, -0.48, -0.38, 0.033, 0.27, 0.0), 0.0),  # Mixed forest
    ((0.60, -0.40, -0.20, 0.045, 0.22, 0.0), -0.3),  # Transitional woodland, shrub
    ((0.42, -0.38, -0.08, 0.045, 0.16, 0.0), -0.5),  # leafless broad-leaved forest (spread)
    ((0.15, -0.30, 0.15, 0.12, 0.20, 0.0), 0.0),  # Arable land: bare, ploughed fields
    ((0.26, -0.36, 0.04, 0.17, 0.33, 0.0), 0.0),  # Arable land: bare fields, bottom of atmosphere
    ((0.60, -0.40, -0.20, 0.05, 0.35, 0.0), 0.0),  # Arable land: growing crops
    ((0.86, -0.50, -0.40, 0.05, 0.47, 0.0), -0.3),  # Arable land: dense crops
    ((0.55, -0.35, -0.10, 0.06, 0.28, 0.0), 0.0),  # Pastures
    ((0.88, -0.50, -0.45, 0.05, 0.55, 0.0), 0.0),  # Pastures: lush meadows
    ((0.40, -0.30, 0.00, 0.07, 0.22, 0.0), -0.5),  # Complex cultivation patterns
    ((0.25, -0.25, 0.10, 0.10, 0.18, 0.0), -0.5),  # Natural grassland and sparsely vegetated areas
    ((0.15, -0.15, 0.05, 0.12, 0.15, 0.0), 0.0),  # Urban fabric
    ((0.25, -0.25, -0.04, 0.14, 0.24, 0.0), -1.0),  # Urban fabric: villages, bottom of atmosphere
    ((0.05, -0.10, 0.05, 0.18, 0.18, 0.0), -0.3),  # Industrial or commercial units
    ((0.40, -0.30, 0.00, 0.05, 0.17, 0.0), -1.5),  # Moors, heathland and sclerophyllous vegetation
    ((0.60, -0.40, -0.25, 0.05, 0.26, 0.0), -1.5),  # Agro-forestry areas
    ((0.55, -0.38, -0.20, 0.05, 0.25, 0.0), -1.0),  # agriculture with natural vegetation
    ((0.50, -0.35, -0.10, 0.06, 0.25, 0.0), -1.5),  # Permanent crops
    ((0.42, 0.50, -0.72, 0.08, 0.18, 0.0), 0.0),  # forest under snow (spread)
    ((0.20, 0.72, -0.80, 0.17, 0.22, 0.0), 0.0),  # trees in snow (spread)
    ((0.08, 0.78, -0.80, 0.35, 0.40, 0.0), 0.0),  # open snow (spread)
    ((0.04, 0.82, -0.80, 0.65, 0.70, 0.0), 0.0),  # open snow (spread)
    ((0.10, 0.75, -0.78, 0.11, 0.12, 0.0), 0.0),  # snow in shade (spread; added with the blue-red ratio)
    ((0.15, -0.05, -0.15, 0.35, 0.45, 0.0), 0.0),  # cloud (spread)
    ((0.08, -0.03, -0.10, 0.60, 0.68, 0.0), 0.0),  # cloud (spread)
)
HAND_SET_FEATURES = 6
#: Rows the fit leaves where they start besides the spreads: the tidal mudflats (see the module docstring).
FROZEN_ROWS = (7,)
#: Later features set by hand for some rows instead of their pixels' mean: mud is grey-brown, no bluer than
#: red (blue-red ratio 0); from its pixels' mean (0.22, the water it borders) it took turbid lakes.
HAND_SET_LATER = {7: (0.0,)}
#: Upper bound on the blue-red ratio (B02 − B04) / (B02 + B04) of every one-class land row (not water), at the
#: start and through the fit: no land surface is bluer than red beyond this at the bottom of the atmosphere.
#: Measured on earthlib 1.1.0's 7,261 library spectra (S2 bands as box-car means): 99th percentile of its
#: 2,000 vegetation canopies 0.23 (median 0.02), of its 4,248 soils −0.13, of its 888 built surfaces 0.09.
#: Without it a wetland row starts at the blue-red of the sea pixels the hand-set table gave it (0.32).
LAND_BLUE_RED_CEILING = 0.23


class _Recorder:
    """The built-in model, keeping a copy of every batch it is given (the engine's exact inputs)."""

    def __init__(self, model) -> None:
        self.model, self.card, self.device, self.batches = model, model.card, model.device, []

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches.append(batch.detach().cpu().clone())
        return self.model.predict(batch)


def engine_inputs(folder: Path) -> list[torch.Tensor]:
    """The model inputs ``(N, 4, H, W)`` the engine builds for a band folder."""
    from s2seg.core.config import EngineConfig
    from s2seg.core.models import load_model
    from s2seg.core.pipeline import segment

    recorder = _Recorder(load_model("builtin", "cpu"))
    with tempfile.TemporaryDirectory(prefix="s2seg-fit-") as out:
        segment(folder, Path(out) / "run", recorder, EngineConfig(overwrite=True))
    return recorder.batches


@dataclass
class Data:
    features: torch.Tensor  # (P, F, pixels) per patch, stacked
    truth: torch.Tensor  # (P, G) bool: the patch's labelled groups
    patches: list[EvalPatch]
    demo: torch.Tensor  # (F, pixels) a sample of the demo scene's pixels


def load_data(cache: Path, demo_pixels: int = 40000) -> Data:
    from s2seg.core.models.builtin import SpectralPrototypeNet

    from s2seg.core.models.builtin_card import BUILTIN_CARD

    store = cache / f"fit-inputs-{'-'.join(BUILTIN_CARD.bands)}.pkl"  # the engine inputs hold the card's bands
    if store.exists():
        with open(store, "rb") as f:  # our own cache, written below
            inputs = pickle.load(f)
    else:
        patches = geotiff_patches(cache) + benv2_patches(cache) + benv1_lmdb_patches(cache)
        inputs = {"patches": [(p, engine_inputs(p.folder)[0]) for p in patches], "demo": engine_inputs(DEMO)}
        with open(store, "wb") as f:
            pickle.dump(inputs, f)
    net = SpectralPrototypeNet()
    with torch.no_grad():
        features = torch.stack([net._features(x)[0, :-1] for _, x in inputs["patches"]])
        # Features on the whole strips (the open-water fraction needs the neighbourhood), then a sample.
        demo = torch.cat([net._features(b)[0, :-1] for b in inputs["demo"]], dim=1)
        demo = demo[:, torch.randperm(demo.shape[1], generator=torch.Generator().manual_seed(0))[:demo_pixels]]
    truth = torch.tensor([[g in {group_of(n) for n in p.labels} for g in GROUPS] for p, _ in inputs["patches"]])
    return Data(features, truth, [p for p, _ in inputs["patches"]], demo)


def _group_matrix() -> torch.Tensor:
    m = torch.zeros(len(BIGEARTHNET19_NAMES), len(GROUPS))
    for c, name in enumerate(BIGEARTHNET19_NAMES):
        m[c, GROUPS.index(group_of(name))] = 1.0
    return m


class Table(torch.nn.Module):
    """The prototype table as parameters: centres, log priors (frozen rows: snow, cloud, leafless forest, mudflats).
    It starts at ``centres0`` / ``prior0``; without them, at the table shipped in ``builtin.py``."""

    def __init__(self, centres0: torch.Tensor | None = None, prior0: torch.Tensor | None = None) -> None:
        super().__init__()
        from s2seg.core.models import builtin

        shipped = builtin._PROTOTYPES
        self.centres0 = torch.tensor([c for _, c, _ in shipped]) if centres0 is None else centres0.float()
        self.prior0 = torch.tensor([p for _, _, p in shipped]) if prior0 is None else prior0.float()
        self.scale = torch.tensor(builtin._FEATURE_SCALE)[: self.centres0.shape[1]]  # a start on fewer features
        free = [isinstance(t, str) for t, _, _ in shipped]  # land cover: one class
        for row in FROZEN_ROWS:
            free[row] = False
        self.free = torch.tensor(free)
        self.ceiling = _ceilings(shipped, self.centres0.shape[1])
        self.shift = torch.nn.Parameter(torch.zeros_like(self.centres0))  # in feature-scale units
        self.dprior = torch.nn.Parameter(torch.zeros_like(self.prior0))
        self.targets = builtin._target_matrix().float()  # (K, C)
        self.groups = _group_matrix()

    def centres(self) -> torch.Tensor:
        return torch.minimum(self.centres0 + self.free[:, None] * self.shift * self.scale, self.ceiling)

    def priors(self) -> torch.Tensor:
        return self.prior0 + self.free * self.dprior

    def log_responsibilities(self, f: torch.Tensor) -> torch.Tensor:
        """``(..., pixels, K)``: each pixel's log posterior over the prototypes, from features ``(..., F, pixels)``
        (only the features the table has: a start on fewer features ignores the later ones)."""
        n = self.centres0.shape[1]
        d = ((f[..., :n, :].transpose(-1, -2)[..., None, :] - self.centres()) / self.scale).square().sum(-1)
        return torch.log_softmax(self.priors() - 0.5 * d, dim=-1)

    def probabilities(self, f: torch.Tensor) -> torch.Tensor:
        """``(..., pixels, C)`` from features ``(..., F, pixels)``."""
        return self.log_responsibilities(f).exp() @ self.targets

    def penalty(self) -> torch.Tensor:
        return (self.free[:, None] * self.shift).square().sum() + (self.free * self.dprior).square().sum()


def _ceilings(rows: tuple, features: int) -> torch.Tensor:
    """``(K, features)``: each coordinate's upper bound (:data:`LAND_BLUE_RED_CEILING` on the blue-red ratio of
    the one-class rows whose class is not water, no bound elsewhere)."""
    from s2seg.core.models import builtin

    ceiling = torch.full((len(rows), features), torch.inf)
    if "blue_red" in builtin._FEATURES[:features]:
        land = [isinstance(t, str) and group_of(t) != "water" for t, _, _ in rows]
        ceiling[torch.tensor(land), builtin._FEATURES.index("blue_red")] = LAND_BLUE_RED_CEILING
    return ceiling


def hand_set_table(data: Data, chosen: torch.Tensor) -> Table:
    """The start of a fit on the chosen patches: :data:`HAND_SET`, each row's later features at its
    responsibility-weighted mean over those patches' and the demo scene's pixels under the hand-set model."""
    from s2seg.core.models import builtin

    if len(HAND_SET) != len(builtin._PROTOTYPES):
        raise ValueError(f"HAND_SET has {len(HAND_SET)} rows, builtin._PROTOTYPES {len(builtin._PROTOTYPES)}")
    centres = torch.tensor([c for c, _ in HAND_SET])
    priors = torch.tensor([p for _, p in HAND_SET])
    pixels = torch.cat([data.features[chosen].transpose(0, 1).flatten(1), data.demo], dim=1)  # (F, pixels)
    with torch.no_grad():
        # Normalised over the pixels in log space: a row far from every pixel still gets its nearest pixels' mean.
        weights = torch.softmax(Table(centres, priors).log_responsibilities(pixels), dim=0)  # (pixels, K)
        later = pixels[HAND_SET_FEATURES:] @ weights  # (F - 6, K)
        for row, values in HAND_SET_LATER.items():
            later[: len(values), row] = torch.tensor(values)
        start = torch.cat([centres, later.T], dim=1)
    return Table(torch.minimum(start, _ceilings(builtin._PROTOTYPES, start.shape[1])), priors)


def soft_group_shares(table: Table, f: torch.Tensor, sharpness: float = 0.1) -> torch.Tensor:
    """``(..., pixels, G)``: each pixel's group one-hot of its arg-max class, made smooth."""
    p = table.probabilities(f)
    return torch.softmax(torch.log(p.clamp_min(1e-12)) / sharpness, dim=-1) @ table.groups


def load_masks(cache: Path, mode: str, patches: list[EvalPatch]) -> torch.Tensor:
    """``(P, pixels)`` mask codes of every patch, as the evaluation under ``--mask mode`` recorded them."""
    record = mask_record_path(cache, mode)
    if not record.exists():
        raise SystemExit(f"fit_builtin: no mask record {record}: run `make evaluate EVAL_MASK={mode}` first")
    with np.load(record) as stored:
        missing = [p.name for p in patches if p.name not in stored.files]
        if missing:
            raise SystemExit(f"fit_builtin: {record} lacks {len(missing)} patches (e.g. {missing[0]}): run "
                             f"`make evaluate EVAL_MASK={mode}` over all of them")
        return torch.stack([torch.from_numpy(stored[p.name].ravel().astype(np.int64)) for p in patches])


def patch_scores(table: Table, data: Data, chosen: torch.Tensor, masks: torch.Tensor | None = None) -> list[PatchScore]:
    """The evaluation's scores (:class:`PatchScore`) of the chosen patches under ``table``; with
    ``masks`` (mask codes, :func:`load_masks`), only their unmasked pixels, as the evaluation scores them."""
    from s2seg.core.mask import MASK_NODATA, hidden

    scores = []
    with torch.no_grad():
        for i in np.flatnonzero(chosen.numpy()):
            patch, f = data.patches[i], data.features[i]
            p = table.probabilities(f)
            group = table.groups.argmax(-1)[p.argmax(-1)]
            maxprob = p.amax(-1)
            pixels, masked_share = None, 0.0
            if masks is not None:
                codes = masks[i].numpy()
                with_data = codes != MASK_NODATA
                keep = torch.from_numpy(with_data & ~hidden(codes))
                pixels = int(with_data.sum())
                group, maxprob = group[keep], maxprob[keep]
                masked_share = 1 - group.numel() / pixels if pixels else 0.0
            shares = torch.bincount(group, minlength=len(GROUPS)).double() / max(group.numel(), 1)
            mean_maxprob = float(maxprob.mean()) if group.numel() else float("nan")
            scores.append(PatchScore(patch, tuple(shares.tolist()), group.numel(), mean_maxprob, pixels, masked_share))
    return scores


def fit(data: Data, chosen: torch.Tensor, steps: int, anchor: float, demo_weight: float, pixels: int) -> Table:
    table = hand_set_table(data, chosen)
    with torch.no_grad():
        # The demo scene's shares as the hand-set table (six features) gave them, checked by eye on its preview:
        # the blue-red ratio's start moves them (L1C: the atmosphere brightens the blue), the fit must undo that.
        hand_set = Table(torch.tensor([c for c, _ in HAND_SET]), torch.tensor([p for _, p in HAND_SET]))
        demo0 = soft_group_shares(hand_set, data.demo).mean(0)
    optimiser = torch.optim.Adam(table.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(1)
    features, truth = data.features[chosen], data.truth[chosen].float()
    for step in range(steps):
        sample = torch.randint(features.shape[2], (pixels,), generator=generator)
        share = soft_group_shares(table, features[:, :, sample]).mean(1)  # (P, G)
        precision = (share * truth).sum(1)
        recall = (torch.sigmoid((share - 0.06) / 0.01) * truth).sum(1) / truth.sum(1)
        worst = torch.relu(0.8 - precision)  # no patch, and so no group of patches, far below the rest
        demo = soft_group_shares(table, data.demo).mean(0)
        loss = (-(precision + recall).mean() + worst.mean() + anchor * table.penalty() / table.free.sum()
                + demo_weight * (demo - demo0).square().sum())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss.item():.4f}, demo shift {(demo - demo0).abs().max().item():.3f}", flush=True)
    return table


def print_table(table: Table) -> None:
    from s2seg.core.models import builtin

    for (target, _, _), c, p in zip(builtin._PROTOTYPES, table.centres().tolist(), table.priors().tolist()):
        name = repr(target) if isinstance(target, str) else "…"
        print(f"    ({name}, ({', '.join(f'{v:.3f}' for v in c)}), {p:.2f}),")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fit-on", choices=(*SPLITS, "cv"), default="cv",
                        help="the patches to fit on; cv: each of the two halves scored by the table fitted on the other")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--anchor", type=float, default=0.05, help="weight of the distance from the starting table")
    parser.add_argument("--demo-weight", type=float, default=20.0, help="weight of the demo scene's group shares")
    parser.add_argument("--pixels", type=int, default=2000, help="pixels per patch and step")
    parser.add_argument("--mask", choices=[m for m in MASK_MODES if m != "none"],
                        help="also score the same fitted tables under this mask, as make evaluate records it "
                             "(the fit itself does not change)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    data = load_data(args.cache)
    masks = load_masks(args.cache, args.mask, data.patches) if args.mask else None
    source = np.array([p.source for p in data.patches])
    folds = FOLDS if args.fit_on == "cv" else (args.fit_on,)
    before, after, before_masked, after_masked = [], [], [], []
    for fold in folds:
        chosen = torch.from_numpy(np.isin(source, SPLITS[fold]))
        table = fit(data, chosen, args.steps, args.anchor, args.demo_weight, args.pixels)
        print(f"fitted on {fold}:")
        print_table(table)
        for name, subset in (("fitted on", chosen), ("not fitted on", ~chosen)):
            if subset.any():
                start = hand_set_table(data, chosen)
                b, a = summary(patch_scores(start, data, subset)), summary(patch_scores(table, data, subset))
                print(f"{name} ({int(subset.sum())}): precision {b['precision']:.3f} → {a['precision']:.3f}, "
                      f"recall {b['recall']:.3f} → {a['recall']:.3f}")
        scored = chosen if args.fit_on != "cv" else ~chosen  # cv: only the half the table did not learn from
        before += patch_scores(hand_set_table(data, chosen), data, scored)
        after += patch_scores(table, data, scored)
        if masks is not None:  # the same tables, scored on the pixels the mask leaves
            before_masked += patch_scores(hand_set_table(data, chosen), data, scored, masks)
            after_masked += patch_scores(table, data, scored, masks)
    kind = "out of fold (two-fold cross-validation)" if args.fit_on == "cv" else f"fitted on {args.fit_on}, in sample"
    print(tables(before, "hand-set table, the model alone"))
    print(tables(after, f"fitted table, {kind}, the model alone"))
    if masks is not None:
        print(tables(before_masked, f"hand-set table, under --mask {args.mask}"))
        print(tables(after_masked, f"fitted table, {kind}, under --mask {args.mask}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
