"""Inference overhead per model kind: the pipeline's inference stage against the model's own time
on the same batches, in the same run (issue 23: ≤ 1.15 ×).

The model's ``predict`` (and ``predict_confidence``, which the one-pass stage calls instead when probabilities
are not written: the built-in model then makes the confidence products in its own compiled pass, so they count
as the model's time) is wrapped (the instance attribute, nothing in the engine changes) to add up the seconds
spent inside it; the inference stage's busy time (``SegmentResult.timings["inference"]``) covers the same batches plus everything around them: gathering patches, normalising, checking the
outputs, merging (overlap-add of dense outputs, accumulation of patch vectors; on the one-pass path without
fused products, the confidence products of each strip). Best of ``repeats``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .common import Log, bench_config, fmt_s
from .report import BenchResult, Section, Target

OVERHEAD_MAX = 1.15


#: The model's own calls the stage makes: ``predict``, and on the one-pass path without probabilities
#: ``predict_confidence`` (a ConfidenceModel makes the strip's products in its own pass).
MODEL_CALLS = ("predict", "predict_confidence")


def timed(model: Any) -> dict[str, float]:
    """Wrap the model's calls (:data:`MODEL_CALLS` it has) to add their seconds and patches into the returned dict."""
    box = {"seconds": 0.0, "patches": 0}

    def wrap(inner):
        def call(batch, *args):
            t0 = time.perf_counter()
            out = inner(batch, *args)
            box["seconds"] += time.perf_counter() - t0
            box["patches"] += int(batch.shape[0])
            return out
        return call

    for name in MODEL_CALLS:
        if hasattr(model, name):
            setattr(model, name, wrap(getattr(model, name)))
    return box


def untimed(model: Any) -> None:
    """The class's methods again."""
    for name in MODEL_CALLS:
        model.__dict__.pop(name, None)


def overhead_section(result: BenchResult, cases: list[tuple[str, str, Path, Any, Any]], work: Path, log: Log,
                     repeats: int = 2) -> None:
    """``cases``: ``(label, kind, tile, model, config)``; one row and one target per case."""
    from s2seg.core.pipeline import segment

    section = Section("Inference overhead: inference stage ÷ the model's own time on the same batches",
                      ["model", "kind", "patches", "model s", "inference stage s", "stage ÷ model"])
    for label, kind, tile, model, config in cases:
        box = timed(model)
        best = None
        try:
            for i in range(repeats):
                log(f"[bench] overhead: {label}, round {i + 1}/{repeats}")
                box.update(seconds=0.0, patches=0)
                r = segment(tile, work / f"out-overhead-{kind}", model=model, config=config.with_(overwrite=True))
                ratio = r.timings["inference"] / max(box["seconds"], 1e-9)
                if best is None or ratio < best[0]:
                    best = (ratio, box["seconds"], r.timings["inference"], box["patches"])
        finally:
            untimed(model)
        ratio, model_s, stage_s, patches = best
        result.ratios[f"inference_overhead_{kind}"] = ratio
        section.rows.append([label, kind, str(patches), fmt_s(model_s), fmt_s(stage_s), f"{ratio:.2f}"])
        note = "" if ratio <= OVERHEAD_MAX else (
            f"{fmt_s(stage_s - model_s)} s outside the model on {patches} patches "
            f"({(stage_s - model_s) / max(patches, 1) * 1000:.1f} ms each): next to a model this cheap, the stage's "
            "other work is a large share: normalising the inputs, checking the outputs and merging them (the "
            "built-in's one-pass path makes its confidence products in the model's own pass, counted as the model: "
            "benchmark-notes.md, issue 16)")
        result.targets.append(Target(f"inference stage ≤ {OVERHEAD_MAX} × model, {label}", f"{ratio:.2f}×",
                                     f"≤ {OVERHEAD_MAX}×", ratio <= OVERHEAD_MAX, note))
    result.sections.append(section)


def overhead_cases(builtin_tile: Path, builtin, heavy: tuple[Path, Any, Any] | None, peer_scene: Path | None,
                   log: Log) -> list[tuple[str, str, Path, Any, Any]]:
    """The built-in (torch, dense), the heavy model when loaded (torch, patch), and the ONNX cloud U-Net
    on the peer's crop when the demo scene and ukis-csmask are there."""
    cases = [("built-in", "torch-one-pass", builtin_tile, builtin, bench_config())]
    if heavy is not None:
        tile, model, config = heavy
        cases.append(("heavy BEN v2", "torch-patch", tile, model, config))
    if peer_scene is not None:
        from s2seg.core.errors import S2SegError
        from s2seg.core.models import load_model, pick_device, resolve_card
        from s2seg.core.sentinel2 import discover

        from .peer_row import CROP, PEER_MODEL, crop_bbox

        try:
            bandset = discover(peer_scene)
            model = load_model(resolve_card(PEER_MODEL), pick_device("cpu"))
        except S2SegError as exc:
            log(f"[bench] overhead: no ONNX row ({exc})")
        else:
            cases.append((PEER_MODEL, "onnx", peer_scene, model, bench_config(aoi=crop_bbox(bandset, CROP))))
    return cases
