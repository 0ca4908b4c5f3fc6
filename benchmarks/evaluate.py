"""Score a model on 60 real labelled BigEarthNet patches: ``make evaluate`` (``python -m s2seg.benchmarks.evaluate``).

Each patch (a band folder, :mod:`.evaluation_data`) goes through the real engine path,
:func:`s2seg.core.pipeline.segment`, and its class raster is scored against the patch's reference
labels, grouped into the label groups of :data:`s2seg.core.nomenclature.LABEL_GROUPS`:

* **precision**: share of the patch's valid pixels whose predicted group is among its labels' groups;
* **recall**: share of the labels' groups predicted on at least :data:`RECALL_MIN_SHARE` of the patch.

Patch labels say what is present, not where: these are the strongest pixel-free measures they allow.

``--mask MODE`` (:data:`s2seg.core.config.MASK_MODES`) runs the engine with that cloud/shadow/snow mask,
as the command line does (its default is ``auto``); the default here is ``none``, issue 16's own measure:
the model alone. Masked pixels are not valid (they are nodata in the class raster). A patch with fewer
than :data:`MIN_VALID_SHARE` of its pixels valid after the mask is reported as "masked" and left out of
the means, subsets, per-group and confusion tables (a rule fixed before any number was looked at: a
snow-covered patch has no land cover left to score). The mask codes of every patch are recorded in
``<cache>/masks-<MODE>.npz`` (:func:`mask_record_path`), so that ``fit_builtin.py --mask MODE`` can
score its cross-validation on the same pixels.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from s2seg.core.config import MASK_MODES
from s2seg.core.nomenclature import LABEL_GROUPS, group_of

from .evaluation_data import DEFAULT_CACHE, DataUnavailable, EvalPatch, benv1_lmdb_patches, benv2_patches, geotiff_patches

#: A labelled group counts as found when it covers at least this share of the patch's valid pixels.
RECALL_MIN_SHARE = 0.05
#: Under a mask, a patch with fewer valid pixels than this share of its pixels is "masked": not scored.
MIN_VALID_SHARE = 0.05
GROUPS = tuple(LABEL_GROUPS)
DOCS_HEADING = "## Built-in model and evaluation"


@dataclass(frozen=True)
class PatchScore:
    patch: EvalPatch
    #: share of the valid pixels predicted in each group (GROUPS order)
    shares: tuple[float, ...]
    valid: int
    mean_maxprob: float
    #: pixels of the patch (with data); None: all of them are valid (no mask)
    pixels: int | None = None
    #: share of the patch's pixels hidden by the cloud/shadow/snow mask
    masked_share: float = 0.0

    @property
    def masked(self) -> bool:
        """Too few valid pixels left under the mask to score (:data:`MIN_VALID_SHARE`)."""
        return self.pixels is not None and self.valid < MIN_VALID_SHARE * self.pixels

    @property
    def truth(self) -> frozenset[str]:
        return frozenset(group_of(name) for name in self.patch.labels)

    @property
    def precision(self) -> float:
        return sum(s for g, s in zip(GROUPS, self.shares) if g in self.truth)

    @property
    def recall(self) -> float:
        found = [g for g, s in zip(GROUPS, self.shares) if g in self.truth and s >= RECALL_MIN_SHARE]
        return len(found) / len(self.truth) if self.truth else 1.0


def group_shares(classes: np.ndarray, class_names: tuple[str, ...], nodata: int = 255) -> tuple[tuple[float, ...], int]:
    """Share of the valid pixels of a class raster in each label group, and the number of valid pixels."""
    valid = classes != nodata
    counts = np.bincount(classes[valid].ravel(), minlength=len(class_names))[: len(class_names)]
    total = int(counts.sum())
    per_group = np.zeros(len(GROUPS))
    for index, name in enumerate(class_names):
        per_group[GROUPS.index(group_of(name))] += counts[index]
    return tuple(float(v) for v in per_group / max(total, 1)), total


def mask_record_path(cache: Path, mask: str) -> Path:
    """Where an evaluation run under ``mask`` records every patch's mask codes (``name → uint8 array``)."""
    return Path(cache) / f"masks-{mask}.npz"


