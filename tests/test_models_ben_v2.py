"""BigEarthNet v2 (reBEN) checkpoint folders: config.json + model.safetensors, written here
in the real layout from small timm models (keys prefixed ``model.vision_encoder.``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from doubles import BEN_V2_PREFIX, make_timm, write_checkpoint

from s2seg.core.errors import ModelError
from s2seg.core.models import ben_v2
from s2seg.core.nomenclature import BIGEARTHNET19_COLOURS, BIGEARTHNET19_NAMES

CPU = torch.device("cpu")
PREFIX = BEN_V2_PREFIX
# Published constants, written out independently of the module's table.
V020_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
V020_MEAN = (438.3720703125, 614.0556640625, 588.4096069335938, 942.8433227539062, 1769.931640625,
             2049.551513671875, 2193.2919921875, 2235.556640625, 1568.226806640625, 997.7324829101562)
V020_STD = (607.02685546875, 603.2968139648438, 684.56884765625, 738.4326782226562, 1100.4560546875,
            1275.805419921875, 1369.3717041015625, 1356.5440673828125, 1070.1612548828125, 813.5276489257812)
V011_BANDS = ("B02", "B03", "B04", "B08", "B05", "B06", "B07", "B11", "B12", "B8A")


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    return make_timm()


def test_nested_config_loads_strictly_and_matches_timm(tmp_path, resnet):
    folder = write_checkpoint(tmp_path / "resnet50-s2-v0.2.0", resnet)
    card = ben_v2.card_from_folder(folder)
    assert card.name == "resnet50-s2-v0.2.0"
    assert card.format == "ben-v2" and card.path == str(folder.resolve())
    assert card.bands == V020_BANDS
    assert card.mean == pytest.approx(V020_MEAN) and card.std == pytest.approx(V020_STD)
    assert (card.output_kind, card.activation, card.patch_size) == ("patch", "sigmoid", 120)
    assert (card.input_scale, card.resampling, card.levels) == ("dn", "nearest", ("L2A",))
    assert card.class_names == BIGEARTHNET19_NAMES and card.class_colours == BIGEARTHNET19_COLOURS
    assert card.extra == {"architecture": "test_resnet", "version": "v0.2.0"}

    model = ben_v2.load(card, CPU)
    assert model.card is card and model.device == CPU
    batch = torch.randn(3, 10, 120, 120)
    with torch.no_grad():
        expected = torch.sigmoid(resnet(batch))
    probabilities = model.predict(batch)
    assert probabilities.dtype == torch.float32 and probabilities.shape == (3, 19)
    torch.testing.assert_close(probabilities, expected, rtol=1e-5, atol=1e-6)


def test_flat_config_with_model_name_and_version_key(tmp_path, resnet):
    folder = write_checkpoint(tmp_path / "checkpoint", resnet, nested=False, arch_key="model_name", extra={"version": "0.1.1"})
    card = ben_v2.card_from_folder(folder)
    assert card.bands == V011_BANDS
    # Mean and std follow the bands: the v0.2.0 values reordered by band id.
    by_band = {b: (m, s) for b, m, s in zip(V020_BANDS, V020_MEAN, V020_STD)}
    assert card.mean == pytest.approx([by_band[b][0] for b in V011_BANDS])
    assert card.std == pytest.approx([by_band[b][1] for b in V011_BANDS])
    assert card.mean[3] == pytest.approx(2193.2919921875)  # B08 is fourth in v0.1.1
    model = ben_v2.load(card, CPU)
    assert model.predict(torch.zeros(2, 10, 120, 120)).shape == (2, 19)


@pytest.mark.parametrize(
    ("folder_name", "version"),
    [("resnet50-s2-v0.1.1", "v0.1.1"), ("resnet50-s2-v0.2.0", "v0.2.0"), ("my-checkpoint", "v0.2.0"), ("model-v9.9.9", "v0.2.0")],
)
def test_version_from_folder_name(tmp_path, resnet, folder_name, version):
    card = ben_v2.card_from_folder(write_checkpoint(tmp_path / folder_name, resnet))
    assert card.extra["version"] == version
    assert card.bands == ben_v2.S2_BAND_ORDER[version]


def test_hugging_face_cache_layout_names_model_and_version(tmp_path, resnet):
    snapshot = tmp_path / "models--BIFOLD-BigEarthNetv2-0--resnet50-s2-v0.1.1" / "snapshots" / "0123abcd"
    card = ben_v2.card_from_folder(write_checkpoint(snapshot, resnet))
    assert card.name == "resnet50-s2-v0.1.1"
    assert card.bands == V011_BANDS


def test_unknown_version_in_config_is_refused(tmp_path, resnet):
    folder = write_checkpoint(tmp_path / "m", resnet, extra={"version": "v0.3.0"})
    with pytest.raises(ModelError, match=r"unknown version 'v0.3.0'.*v0.2.0"):
        ben_v2.card_from_folder(folder)


def test_vit_gets_img_size(tmp_path):
    # ViT position embeddings depend on img_size: strict loading proves it was passed.
    vit = make_timm("test_vit", image_size=128)
    folder = write_checkpoint(tmp_path / "vit-s2-v0.2.0", vit, arch="test_vit", image_size=128)
    card = ben_v2.card_from_folder(folder)
    assert card.patch_size == 128
    batch = torch.randn(2, 10, 128, 128)
    with torch.no_grad():
        expected = torch.sigmoid(vit(batch))
    torch.testing.assert_close(ben_v2.load(card, CPU).predict(batch), expected, rtol=1e-5, atol=1e-6)


def _rewrite_weights(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def test_renamed_key_fails_naming_it(tmp_path, resnet):
    folder = write_checkpoint(tmp_path / "renamed", resnet)
    _rewrite_weights(folder, lambda s: s.__setitem__(PREFIX + "fc.weight_renamed", s.pop(PREFIX + "fc.weight")))
    card = ben_v2.card_from_folder(folder)
    with pytest.raises(ModelError) as info:
        ben_v2.load(card, CPU)
    message = str(info.value)
    assert "missing keys: fc.weight" in message
    assert "unexpected keys: fc.weight_renamed" in message
    assert str(folder.resolve()) in message


def test_missing_key_fails_naming_it(tmp_path, resnet):
    folder = write_checkpoint(tmp_path / "missing", resnet)
    _rewrite_weights(folder, lambda s: s.pop(PREFIX + "fc.weight"))
    with pytest.raises(ModelError, match=r"missing keys: fc\.weight$"):
        ben_v2.load(ben_v2.card_from_folder(folder), CPU)


def test_key_without_prefix_is_unexpected(tmp_path, resnet):
    folder = write_checkpoint(tmp_path / "noprefix", resnet)
    _rewrite_weights(folder, lambda s: s.__setitem__("fc.bias", s.pop(PREFIX + "fc.bias")))
    with pytest.raises(ModelError, match=r"missing keys: fc\.bias; unexpected keys: fc\.bias"):
        ben_v2.load(ben_v2.card_from_folder(folder), CPU)


def test_weights_of_another_architecture_fail(tmp_path, resnet):
    folder = write_checkpoint(tmp_path / "wrong-arch", resnet, arch="test_convnext")
    with pytest.raises(ModelError, match=r"do not fit timm ConvNeXt.*missing keys: .*\(\d+ in all\)"):
        ben_v2.load(ben_v2.card_from_folder(folder), CPU)


def test_missing_weights_file(tmp_path, resnet):
    folder = write_checkpoint(tmp_path / "noweights", resnet)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"has no model\.safetensors"):
        ben_v2.load(ben_v2.card_from_folder(folder), CPU)


@pytest.mark.parametrize(("channels", "modality"), [(2, "s1"), (12, "all")])
def test_sentinel1_models_are_refused(tmp_path, channels, modality):
    model = make_timm(channels=channels)
    folder = write_checkpoint(tmp_path / f"resnet50-{modality}-v0.2.0", model, channels=channels)
    with pytest.raises(ModelError, match="takes Sentinel-1 VV/VH bands, which a Sentinel-2 tile does not have"):
        ben_v2.card_from_folder(folder)


def test_unknown_architecture(tmp_path, resnet):
    folder = write_checkpoint(tmp_path / "m", resnet, arch="no_such_net")
    with pytest.raises(ModelError, match=r"network_type='no_such_net' is not an architecture timm"):
        ben_v2.card_from_folder(folder)


def test_sidecar_card_overrides_derived_fields(tmp_path, resnet):
    folder = write_checkpoint(tmp_path / "resnet50-s2-v0.2.0", resnet)
    sidecar = folder.with_name(folder.name + ".card.json")
    sidecar.write_text(json.dumps({"name": "my-ben", "levels": ["L1C", "L2A"], "description": "mine"}))
    card = ben_v2.card_from_folder(folder)
    assert (card.name, card.levels, card.description) == ("my-ben", ("L1C", "L2A"), "mine")
    assert card.bands == V020_BANDS and card.path == str(folder.resolve())
    sidecar.write_text(json.dumps({"format": "onnx"}))
    with pytest.raises(ModelError, match=r"format must be 'ben-v2'"):
        ben_v2.card_from_folder(folder)


def test_card_with_wrong_band_count_is_refused(tmp_path, resnet):
    folder = write_checkpoint(tmp_path / "m", resnet)
    card = ben_v2.card_from_folder(folder)
    bad = type(card).from_dict({**card.to_dict(), "bands": ["B02", "B03", "B04"], "mean": [], "std": []})
    with pytest.raises(ModelError, match=r"lists 3 bands but .*config\.json says 10 channels"):
        ben_v2.load(bad, CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_predict_on_cuda_matches_cpu(tmp_path, resnet):
    card = ben_v2.card_from_folder(write_checkpoint(tmp_path / "m", resnet))
    batch = torch.randn(2, 10, 120, 120)
    on_cpu = ben_v2.load(card, CPU).predict(batch)
    on_gpu = ben_v2.load(card, torch.device("cuda")).predict(batch.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-3, atol=1e-4)


def test_card_path_that_is_a_file_says_a_folder_is_expected(tmp_path, resnet):
    card = ben_v2.card_from_folder(write_checkpoint(tmp_path / "resnet50-s2-v0.2.0", resnet))
    weights = Path(card.path) / "model.safetensors"
    moved = type(card).from_dict({**card.to_dict(), "path": str(weights)})
    with pytest.raises(ModelError, match=rf"BigEarthNet v2 checkpoint folder {weights} of model card '.*' is a file; "
                                         r"expected a folder with config\.json \+ model\.safetensors"):
        ben_v2.load(moved, CPU)
