"""ONNX models: tiny torch nets exported with torch.onnx, Deepness-style metadata_props
written with the onnx package, run through onnxruntime."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from doubles import ONNX_BANDS, ONNX_PATCH, SEGMENTOR_META, classifier, export, segmentor

from s2seg.core.errors import ModelError
from s2seg.core.models import onnx_model
from s2seg.core.nomenclature import BIGEARTHNET19_COLOURS, BIGEARTHNET19_NAMES

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
CPU = torch.device("cpu")
BANDS = ONNX_BANDS
PATCH = ONNX_PATCH


@pytest.fixture(scope="module")
def dense_file(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    net = segmentor()
    return export(net, tmp_path_factory.mktemp("dense") / "seg.onnx", SEGMENTOR_META), net


def test_card_from_deepness_metadata(dense_file):
    path, _ = dense_file
    card = onnx_model.card_from_file(path)
    assert (card.name, card.format, card.path) == ("seg", "onnx", str(path.resolve()))
    assert card.bands == tuple(BANDS)
    assert (card.output_kind, card.activation, card.patch_size, card.resolution) == ("dense", "none", PATCH, 10)
    assert card.class_names == ("water", "forest", "urban")
    assert len(card.class_colours) == 3 and len(set(card.class_colours)) == 3
    assert card.mean == (500.0, 600.0, 700.0, 2000.0) and card.std == (400.0, 450.0, 500.0, 1200.0)
    assert card.extra["tiles_overlap"] == 10
    assert card.extra["onnx_metadata"]["model_type"] == "Segmentor"


def test_dense_output_equals_torch(dense_file):
    path, net = dense_file
    model = onnx_model.load(onnx_model.card_from_file(path), CPU)
    assert model.fixed_batch is None
    batch = torch.randn(5, 4, PATCH, PATCH)
    with torch.no_grad():
        expected = net(batch)
    result = model.predict(batch)
    assert result.dtype == torch.float32 and result.shape == (5, 3, PATCH, PATCH)
    torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-5)


def test_fixed_batch_classifier_is_split_and_padded(tmp_path):
    net = classifier()
    meta = {"model_type": "classifier", "class_names": ["a", "b", "c", "d", "e"], "s2seg_bands": BANDS, "s2seg_activation": "softmax"}
    path = export(net, tmp_path / "cls.onnx", meta, dynamic_batch=False, batch=4)
    card = onnx_model.card_from_file(path)
    # No tile_size in the metadata: the patch size comes from the fixed input shape.
    assert (card.output_kind, card.activation, card.patch_size) == ("patch", "softmax", PATCH)
    model = onnx_model.load(card, CPU)
    assert model.fixed_batch == 4
    batch = torch.randn(6, 4, PATCH, PATCH)  # one full batch of 4, one padded batch of 2
    with torch.no_grad():
        expected = torch.softmax(net(batch), dim=1)
    torch.testing.assert_close(model.predict(batch), expected, rtol=1e-4, atol=1e-5)


def test_output_kind_from_output_rank_without_model_type(tmp_path):
    meta = {k: v for k, v in SEGMENTOR_META.items() if k != "model_type"}
    card = onnx_model.card_from_file(export(segmentor(), tmp_path / "m.onnx", meta))
    assert card.output_kind == "dense"


def test_bigearthnet_class_names_get_bigearthnet_colours(tmp_path):
    meta = {"model_type": "classifier", "class_names": list(BIGEARTHNET19_NAMES), "s2seg_bands": BANDS, "tile_size": PATCH}
    card = onnx_model.card_from_file(export(classifier(19), tmp_path / "ben.onnx", meta))
    assert card.class_colours == BIGEARTHNET19_COLOURS


def test_missing_bands_require_a_sidecar_card(tmp_path):
    meta = {k: v for k, v in SEGMENTOR_META.items() if k != "s2seg_bands"}
    path = export(segmentor(), tmp_path / "plain.onnx", meta)
    with pytest.raises(ModelError) as info:
        onnx_model.card_from_file(path)
    message = str(info.value)
    assert f"ONNX model {path.resolve()} does not say its bands" in message
    assert "sidecar card is required" in message and str(tmp_path / "plain.card.json") in message
    assert '"bands": ["B04", "B03", "B02", "B08"]' in message


def test_sidecar_card_completes_and_overrides_metadata(tmp_path):
    meta = {k: v for k, v in SEGMENTOR_META.items() if k != "s2seg_bands"}
    path = export(segmentor(), tmp_path / "plain.onnx", meta)
    (tmp_path / "plain.card.json").write_text(json.dumps({
        "name": "landcover", "bands": ["B8A", "B11", "B12", "B05"], "class_names": ["w", "f", "u"],
        "input_scale": "reflectance", "mean": [], "std": [],
    }))
    card = onnx_model.card_from_file(path)
    assert (card.name, card.bands, card.input_scale) == ("landcover", ("B8A", "B11", "B12", "B05"), "reflectance")
    assert card.class_names == ("w", "f", "u") and len(card.class_colours) == 3
    assert (card.mean, card.std) == ((), ())
    assert card.output_kind == "dense" and card.path == str(path.resolve())  # still from the file
    assert onnx_model.load(card, CPU).predict(torch.zeros(1, 4, PATCH, PATCH)).shape == (1, 3, PATCH, PATCH)


def test_sidecar_with_another_format_is_refused(dense_file, tmp_path):
    path, _ = dense_file
    copy = tmp_path / "seg.onnx"
    copy.write_bytes(path.read_bytes())
    (tmp_path / "seg.onnx.card.json").write_text(json.dumps({"format": "torchscript"}))
    with pytest.raises(ModelError, match=r"format must be 'onnx'"):
        onnx_model.card_from_file(copy)


def test_card_that_does_not_fit_the_model_fails_at_load(dense_file):
    path, _ = dense_file
    card = onnx_model.card_from_file(path)
    three_bands = type(card).from_dict({**card.to_dict(), "bands": ["B04", "B03", "B02"], "mean": [], "std": []})
    with pytest.raises(ModelError, match=r"takes 4 channels but its card 'seg' lists 3 bands"):
        onnx_model.load(three_bands, CPU)
    two_classes = type(card).from_dict({**card.to_dict(), "class_names": ["a", "b"], "class_colours": ["#000000", "#FFFFFF"]})
    with pytest.raises(ModelError, match=r"model 'seg' returned shape \(1, 3, 32, 32\), expected \(1, 2, 32, 32\)"):
        onnx_model.load(two_classes, CPU)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"resolution": 50}, r"resolution 50 cm/px is 0.5 m; s2seg runs models at 10, 20 … 60 m"),
        ({"model_type": "Detector"}, r"model_type 'Detector' is not supported"),
        ({"class_names": "water"}, r"class_names must be a JSON object or list"),
    ],
)
def test_unsupported_metadata(tmp_path, change, pattern):
    path = export(segmentor(), tmp_path / "m.onnx", {**SEGMENTOR_META, **change})
    with pytest.raises(ModelError, match=pattern):
        onnx_model.card_from_file(path)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelError, match=rf"cannot open ONNX model {path}"):
        onnx_model.card_from_file(path)


def test_cuda_request_falls_back_to_cpu_provider_when_onnxruntime_lacks_cuda():
    import onnxruntime

    providers = onnx_model.providers_for(torch.device("cuda"))
    assert providers[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in providers) == ("CUDAExecutionProvider" in onnxruntime.get_available_providers())


def test_card_path_that_is_a_folder_says_so(dense_file, tmp_path):
    path, _ = dense_file
    card = onnx_model.card_from_file(path)
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    moved = type(card).from_dict({**card.to_dict(), "path": str(folder)})
    with pytest.raises(ModelError, match=rf"ONNX model file {folder} of model card 'seg' is a folder; expected an \.onnx file"):
        onnx_model.load(moved, CPU)


# --- notices go to the run's log (issue 18), not to logging or stderr -------------------------------
def test_cuda_request_without_onnxruntime_gpu_is_said_in_the_run_log(monkeypatch, caplog):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    lines: list[str] = []
    assert onnx_model.providers_for(torch.device("cuda"), lines.append) == ["CPUExecutionProvider"]
    assert lines == ["onnxruntime has no CUDA support installed (onnxruntime-gpu): the ONNX model runs on the CPU"]
    assert not caplog.records
    with pytest.warns(RuntimeWarning, match=r"onnxruntime has no CUDA support installed"):  # no log: a warning
        onnx_model.providers_for(torch.device("cuda"))


def test_provider_fallback_at_session_creation_is_said_in_the_run_log(dense_file, monkeypatch, caplog, capfd):
    """onnxruntime-gpu that cannot start CUDA falls back to the CPU: say so through ``log``, with onnxruntime's
    own warning, and print nothing to stderr."""
    import onnxruntime

    from s2seg.core.models import load_model

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has CUDA: the fallback cannot be provoked")
    path, _ = dense_file
    # onnxruntime offers CUDA but the session cannot start it, as when the CUDA libraries are missing.
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnx_model, "smoke_test", lambda model: None)  # its tensors would go to a missing GPU
    lines: list[str] = []
    model = load_model(path, torch.device("cuda"), log=lines.append)
    assert model.session.get_providers() == ["CPUExecutionProvider"]
    assert any(line.startswith("onnxruntime: Specified provider 'CUDAExecutionProvider' is not in available provider names")
               for line in lines), lines
    assert lines[-1] == ("onnxruntime could not start CUDAExecutionProvider for seg.onnx (are the CUDA and cuDNN libraries "
                         "onnxruntime-gpu needs installed?): the ONNX model runs on the CPU")
    assert not caplog.records
    assert capfd.readouterr().err == ""


def test_load_model_on_cpu_has_nothing_to_say(dense_file, capfd):
    from s2seg.core.models import load_model

    lines: list[str] = []
    model = load_model(dense_file[0], "cpu", log=lines.append)
    assert model.predict(torch.zeros(1, 4, PATCH, PATCH)).shape == (1, 3, PATCH, PATCH)
    assert lines == [] and capfd.readouterr().err == ""


def test_sessions_share_an_arena_grown_by_what_is_asked_and_plan_no_memory_pattern(dense_file):
    """Peak memory (issue 23): every session opts into the process's shared CPU arena, registered once with
    the same-as-requested extension (not powers of two), and runs without a memory pattern; two sessions
    of one process both use it, and their outputs are the model's."""
    path, net = dense_file
    card = onnx_model.card_from_file(path)
    models = [onnx_model.load(card, CPU) for _ in range(2)]
    assert onnx_model._shared_arena is True
    for model in models:
        options = model.session.get_session_options()
        assert options.get_session_config_entry("session.use_env_allocators") == "1"
        assert options.enable_mem_pattern is False
    x = torch.rand(3, len(BANDS), PATCH, PATCH) * 1000
    with torch.no_grad():
        expected = net(x)
    for model in models:
        torch.testing.assert_close(model.predict(x), expected, rtol=1e-4, atol=1e-4)
