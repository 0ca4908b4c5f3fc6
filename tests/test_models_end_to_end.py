"""`s2seg segment --model X` end to end for each model format, on a small L2A sample tile:
a BigEarthNet v2 checkpoint folder, an ONNX model with Deepness metadata, a TorchScript
model with a sidecar card (tiny real-format models written by the format tests' helpers)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from doubles import DENSE_CARD, SEGMENTOR_META, TinySegmenter, export, make_timm, save_scripted, segmentor, write_checkpoint

from s2seg.core.cli import main

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")]


def ben_v2_folder(tmp_path):
    return write_checkpoint(tmp_path / "resnet50-s2-v0.2.0", make_timm()), 19


def onnx_file(tmp_path):
    return export(segmentor(), tmp_path / "seg.onnx", SEGMENTOR_META), 3


def torchscript_file(tmp_path):
    return save_scripted(TinySegmenter(), tmp_path / "seg.pt", DENSE_CARD), 2


@pytest.mark.parametrize(("make", "chunk_size"), [(ben_v2_folder, 240), (onnx_file, 96), (torchscript_file, 120)],
                         ids=["ben-v2", "onnx", "torchscript"])
def test_segment_cli_runs_each_model_format(small_tile, tmp_path, capsys, make, chunk_size):
    model, n_classes = make(tmp_path)
    out = tmp_path / "out"
    code = main(["segment", str(small_tile), str(out), "--model", str(model), "--chunk-size", str(chunk_size),
                 "--device", "cpu", "--mask", "none", "--quiet"])  # the land cover everywhere
    assert code == 0, capsys.readouterr().err
    assert "on cpu" in capsys.readouterr().out
    (report_path,) = out.glob("*_report.json")
    report = json.loads(report_path.read_text())
    assert report["model"]["name"] == (model.stem if model.is_file() else model.name)
    assert report["device"] == "cpu"
    products = report["products"]
    for key in ("class", "maxprob", "entropy", "gap", "preview"):
        assert products[key] and (out / products[key]).exists()
    with rasterio.open(products["class"]) as ds:
        classes = ds.read(1)
        assert (ds.width, ds.height) == (240, 240)
    valid = classes != 255
    assert valid.all()  # the sample tile has no nodata
    assert classes[valid].max() < n_classes
    with rasterio.open(products["maxprob"]) as ds:
        maxprob = ds.read(1)
    assert np.isfinite(maxprob).all() and (maxprob > 0).all() and (maxprob <= 1 + 1e-6).all()
    assert sum(c["pixels"] for c in report["classes"]) == 240 * 240
