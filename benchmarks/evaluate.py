"""Score a model on 60 real labelled BigEarthNet patches: ``make evaluate`` (``python -m s2seg.benchmarks.evaluate``).

Each patch (a band folder, :mod:`.evaluation_data`) goes through the real engine path,
:func:`s2seg.core.pipeline.segment`, and its class raster is scored against the patch's reference
labels, grouped into the label groups of :data:`s2seg.core.nomenclature.LABEL_GROUPS`:

* **precision**: share of the patch's valid pixels whose predicted group is among its labels' groups;
* **recall**: share of the labels' groups predicted on at least :data:`RECALL_MIN_SHARE` of the patch.

Patch labels say what is present, not where: these are the strongest pixel-free measures they allow.
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

from s2seg.core.nomenclature import LABEL_GROUPS, group_of

from .evaluation_data import DEFAULT_CACHE, DataUnavailable, EvalPatch, benv1_lmdb_patches, benv2_patches, geotiff_patches

#: A labelled group counts as found when it covers at least this share of the patch's valid pixels.
RECALL_MIN_SHARE = 0.05
GROUPS = tuple(LABEL_GROUPS)
DOCS_HEADING = "## Built-in model and evaluation"


@dataclass(frozen=True)
class PatchScore:
    patch: EvalPatch
    #: share of the valid pixels predicted in each group (GROUPS order)
    shares: tuple[float, ...]
    valid: int
    mean_maxprob: float

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


def score_patches(patches: Iterable[EvalPatch], model: str = "builtin", workdir: Path | None = None) -> list[PatchScore]:
    """Segment every patch with ``model`` through :func:`segment` and score it."""
    import rasterio

    from s2seg.core.config import EngineConfig
    from s2seg.core.models import load_model, pick_device, resolve_card
    from s2seg.core.pipeline import segment

    card = resolve_card(model)
    loaded = load_model(card, pick_device("auto"))  # once for all patches
    config = EngineConfig(overwrite=True)
    scores = []
    with tempfile.TemporaryDirectory(prefix="s2seg-eval-") as scratch:
        out_root = Path(workdir) if workdir is not None else Path(scratch)
        for patch in patches:
            result = segment(patch.folder, out_root / patch.name, loaded, config)
            with rasterio.open(result.products["class"]) as src:
                classes = src.read(1)
            with rasterio.open(result.products["maxprob"]) as src:
                maxprob = src.read(1)
            shares, valid = group_shares(classes, card.class_names)
            scores.append(PatchScore(patch, shares, valid, float(np.nanmean(maxprob))))
    return scores


# --- tables ------------------------------------------------------------------------------------------
def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summary(scores: list[PatchScore]) -> dict[str, float]:
    return {"patches": len(scores), "precision": _mean([s.precision for s in scores]),
            "recall": _mean([s.recall for s in scores])}


def tables(scores: list[PatchScore], title: str) -> str:
    """The evaluation as Markdown: mean, per patch, per subset, per group, confusion."""
    lines = [f"### {title}", ""]
    total = summary(scores)
    lines += [f"**Mean over {total['patches']} patches: label-group precision {_pct(total['precision'])} %, "
              f"recall {_pct(total['recall'])} %** (recall: a labelled group predicted on ≥ "
              f"{RECALL_MIN_SHARE:.0%} of the patch).", ""]
    lines += ["| patch | source | country | season | snow | labelled groups | predicted shares (≥ 1 %) | precision | recall | mean maxprob |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for s in scores:
        predicted = ", ".join(f"{g} {_pct(v)}" for g, v in sorted(zip(GROUPS, s.shares), key=lambda t: -t[1]) if v >= 0.01)
        lines.append(f"| {s.patch.name} | {s.patch.source} | {s.patch.country} | {s.patch.season} | "
                     f"{'yes' if s.patch.snow else 'no'} | {', '.join(sorted(s.truth))} | {predicted} | "
                     f"{_pct(s.precision)} | {_pct(s.recall)} | {s.mean_maxprob:.2f} |")
    lines += ["", "| subset | patches | precision % | recall % |", "|---|---|---|---|"]
    subsets: dict[str, list[PatchScore]] = defaultdict(list)
    for s in scores:
        for key in (f"source {s.patch.source}", f"country {s.patch.country}", f"season {s.patch.season}",
                    f"level {s.patch.level}", f"snow {'yes' if s.patch.snow else 'no'}"):
            subsets[key].append(s)
    for key in sorted(subsets):
        sub = summary(subsets[key])
        lines.append(f"| {key} | {sub['patches']} | {_pct(sub['precision'])} | {_pct(sub['recall'])} |")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin", help="model name, card or folder (default: builtin)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"data cache (default: {DEFAULT_CACHE})")
    parser.add_argument("--geotiff-only", action="store_true", help="only the six BEN v1 GeoTIFF patches (no lmdb/pyarrow)")
    parser.add_argument("--source", action="append", help="only patches of this source (repeatable), e.g. 'BEN v1 LMDB'")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this Markdown file")
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
    scores = score_patches(patches, args.model)
    text = tables(scores, f"Model `{args.model}` on {len(scores)} real BigEarthNet patches")
    print(text)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
