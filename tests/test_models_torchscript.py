"""TorchScript models: scripted/traced tiny modules with sidecar cards; torch.save pickles refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from doubles import DENSE_CARD, TORCHSCRIPT_PATCH, Evil, TinyClassifier, TinySegmenter, save_scripted

from s2seg.core.errors import ModelError
from s2seg.core.models import torchscript_model
from s2seg.core.models.card import ModelCard

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
CPU = torch.device("cpu")
PATCH = TORCHSCRIPT_PATCH


def test_scripted_dense_model_with_sidecar(tmp_path):
    torch.manual_seed(0)
    net = TinySegmenter().eval()
    path = save_scripted(net, tmp_path / "seg.pt", DENSE_CARD)
    card = torchscript_model.card_from_file(path)
    assert (card.name, card.format, card.path) == ("seg", "torchscript", str(path.resolve()))
    assert card.bands == ("B04", "B03", "B02") and card.output_kind == "dense"
    model = torchscript_model.load(card, CPU)
    batch = torch.randn(3, 3, PATCH, PATCH)
    with torch.no_grad():
        expected = torch.softmax(net(batch), dim=1)
    result = model.predict(batch)
    assert result.dtype == torch.float32 and result.shape == (3, 2, PATCH, PATCH)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)


def test_traced_patch_classifier_with_sidecar_next_to_full_name(tmp_path):
    torch.manual_seed(0)
    net = TinyClassifier().eval()
    path = tmp_path / "cls.torchscript"
    torch.jit.trace(net, torch.zeros(1, 3, PATCH, PATCH)).save(str(path))
    card = {**DENSE_CARD, "name": "classifier", "output_kind": "patch", "activation": "sigmoid",
            "class_names": list("abcd"), "class_colours": ["#000000", "#111111", "#222222", "#333333"]}
    (tmp_path / "cls.torchscript.card.json").write_text(json.dumps(card))
    model = torchscript_model.load(torchscript_model.card_from_file(path), CPU)
    assert model.card.name == "classifier"
    batch = torch.randn(2, 3, PATCH, PATCH)
    with torch.no_grad():
        expected = torch.sigmoid(net(batch))
    torch.testing.assert_close(model.predict(batch), expected, rtol=1e-5, atol=1e-6)


def test_missing_sidecar_is_an_error_naming_the_file(tmp_path):
    path = save_scripted(TinySegmenter(), tmp_path / "seg.pt")
    with pytest.raises(ModelError, match=rf"TorchScript model {path} needs a sidecar card {tmp_path / 'seg.card.json'}"):
        torchscript_model.card_from_file(path)


def test_torch_save_pickle_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.pt"
    torch.save(Evil(marker), str(path))
    path.with_suffix(".card.json").write_text(json.dumps(DENSE_CARD))
    with pytest.raises(ModelError, match=r"evil\.pt was written with torch\.save .* refuses to unpickle it"):
        torchscript_model.card_from_file(path)
    # A hand-written card pointing at the pickle is refused by load() too.
    card = ModelCard.from_dict({**DENSE_CARD, "name": "evil", "format": "torchscript", "path": str(path)})
    with pytest.raises(ModelError, match=r"written with torch\.save"):
        torchscript_model.load(card, CPU)
    assert not marker.exists()


def test_whole_module_pickle_and_legacy_pickle_are_refused(tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save(TinySegmenter(), str(whole))
    with pytest.raises(ModelError, match=r"whole\.pt was written with torch\.save"):
        torchscript_model.check_torchscript_archive(whole)
    legacy = tmp_path / "legacy.pt"
    torch.save(TinySegmenter().state_dict(), str(legacy), _use_new_zipfile_serialization=False)
    with pytest.raises(ModelError, match=r"legacy\.pt is not a TorchScript archive \(not a zip file\)"):
        torchscript_model.check_torchscript_archive(legacy)


def test_sidecar_with_another_format_is_refused(tmp_path):
    path = save_scripted(TinySegmenter(), tmp_path / "seg.pt", {**DENSE_CARD, "format": "onnx"})
    with pytest.raises(ModelError, match=r"format must be 'torchscript'"):
        torchscript_model.card_from_file(path)


def test_card_that_does_not_fit_the_model_fails_at_load(tmp_path):
    card = {**DENSE_CARD, "bands": ["B04", "B03", "B02", "B08"]}
    path = save_scripted(TinySegmenter(), tmp_path / "seg.pt", card)
    with pytest.raises(ModelError, match=r"model 'seg' fails on a \(4, 16, 16\) patch as its card describes it: .*channels"):
        torchscript_model.load(torchscript_model.card_from_file(path), CPU)


def test_missing_model_file(tmp_path):
    card = torchscript_model.card_from_file(save_scripted(TinySegmenter(), tmp_path / "seg.pt", DENSE_CARD))
    Path(card.path).unlink()
    with pytest.raises(ModelError, match=r"TorchScript model file .*seg\.pt does not exist"):
        torchscript_model.load(card, CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_map_location_cuda(tmp_path):
    card = torchscript_model.card_from_file(save_scripted(TinySegmenter(), tmp_path / "seg.pt", DENSE_CARD))
    model = torchscript_model.load(card, torch.device("cuda"))
    batch = torch.randn(2, 3, PATCH, PATCH)
    on_gpu = model.predict(batch.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), torchscript_model.load(card, CPU).predict(batch), rtol=1e-3, atol=1e-4)


class TupleOutput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :2], x[:, :2]


def test_model_returning_a_tuple_is_refused_at_load(tmp_path):
    path = save_scripted(TupleOutput(), tmp_path / "pair.pt", DENSE_CARD)
    with pytest.raises(ModelError, match=r"model 'pair' returned tuple, expected one tensor"):
        torchscript_model.load(torchscript_model.card_from_file(path), CPU)


def test_broken_torchscript_archive(tmp_path):
    import zipfile

    path = tmp_path / "broken.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("broken/code/__torch__.py", "not torchscript")
        archive.writestr("broken/constants.pkl", b"")
    path.with_suffix(".card.json").write_text(json.dumps(DENSE_CARD))
    with pytest.raises(ModelError, match=rf"cannot load TorchScript model {path}: "):
        torchscript_model.load(torchscript_model.card_from_file(path), CPU)


def test_card_path_that_is_a_folder_says_so(tmp_path):
    card = torchscript_model.card_from_file(save_scripted(TinySegmenter(), tmp_path / "seg.pt", DENSE_CARD))
    folder = tmp_path / "weights"
    folder.mkdir()
    moved = ModelCard.from_dict({**card.to_dict(), "path": str(folder)})
    with pytest.raises(ModelError, match=rf"TorchScript model file {folder} is a folder; expected a TorchScript \.pt file"):
        torchscript_model.load(moved, CPU)


class RefusesBrightPatches(torch.nn.Module):
    """Fine on the all-zero load-time patch, raises from scripted code on real data."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.abs().max() > 0.5):
            raise ValueError("reflectance above 0.5: this model expects dark water only")
        return self.conv(x)