def score_patches(patches: Iterable[EvalPatch], model: str = "builtin", workdir: Path | None = None,
                  mask: str = "none", masks: dict[str, np.ndarray] | None = None) -> list[PatchScore]:
    """Segment every patch with ``model`` through :func:`segment` under ``mask`` (a mask mode) and
    score it. ``masks``: when given, filled with each patch's mask codes (a masked run only)."""
    import rasterio

    from s2seg.core import mask as mask_
    from s2seg.core.config import EngineConfig
    from s2seg.core.models import load_model, pick_device, resolve_card
    from s2seg.core.pipeline import segment
    from s2seg.core.sentinel2 import discover

    device = pick_device("auto")
    card = resolve_card(model)
    loaded = load_model(card, device)  # once for all patches
    cloud_models: dict[str, object] = {}  # likewise the cloud model that the mask mode picks (mask.resolve_mode)
    config = EngineConfig(overwrite=True, mask=mask)
    scores = []
    with tempfile.TemporaryDirectory(prefix="s2seg-eval-") as scratch:
        out_root = Path(workdir) if workdir is not None else Path(scratch)
        for patch in patches:
            cloud = None
            if mask != "none":
                bandset = discover(patch.folder)
                if mask_.resolve_mode(mask, bandset)[0] == "model":
                    name = mask_.cloud_model_name(bandset.level)
                    if name not in cloud_models:
                        cloud_models[name] = load_model(name, device)
                    cloud = cloud_models[name]
            result = segment(patch.folder, out_root / patch.name, loaded, config, mask_model=cloud)
            with rasterio.open(result.products["class"]) as src:
                classes = src.read(1)
            with rasterio.open(result.products["maxprob"]) as src:
                maxprob = src.read(1)
            shares, valid = group_shares(classes, card.class_names)
            pixels, masked_share = None, 0.0
            if result.mask is not None:
                pixels = sum(result.mask["pixels"].values())  # the pixels with data
                masked_share = result.mask["masked_share"]
                if masks is not None:
                    with rasterio.open(result.products["mask"]) as src:
                        masks[patch.name] = src.read(1)
            mean_maxprob = float(np.nanmean(maxprob)) if valid else float("nan")
            scores.append(PatchScore(patch, shares, valid, mean_maxprob, pixels, masked_share))
    return scores


# --- tables ------------------------------------------------------------------------------------------
def _pct(value: float) -> str:
    return "–" if np.isnan(value) else f"{100 * value:.1f}"


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summary(scores: list[PatchScore]) -> dict[str, float]:
    """Mean precision and recall over the scored patches (those a mask left out, :attr:`PatchScore.masked`, are not)."""
    scores = [s for s in scores if not s.masked]
    return {"patches": len(scores), "precision": _mean([s.precision for s in scores]),
            "recall": _mean([s.recall for s in scores])}


