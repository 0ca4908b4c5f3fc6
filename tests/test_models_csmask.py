"""The ukis-csmask cloud/shadow models: cards from the wheel's files, and the real network end to end."""
import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from s2seg.core.config import EngineConfig
from s2seg.core.errors import ModelError
from s2seg.core.models import csmask, resolve_card
from s2seg.core.nomenclature import CLOUD_SHADOW_NAMES
from s2seg.core.pipeline import segment
from s2seg.core.sample import CLASSES, truth_window, write_sample_tile

CLOUD_TRUTH = CLASSES.index("cloud")
needs_wheel = pytest.mark.skipif(csmask.package_dir() is None, reason="ukis-csmask is not installed")


@needs_wheel
@pytest.mark.parametrize(("name", "level", "stem"), [("s2-cloud-l2a", "L2A", "model_6b_l2a"), ("s2-cloud-l1c", "L1C", "model_6b_l1c")])
def test_cards_come_from_the_wheels_statistics(name, level, stem):
    card = resolve_card(name)
    stats = json.loads((csmask.package_dir() / f"{stem}.json").read_text())["data"]
    assert card.bands == ("B02", "B03", "B04", "B08", "B11", "B12")  # blue, green, red, nir, swir16, swir22
    assert list(card.mean) == stats["dataset_statistics"]["img"][0] and list(card.std) == stats["dataset_statistics"]["img"][1]
    assert card.patch_size == 256 and card.resolution == 30 and card.footprint == 768
    assert card.class_names == CLOUD_SHADOW_NAMES and card.output_kind == "dense" and card.activation == "softmax"
    assert card.input_scale == "reflectance" and card.levels == (level,) and card.format == "onnx"
    assert card.path.endswith(f"{stem}.onnx")


def _copy_model(tmp_path, edit):
    onnx = tmp_path / "model_6b_l2a.onnx"
    onnx.write_bytes(b"")  # the card reads the JSON only
    data = json.loads((csmask.package_dir() / "model_6b_l2a.json").read_text())
    edit(data)
    onnx.with_suffix(".json").write_text(json.dumps(data))
    return onnx


@needs_wheel
@pytest.mark.parametrize(("edit", "pattern"), [
    (lambda d: d["data"].pop("target_size"), r"cannot read the statistics of 'x' from .*model_6b_l2a.json: KeyError"),
    (lambda d: d["data"]["dataset_statistics"]["band_names"].__setitem__(0, "ultraviolet"), r"band names \['ultraviolet'\] are not"),
    (lambda d: d["data"].__setitem__("classes", 4), r"4 classes, expected 3"),
    (lambda d: d["data"].__setitem__("target_size", [256, 128]), r"256 × 128 is not square"),
])
def test_bad_statistics_files_are_named(tmp_path, edit, pattern):
    with pytest.raises(ModelError, match=pattern):
        csmask.card_from_files("x", _copy_model(tmp_path, edit), "L2A")


def test_missing_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(csmask, "package_dir", lambda: None)
    with pytest.raises(ModelError, match=r"model 's2-cloud-l1c' needs the ukis-csmask model files: pip install --no-deps ukis-csmask==1.0.0"):
        resolve_card("s2-cloud-l1c")


def test_listing_models_imports_no_torch():
    code = ("import sys; from s2seg.core.models import available_cards; names = list(available_cards()); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(names)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "builtin" in out.stdout


@needs_wheel
@pytest.mark.slow
def test_real_cloud_model_finds_the_clouds_of_a_sample_tile(tmp_path):
    """The pretrained U-Net at 30 m on an 800² L2A sample tile: clouds found, clear land left clear."""
    tile = write_sample_tile(tmp_path / "tile", size=800, seed=3, level="L2A")
    result = segment(tile, tmp_path / "out", model="s2-cloud-l2a", config=EngineConfig(device="cpu"))
    with rasterio.open(result.products["class"]) as ds:
        classes = ds.read(1)
        assert ds.width == ds.height == 800  # written on the 10 m grid
    with rasterio.open(result.products["maxprob"]) as ds:
        maxprob = ds.read(1)
    cloud = truth_window(800, seed=3) == CLOUD_TRUTH
    assert 0.03 < cloud.mean() < 0.3  # the scene has clouds to find
    assert (classes[cloud] == 1).mean() > 0.95  # nearly every cloud pixel is called cloud
    assert (classes[~cloud] == 0).mean() > 0.8  # most of the rest is clear (shadows and cloud rims aside)
    shadow = classes == 2
    assert shadow.mean() > 0.01 and (cloud[shadow]).mean() < 0.05  # shadows found, beside the clouds
    assert np.nanmean(maxprob[~cloud & (classes == 0)]) > 0.9
    assert result.card.name == "s2-cloud-l2a" and [s.name for s in result.class_stats] == list(CLOUD_SHADOW_NAMES)