class WantsFourBands(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 4:
            raise ValueError("expected 4 bands")
        return x[:, :2]


def test_scripted_error_at_load_is_its_python_exception_without_tracebacks(tmp_path):
    path = save_scripted(WantsFourBands(), tmp_path / "four.pt", DENSE_CARD)
    with pytest.raises(ModelError) as info:
        torchscript_model.load(torchscript_model.card_from_file(path), CPU)
    assert str(info.value) == "model 'four' fails on a (3, 16, 16) patch as its card describes it: ValueError: expected 4 bands"


def test_scripted_error_in_predict_is_raised_as_its_python_exception(tmp_path):
    path = save_scripted(RefusesBrightPatches(), tmp_path / "dark.pt", DENSE_CARD)
    model = torchscript_model.load(torchscript_model.card_from_file(path), CPU)
    with pytest.raises(ValueError) as info:
        model.predict(torch.ones(1, 3, PATCH, PATCH))
    assert str(info.value) == "reflectance above 0.5: this model expects dark water only"
    assert isinstance(info.value.__cause__, torch.jit.Error)  # the interpreter's error, tracebacks and all, for debugging


def test_scripted_error_mid_run_reaches_the_user_as_one_line(small_tile, tmp_path):
    from s2seg.core.config import EngineConfig
    from s2seg.core.pipeline import segment

    path = save_scripted(RefusesBrightPatches(), tmp_path / "dark.pt", {**DENSE_CARD, "input_scale": "dn"})
    with pytest.raises(ModelError) as info:
        segment(small_tile, tmp_path / "out", model=path, config=EngineConfig(chunk_size=120, device="cpu"))
    message = str(info.value)
    assert "failed on chunk 1: ValueError: reflectance above 0.5: this model expects dark water only" in message
    assert "Traceback" not in message and "<--- HERE" not in message


def test_loading_tells_the_log_nothing_about_torchscript_deprecation(tmp_path):
    lines: list[str] = []
    path = save_scripted(TinySegmenter(), tmp_path / "seg.pt", DENSE_CARD)
    torchscript_model.load(torchscript_model.card_from_file(path), CPU, log=lines.append)
    assert lines == []
