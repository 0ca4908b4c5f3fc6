"""Patches per second of each model kind on a 1200² L2A sample crop, on this machine's CPU (or --device).

    .venv/bin/python benchmarks/measure_models.py [--size 1200] [--device cpu]

Models: the built-in one, a ResNet-50 BigEarthNet v2 checkpoint folder (random weights,
the real layout), and the tiny ONNX and TorchScript models of the format tests. Each is
run once through :func:`s2seg.core.pipeline.segment` (one warm-up run on a small crop
first); "model" counts inference-stage time only, "end to end" the whole run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the format tests write the models (s2seg itself comes from .venv)


class Counting:
    """A loaded model that counts the patches it is given."""

    def __init__(self, model) -> None:
        self.model, self.card, self.device, self.patches = model, model.card, model.device, 0

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        self.patches += batch.shape[0]
        return self.model.predict(batch)


def main() -> int:
    import warnings

    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1200)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from s2seg.core.config import EngineConfig
    from s2seg.core.models import load_model, pick_device, resolve_card
    from s2seg.core.pipeline import segment
    from s2seg.core.sample import write_sample_tile
    from test_models_ben_v2 import make_timm, write_checkpoint
    from test_models_onnx import SEGMENTOR_META, export, segmentor
    from test_models_torchscript import DENSE_CARD, TinySegmenter, save_scripted

    device = pick_device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tile = write_sample_tile(work / "tile", size=args.size, seed=0, level="L2A", layout="safe")
        warm = write_sample_tile(work / "warm", size=240, seed=1, level="L2A", layout="safe")
        models = {
            "builtin": "builtin",
            "ben-v2 resnet50": write_checkpoint(work / "resnet50-s2-v0.2.0", make_timm("resnet50"), arch="resnet50"),
            "onnx (test, dense 32 px)": export(segmentor(), work / "seg.onnx", SEGMENTOR_META),
            "torchscript (test, dense 16 px)": save_scripted(TinySegmenter(), work / "ts.pt", DENSE_CARD),
        }
        print(f"{'model':34s} {'patch':>5s} {'patches':>8s} {'batch':>5s} {'model s':>8s} {'total s':>8s} "
              f"{'patches/s (model)':>18s} {'patches/s (end to end)':>23s}")
        for label, spec in models.items():
            model = Counting(load_model(resolve_card(spec), device))
            segment(warm, work / f"warm-{len(label)}", model=model, config=EngineConfig(overwrite=True))
            model.patches = 0
            t0 = time.perf_counter()
            result = segment(tile, work / f"out-{len(label)}", model=model, config=EngineConfig(overwrite=True))
            total = time.perf_counter() - t0
            busy = result.timings["inference"]
            print(f"{label:34s} {model.card.patch_size:5d} {model.patches:8d} {result.batch_size_final:5d} {busy:8.2f} "
                  f"{total:8.2f} {model.patches / busy:18.1f} {model.patches / total:23.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
