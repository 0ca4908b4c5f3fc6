"""Model cards: validation messages, JSON round trip, partial sidecars, resolve_card."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from s2seg.core.errors import ModelError
from s2seg.core.models import DEFAULT_MODEL, resolve_card
from s2seg.core.models.card import ModelCard

VALID = {
    "name": "tiny",
    "format": "torchscript",
    "bands": ["B04", "B03", "B02"],
    "patch_size": 64,
    "class_names": ["land", "water"],
    "class_colours": ["#C8B48C", "#1E64C8"],
    "mean": [0.1, 0.1, 0.1],
    "std": [0.05, 0.05, 0.05],
    "input_scale": "reflectance",
}


def card_with(**changes) -> ModelCard:
    return ModelCard.from_dict({**VALID, **changes}, origin="test card")


def test_valid_card_and_derived_values():
    card = card_with(bands=["b4", "B3", "b02"])
    assert card.bands == ("B04", "B03", "B02")  # spellings normalised
    assert (card.num_classes, card.stride, card.scale_factor) == (2, 32, 1e-4)


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"bands": ["B04", "B99"]}, r"unknown Sentinel-2 band ids \['B99'\]"),
        ({"bands": ["VV", "VH", "B04"], "mean": [], "std": []}, r"unknown Sentinel-2 band ids \['VV', 'VH'\]"),
        ({"bands": ["B04", "B04", "B02"]}, r"bands contain duplicates"),
        ({"mean": [0.1, 0.1]}, r"mean has 2 values for 3 bands"),
        ({"std": [0.1, 0.1, 0.1, 0.1]}, r"std has 4 values for 3 bands"),
        ({"std": []}, r"give both mean and std, or neither"),
        ({"std": [0.1, 0.0, 0.1]}, r"std values must be positive"),
        ({"patch_size": 121}, r"patch_size must be an even number of pixels ≥ 12, got 121"),
        ({"patch_size": 8}, r"patch_size must be an even number"),
        ({"class_colours": ["#000000"]}, r"2 class names but 1 class colours"),
        ({"class_colours": ["#000000", "blue"]}, r"colour 'blue' is not of the form #RRGGBB"),
        ({"class_names": []}, r"class_names is empty"),
        ({"format": "keras"}, r"format must be one of builtin, ben-v2, torchscript, onnx, got 'keras'"),
        ({"output_kind": "pixel"}, r"output_kind must be one of patch, dense"),
        ({"activation": "relu"}, r"activation must be one of sigmoid, softmax, none"),
        ({"input_scale": "toa"}, r"input_scale must be one of dn, reflectance"),
        ({"resampling": "cubic"}, r"resampling must be one of nearest, bilinear"),
        ({"resolution": 25}, r"resolution must be a multiple of 10 m from 10 to 60 m .*got 25"),
        ({"resolution": 120}, r"resolution must be a multiple of 10 m from 10 to 60 m .*got 120"),
        ({"levels": ["L3"]}, r"levels must be a non-empty subset"),
    ],
)
def test_validation_errors_name_the_field(changes, pattern):
    with pytest.raises(ModelError, match=rf"test card: model card 'tiny': {pattern}"):
        card_with(**changes)


def test_unknown_and_missing_json_fields(tmp_path):
    path = tmp_path / "bad.card.json"
    path.write_text(json.dumps({**VALID, "colour": "red"}))
    with pytest.raises(ModelError, match=rf"model card {path}: unknown fields \['colour'\]"):
        ModelCard.load(path)
    path.write_text(json.dumps({k: v for k, v in VALID.items() if k != "bands"}))
    with pytest.raises(ModelError, match=r"missing required fields \['bands'\]"):
        ModelCard.load(path)


def test_unreadable_card_files(tmp_path):
    with pytest.raises(ModelError, match=r"cannot read model card .*nope\.json"):
        ModelCard.load(tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ModelError, match=rf"model card {broken} is not valid JSON"):
        ModelCard.load(broken)
    broken.write_text("[1, 2]")
    with pytest.raises(ModelError, match="must hold a JSON object"):
        ModelCard.load(broken)


def test_json_round_trip_and_relative_path(tmp_path):
    card = card_with(path="weights/tiny.pt", extra={"note": [1, 2]}, levels=["L2A"])
    path = tmp_path / "tiny.card.json"
    card.save(path)
    loaded = ModelCard.load(path)
    assert loaded.path == str((tmp_path / "weights" / "tiny.pt").resolve())  # relative to the card file
    assert loaded == ModelCard.from_dict({**card.to_dict(), "path": loaded.path})
    assert json.loads(path.read_text())["bands"] == ["B04", "B03", "B02"]


def test_partial_card_completed_by_defaults(tmp_path):
    path = tmp_path / "partial.card.json"
    path.write_text(json.dumps({"name": "override", "class_names": ["a", "b"]}))
    card = ModelCard.load(path, defaults={**VALID, "path": "/models/tiny.pt"})
    assert (card.name, card.class_names, card.bands, card.path) == ("override", ("a", "b"), ("B04", "B03", "B02"), "/models/tiny.pt")


# --- resolve_card -----------------------------------------------------------------------------
def test_resolve_card_by_name_and_instance():
    card = resolve_card(DEFAULT_MODEL)
    assert card.name == DEFAULT_MODEL
    assert resolve_card(card) is card


def test_resolve_card_file(tmp_path):
    path = tmp_path / "tiny.card.json"
    card_with().save(path)
    assert resolve_card(path) == card_with()
    assert resolve_card(str(path)).name == "tiny"


def test_resolve_ben_v2_folder(tmp_path):
    folder = tmp_path / "resnet-s2-v0.1.1"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"config": {"network_type": "test_resnet", "channels": 10, "classes": 19, "image_size": 120}}))
    model = timm.create_model("test_resnet", pretrained=False, num_classes=19, in_chans=10)
    save_file({f"model.vision_encoder.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    card = resolve_card(folder)
    assert (card.format, card.name, card.bands[3]) == ("ben-v2", "resnet-s2-v0.1.1", "B08")


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_resolve_torchscript_file_needs_its_sidecar(tmp_path):
    path = tmp_path / "net.pt"
    torch.jit.script(torch.nn.Conv2d(3, 2, 1)).save(str(path))
    with pytest.raises(ModelError, match="needs a sidecar card"):
        resolve_card(path)
    path.with_suffix(".card.json").write_text(json.dumps({k: v for k, v in VALID.items() if k not in ("name", "format")}))
    card = resolve_card(path)
    assert (card.name, card.format, card.path) == ("net", "torchscript", str(path.resolve()))


def test_resolve_unknown_spec(tmp_path):
    with pytest.raises(ModelError, match=rf"model 'no-such-model' is neither a known model name \(.*{DEFAULT_MODEL}.*\)"):
        resolve_card("no-such-model")
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"\x89HDF")
    with pytest.raises(ModelError, match=rf"cannot tell what kind of model {odd} is"):
        resolve_card(odd)


# --- field types (issue 9): every field checked up front, naming the field --------------------------
@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"class_names": [1, 2]}, r"class_names\[0\] must be a string, got 1 \(int\)"),
        ({"class_names": ["land", " "]}, r"class_names\[1\] is blank"),
        ({"class_names": "land"}, r"class_names must be a list of strings, got 'land'"),
        ({"bands": "B02", "mean": [], "std": []}, r"bands must be a list of Sentinel-2 band ids such as \[\"B04\", \"B03\", \"B02\"\], got 'B02'"),
        ({"bands": [4, 3, 2]}, r"bands\[0\] must be a band id string such as \"B04\", got 4"),
        ({"class_colours": ["#00000G", "#FFFFFF"]}, r"colour '#00000G' is not of the form #RRGGBB \(class_colours\[0\]\)"),
        ({"class_colours": ["C8B48C", "#1E64C8"]}, r"colour 'C8B48C' is not of the form #RRGGBB"),
        ({"class_colours": "#000000"}, r"class_colours must be a list of #RRGGBB colours, got '#000000'"),
        ({"patch_size": 64.0}, r"patch_size must be an even number of pixels ≥ 12, got 64\.0"),
        ({"patch_size": "64"}, r"patch_size must be an even number of pixels ≥ 12, got '64'"),
        ({"patch_size": True}, r"patch_size must be an even number of pixels ≥ 12, got True"),
        ({"resolution": 10.0}, r"resolution must be a multiple of 10 m .*got 10\.0"),
        ({"mean": ["0.1", 0.1, 0.1]}, r"mean\[0\] must be a finite number, got '0\.1'"),
        ({"std": [0.1, float("nan"), 0.1]}, r"std\[1\] must be a finite number, got nan"),
        ({"mean": 0.1}, r"mean must be a list of numbers, one per band, got 0\.1"),
        ({"activation": 1}, r"activation must be one of sigmoid, softmax, none, got 1"),
        ({"output_kind": None}, r"output_kind must be one of patch, dense, got None"),
        ({"levels": "L2A"}, r"levels must be a non-empty subset of \('L1C', 'L2A'\), got 'L2A'"),
        ({"path": 3}, r"path must be a string, got 3"),
        ({"description": ["a"]}, r"description must be a string, got \['a'\]"),
        ({"extra": [1]}, r"extra must be a JSON object, got \[1\]"),
    ],
)
def test_field_types_are_checked_up_front(changes, pattern):
    with pytest.raises(ModelError, match=rf"test card: model card 'tiny': {pattern}"):
        card_with(**changes)


def test_name_must_be_a_string():
    with pytest.raises(ModelError, match=r"test card: model card name must be a string, got 7"):
        card_with(name=7)


def test_every_card_field_has_a_check():
    from dataclasses import fields

    from s2seg.core.models.card import FIELD_CHECKS

    assert set(FIELD_CHECKS) == {f.name for f in fields(ModelCard)}


def test_card_file_with_integer_class_names_names_file_and_field(tmp_path):
    path = tmp_path / "ints.card.json"
    path.write_text(json.dumps({**VALID, "class_names": [0, 1]}))
    with pytest.raises(ModelError, match=rf"model card {path}: model card 'tiny': class_names\[0\] must be a string, got 0"):
        ModelCard.load(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_integer_class_names_stop_the_run_before_any_output(small_tile, tmp_path):
    """They used to pass, run every chunk and crash labelling the class raster, leaving .part files."""
    from doubles import DENSE_CARD, TinySegmenter, save_scripted

    from s2seg.core.config import EngineConfig
    from s2seg.core.pipeline import segment

    model = save_scripted(TinySegmenter(), tmp_path / "seg.pt", {**DENSE_CARD, "class_names": [1, 2]})
    out = tmp_path / "out"
    with pytest.raises(ModelError, match=r"seg\.card\.json: model card 'seg': class_names\[0\] must be a string, got 1"):
        segment(small_tile, out, model=model, config=EngineConfig(chunk_size=120, device="cpu"))
    assert not out.exists()


# --- encodings and file kinds ---------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_card_with_a_byte_order_mark_is_read_as_the_mark_says(tmp_path, encoding):
    path = tmp_path / "bom.card.json"
    text = json.dumps({**VALID, "description": "Forêt, Gewässer"}, ensure_ascii=False)
    # utf-16-be has no mark of its own: write one, as Windows editors do.
    path.write_bytes(("\ufeff" + text).encode(encoding) if encoding == "utf-16-be" else text.encode(encoding))
    card = ModelCard.load(path)
    assert card.description == "Forêt, Gewässer" and card == card_with(description="Forêt, Gewässer")


def test_card_in_another_encoding_is_refused_clearly(tmp_path):
    latin1 = tmp_path / "latin1.card.json"
    latin1.write_bytes(json.dumps({**VALID, "description": "Forêt"}, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(ModelError, match=rf"model card {latin1} is not UTF-8 JSON: byte 0xea at offset \d+ is not UTF-8; "
                                         r"save the file as UTF-8"):
        ModelCard.load(latin1)
    utf16 = tmp_path / "utf16.card.json"
    utf16.write_bytes(json.dumps(VALID).encode("utf-16-le"))  # no byte-order mark
    with pytest.raises(ModelError, match=rf"model card {utf16} is not UTF-8 JSON: it holds NUL bytes"):
        ModelCard.load(utf16)


def test_card_path_that_is_a_folder(tmp_path):
    folder = tmp_path / "cards.card.json"
    folder.mkdir()
    with pytest.raises(ModelError, match=rf"model card {folder} is a folder, not a JSON file"):
        ModelCard.load(folder)


def test_resolve_folder_without_config_says_it_is_a_folder(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    with pytest.raises(ModelError, match=rf"model {folder} is a folder without a config\.json; expected a card \.json, "
                                         r"a model folder with config\.json \+ model\.safetensors .*an \.onnx file or a "
                                         r"TorchScript \.pt file"):
        resolve_card(folder)