def tables(all_scores: list[PatchScore], title: str) -> str:
    """The evaluation as Markdown: mean, per patch, per subset, per group, confusion. Patches left
    without enough valid pixels by a mask (:attr:`PatchScore.masked`) are listed, not scored."""
    lines = [f"### {title}", ""]
    scores = [s for s in all_scores if not s.masked]
    left_out = len(all_scores) - len(scores)
    total = summary(scores)
    masking = any(s.pixels is not None for s in all_scores)
    lines += [f"**Mean over {total['patches']} patches: label-group precision {_pct(total['precision'])} %, "
              f"recall {_pct(total['recall'])} %** (recall: a labelled group predicted on ≥ "
              f"{RECALL_MIN_SHARE:.0%} of the patch)."]
    if masking:
        lines[-1] += (f" Under the mask: masked pixels are not scored; {left_out} of {len(all_scores)} patches have "
                      f"fewer than {MIN_VALID_SHARE:.0%} of their pixels valid and are left out (\"masked\"); "
                      f"mean masked share {_pct(_mean([s.masked_share for s in all_scores]))} %.")
    lines += [""]
    masked_column = " masked % |" if masking else ""
    lines += ["| patch | source | country | season | snow | labelled groups | predicted shares (≥ 1 %) | precision | "
              f"recall | mean maxprob |{masked_column}", "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if masking else "")]
    for s in all_scores:
        predicted = ", ".join(f"{g} {_pct(v)}" for g, v in sorted(zip(GROUPS, s.shares), key=lambda t: -t[1]) if v >= 0.01)
        scored = ("masked | masked | –" if s.masked else f"{_pct(s.precision)} | {_pct(s.recall)} | {s.mean_maxprob:.2f}")
        lines.append(f"| {s.patch.name} | {s.patch.source} | {s.patch.country} | {s.patch.season} | "
                     f"{'yes' if s.patch.snow else 'no'} | {', '.join(sorted(s.truth))} | {predicted} | {scored} |"
                     + (f" {_pct(s.masked_share)} |" if masking else ""))
    lines += ["", "| subset | patches | precision % | recall % |" + (" left out (masked) |" if masking else ""),
              "|---|---|---|---|" + ("---|" if masking else "")]
    subsets: dict[str, list[PatchScore]] = defaultdict(list)
    for s in all_scores:
        for key in (f"source {s.patch.source}", f"country {s.patch.country}", f"season {s.patch.season}",
                    f"level {s.patch.level}", f"snow {'yes' if s.patch.snow else 'no'}"):
            subsets[key].append(s)
    for key in sorted(subsets):
        sub = summary(subsets[key])
        lines.append(f"| {key} | {sub['patches']} | {_pct(sub['precision'])} | {_pct(sub['recall'])} |"
                     + (f" {sum(s.masked for s in subsets[key])} |" if masking else ""))
    lines += ["", "Per group — *recall*: share of the patches labelled with the group where it is predicted on ≥ "
              f"{RECALL_MIN_SHARE:.0%}; *precision*: share of the pixels predicted as the group that lie in patches labelled with it.",
              "", "| group | labelled patches | recall % | predicted pixels | precision % |", "|---|---|---|---|---|"]
    for i, group in enumerate(GROUPS):
        labelled = [s for s in scores if group in s.truth]
        found = [s for s in labelled if s.shares[i] >= RECALL_MIN_SHARE]
        predicted = sum(s.shares[i] * s.valid for s in scores)
        right = sum(s.shares[i] * s.valid for s in scores if group in s.truth)
        lines.append(f"| {group} | {len(labelled)} | {_pct(len(found) / len(labelled)) if labelled else '–'} | "
                     f"{predicted:.0f} | {_pct(right / predicted) if predicted else '–'} |")
    lines += ["", "Confusion — pixels predicted in a group that the patch is not labelled with, by the patch's labelled groups "
              "(largest first):", "", "| predicted group | patch's labelled groups | pixels | share of all pixels % |",
              "|---|---|---|---|"]
    wrong: dict[tuple[str, str], float] = defaultdict(float)
    all_pixels = sum(s.valid for s in scores)
    for s in scores:
        for i, group in enumerate(GROUPS):
            if group not in s.truth and s.shares[i] > 0:
                wrong[(group, ", ".join(sorted(s.truth)))] += s.shares[i] * s.valid
    for (group, truth), pixels in sorted(wrong.items(), key=lambda t: -t[1])[:12]:
        lines.append(f"| {group} | {truth} | {pixels:.0f} | {_pct(pixels / all_pixels)} |")
    return "\n".join(lines) + "\n"


def _mask_modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in MASK_MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"mask modes must be among {', '.join(MASK_MODES)}, got {text!r}")
    return modes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin", help="model name, card or folder (default: builtin)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"data cache (default: {DEFAULT_CACHE})")
    parser.add_argument("--geotiff-only", action="store_true", help="only the six BEN v1 GeoTIFF patches (no lmdb/pyarrow)")
    parser.add_argument("--source", action="append", help="only patches of this source (repeatable), e.g. 'BEN v1 LMDB'")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this Markdown file")
    parser.add_argument("--mask", type=_mask_modes, default=("none",), metavar="MODE[,MODE…]",
                        help=f"cloud/shadow/snow mask of the runs, as the command line's --mask ({', '.join(MASK_MODES)}); "
                             "several, comma-separated, give one table each (default none: the model alone; auto: "
                             "what segment does by default). Masked pixels are not scored; a patch with < "
                             f"{MIN_VALID_SHARE:.0%} of its pixels valid is reported as masked")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        patches = geotiff_patches(args.cache)
        if not args.geotiff_only:
            patches += benv2_patches(args.cache) + benv1_lmdb_patches(args.cache)
    except DataUnavailable as exc:
        print(f"evaluate: the evaluation data could not be fetched: {exc}", file=sys.stderr)
        return 1
    if args.source:
        patches = [p for p in patches if p.source in args.source]
    texts = []
    for mask in args.mask:
        masks: dict[str, np.ndarray] = {}
        scores = score_patches(patches, args.model, mask=mask, masks=masks)
        measure = "the model alone (no mask)" if mask == "none" else f"under `--mask {mask}`"
        texts.append(tables(scores, f"Model `{args.model}` on {len(scores)} real BigEarthNet patches, {measure}"))
        print(texts[-1], flush=True)
        if masks:
            record = mask_record_path(args.cache, mask)
            np.savez_compressed(record, **masks)
            print(f"mask codes of the {len(masks)} patches recorded in {record}")
    text = "\n".join(texts)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
