"""The model zoo against an emulated Hugging Face Hub (tests/hub_server.py, 127.0.0.1): first
download, cache hit without network, resumed transfer, corrupt file refused, offline error,
revision pinning, Sentinel-1 models refused, config/card disagreement, import for air-gapped
machines, the CLI, and the same products as the checkpoint given as a folder."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio

from doubles import make_timm, write_checkpoint
from hub_server import FakeHub

from s2seg.core import cli
from s2seg.core.errors import Cancelled, ModelError
from s2seg.core.models import resolve_card, zoo

NAME = "ben-test_resnet-s2"
ENTRY = zoo.ZooEntry(NAME, "test_resnet", "v0.2.0", "BigEarthNet v2 test ResNet", 1)
REPO = ENTRY.repo_id


#: config.json as the published checkpoints have it: ConfigILM's ILMConfiguration fields, flat (configilm 0.7,
#: configilm/ConfigILM.py); network_type is ILMType.IMAGE_CLASSIFICATION, an int enum.
PUBLISHED_KEYS = {"hf_model_name": None, "class_names": None, "network_type": 0, "visual_features_out": 512,
                  "drop_rate": 0.15, "drop_path_rate": None, "load_pretrained_timm_if_available": False}


def checkpoint_files(folder: Path, seed: int = 0, **config) -> dict[str, bytes]:
    """The two files of a reBEN checkpoint of timm's small test_resnet (random weights, ``seed``), its
    config.json flat with ``timm_model_name`` as published."""
    import torch

    model = make_timm()
    if seed:
        torch.manual_seed(seed)
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor))
    write_checkpoint(folder, model, nested=False, arch_key="timm_model_name", extra=PUBLISHED_KEYS, **config)
    return {name: (folder / name).read_bytes() for name in zoo.FILES}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    return checkpoint_files(tmp_path_factory.mktemp("ckpt") / "ckpt")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private Hugging Face home and s2seg model folder; the test entry in the catalogue."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv(zoo.MODEL_DIR_ENV, str(tmp_path / "imported"))
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(zoo.CATALOGUE, NAME, ENTRY)
    return tmp_path


@pytest.fixture
def hub(env, files, monkeypatch):
    with FakeHub() as server:
        server.add_commit(REPO, files)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_catalogue_names_repositories_and_sizes():
    archs = ("resnet50", "resnet101", "convnextv2_base", "vit_base_patch8_224", "mobilevit_s", "mixer_b16_224",
             "convmixer_768_32")
    for arch in archs:
        assert zoo.CATALOGUE[f"ben-{arch}-s2"].repo_id == f"BIFOLD-BigEarthNetv2-0/{arch}-s2-v0.2.0"
        assert zoo.CATALOGUE[f"ben-{arch}-s2-v0.1.1"].repo_id == f"BIFOLD-BigEarthNetv2-0/{arch}-s2-v0.1.1"
    assert zoo.CATALOGUE["ben-resnet50-s2"].choice == "BigEarthNet v2 ResNet-50 — download 95 MB"
    assert zoo.name_for_choice("BigEarthNet v2 ResNet-50 — download 95 MB") == "ben-resnet50-s2"
    assert zoo.lookup("ben-resnet50-s2@abc") == (zoo.CATALOGUE["ben-resnet50-s2"], "abc")
    assert zoo.lookup("BIFOLD-BigEarthNetv2-0/resnet50-s2-v0.1.1")[0].name == "ben-resnet50-s2-v0.1.1"
    assert zoo.lookup("builtin") is None


def test_first_download_then_cache_hit_without_network(hub, files, env):
    card = resolve_card(NAME)
    assert card.name == NAME and card.format == "ben-v2"
    commit = hub.repos[REPO].refs["main"]
    folder = Path(card.path)
    assert folder == env / "hf" / "hub" / "models--BIFOLD-BigEarthNetv2-0--test_resnet-s2-v0.2.0" / "snapshots" / commit
    assert card.extra["hub"] == {"repo": REPO, "revision": "main", "commit": commit,
                                 "sha256": {name: sha256(data) for name, data in files.items()}}
    assert zoo.state(ENTRY) == ("cached", sum(len(d) for d in files.values()))
    assert len(hub.transfers()) == 1

    hub.stop()  # no network from here on
    again = resolve_card(NAME)
    assert again == card


def test_interrupted_transfer_resumes_where_it_stopped(hub, files, monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub resumes from the last whole chunk it wrote (10 MB); this checkpoint is 1.5 MB.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)
    weights = files["model.safetensors"]
    hub.drop_once.add(sha256(weights))
    card = resolve_card(NAME)
    assert (Path(card.path) / "model.safetensors").read_bytes() == weights
    transfers = hub.transfers()
    assert len(transfers) == 2
    assert "range" not in transfers[0][1]
    resumed_at = int(transfers[1][1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(weights) // 2


def test_corrupt_download_is_refused_and_removed(hub, files):
    hub.corrupt.add(sha256(files["model.safetensors"]))
    with pytest.raises(ModelError, match=rf"model.safetensors: sha256 is [0-9a-f]{{64}} but the Hub published "
                                         rf"{sha256(files['model.safetensors'])}; the file is corrupt"):
        resolve_card(NAME)
    assert zoo.cached_folder(ENTRY) is None
    hub.corrupt.clear()
    assert resolve_card(NAME).extra["hub"]["sha256"]["model.safetensors"] == sha256(files["model.safetensors"])


def test_offline_without_copy_says_how_to_get_it(hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(zoo.ModelNotAvailable, match=r"HF_HUB_OFFLINE is set.*download ben-test_resnet-s2 once where "
                                                    r"the Hub can be reached.*register it as ben-test_resnet-s2"):
        resolve_card(NAME)
    assert hub.requests == []
    assert cli.main(["segment", "T", "O", "--model", NAME]) == 1
    assert re.search(r"HF_HUB_OFFLINE is set.*; with internet access run `s2seg models --download NAME`; without, "
                     r"copy the folder over and run `s2seg models --import DIR --name NAME`$", capsys.readouterr().err)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.stop()  # unreachable: huggingface_hub's own error, and the same advice
    with pytest.raises(zoo.ModelNotAvailable, match=r"cannot download model ben-test_resnet-s2 .*Connect.*"
                                                    r"download ben-test_resnet-s2 once"):
        resolve_card(NAME)


def test_revision_pins_a_commit(hub, files, tmp_path):
    old = hub.repos[REPO].refs["main"]
    newer = checkpoint_files(tmp_path / "newer", seed=1)
    new = hub.add_commit(REPO, newer)
    assert resolve_card(NAME).extra["hub"]["commit"] == new
    pinned = resolve_card(f"{NAME}@{old}")
    assert pinned.extra["hub"]["commit"] == old and pinned.extra["hub"]["revision"] == old
    assert (Path(pinned.path) / "model.safetensors").read_bytes() == files["model.safetensors"]
    with pytest.raises(ModelError, match=r"revision no-such-branch.*RevisionNotFoundError"):
        resolve_card(f"{NAME}@no-such-branch")


@pytest.mark.parametrize("spec", ["ben-resnet50-s1", "ben-resnet50-all", "BIFOLD-BigEarthNetv2-0/resnet50-s1-v0.2.0",
                                  "BIFOLD-BigEarthNetv2-0/convnextv2_base-all-v0.1.1"])
def test_sentinel1_models_are_refused_with_the_reason(hub, spec):
    with pytest.raises(ModelError, match=r"Sentinel-1 .*a Sentinel-2 tile has no Sentinel-1 bands"):
        resolve_card(spec)
    assert hub.requests == []


def test_config_that_disagrees_with_the_card_is_refused(env, tmp_path, monkeypatch):
    with FakeHub() as server:
        server.add_commit(REPO, checkpoint_files(tmp_path / "odd", image_size=128))
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        with pytest.raises(ModelError, match=r"config.json: image_size is 128 but the catalogue entry "
                                             r"'ben-test_resnet-s2' .* says 120"):
            resolve_card(NAME)


def test_import_for_machines_without_internet(env, files, tmp_path, monkeypatch):
    source = tmp_path / "copied"
    source.mkdir()
    for name, data in files.items():
        (source / name).write_bytes(data)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["models", "--import", str(source), "--name", NAME]) == 0
    card = resolve_card(NAME)
    assert card.extra["hub"]["imported_from"] == str(source.resolve())
    assert card.extra["hub"]["sha256"]["model.safetensors"] == sha256(files["model.safetensors"])
    weights = Path(card.path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelError, match=r"model.safetensors: sha256 is .* recorded .* at import"):
        resolve_card(NAME)


def test_import_refuses_a_folder_of_another_model(env, tmp_path):
    source = tmp_path / "resnet50-s2-v0.1.1"
    checkpoint_files(source)
    with pytest.raises(ModelError, match=r"version is 'v0.1.1' but the catalogue entry 'ben-test_resnet-s2'"):
        zoo.import_folder(source, NAME)


def test_cli_lists_downloads_and_shows_state(hub, capsys):
    assert cli.main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "ben-resnet50-s2" in listing and "95 MB" in listing
    line = next(line for line in listing.splitlines() if line.startswith(NAME))
    assert "not downloaded" in line
    assert cli.main(["models", "--download", NAME]) == 0
    out, err = capsys.readouterr()
    assert hub.repos[REPO].refs["main"] in out
    assert "model.safetensors" in err  # the tqdm bar
    cli.main(["models"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(NAME))
    assert "cached" in line and "not downloaded" not in line


def test_named_model_gives_the_same_products_as_the_folder(hub, files, tmp_path, capsys):
    """The folder through the engine, the name through `s2seg segment --model NAME --revision COMMIT` (which
    downloads it first): the same products, and the report names commit and hashes."""
    from s2seg.core.pipeline import segment
    from s2seg.core.report import report_name
    from s2seg.core.sample import write_sample_tile

    old = hub.repos[REPO].refs["main"]
    hub.add_commit(REPO, checkpoint_files(tmp_path / "newer", seed=1))  # main moves on; the pin keeps `old`
    tile = write_sample_tile(tmp_path / "tile", size=240, seed=3)
    folder = tmp_path / "resnet50-s2-v0.2.0"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    by_folder = segment(tile, tmp_path / "by-folder", model=str(folder))
    out = tmp_path / "by-name"
    assert cli.main(["segment", str(tile), str(out), "--model", NAME, "--revision", old, "--mask", "none"]) == 0
    assert "model.safetensors" in capsys.readouterr().err  # the download's progress bar
    report = json.loads((out / report_name(by_folder.tile_name)).read_text())
    products = {key: path for key, path in report["products"].items() if key != "preview"}
    assert products.keys() == by_folder.products.keys()
    for key, path in by_folder.products.items():
        with rasterio.open(path) as a, rasterio.open(products[key]) as b:
            np.testing.assert_array_equal(a.read(), b.read())
    assert report["model"]["name"] == NAME
    assert report["model"]["extra"]["hub"] == {"repo": REPO, "revision": old, "commit": old,
                                               "sha256": {name: sha256(data) for name, data in files.items()}}


def test_download_progress_and_cancel(hub, files):
    seen = []
    with pytest.raises(Cancelled, match="download of ben-test_resnet-s2 cancelled"):
        zoo.download(ENTRY, progress=lambda *a: seen.append(a), cancel=lambda: bool(seen))
    assert zoo.cached_folder(ENTRY) is None
    folder = zoo.download(ENTRY, progress=lambda *a: seen.append(a))
    assert seen[-1][1:] == (len(files["model.safetensors"]), len(files["model.safetensors"]))
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]


@pytest.mark.parametrize("command", ["segment", "batch"])
def test_revision_option_pins_the_model_in_any_order(command):
    parser = cli._parser()
    for argv in (["--model", NAME, "--revision", "abc"], ["--revision", "abc", "--model", NAME]):
        assert parser.parse_args([command, "T", "O", *argv]).model == f"{NAME}@abc"
    assert parser.parse_args([command, "T", "O", "--model", NAME]).model == NAME
    with pytest.raises(SystemExit):
        parser.parse_args([command, "T", "O", "--model", f"{NAME}@x", "--revision", "abc"])


def test_model_lists_need_neither_torch_nor_huggingface_hub_to_import():
    import subprocess
    import sys

    code = ("import sys, s2seg.core.models.zoo as z; z.lookup('ben-resnet50-s2'); "
            "print(sorted(m for m in ('torch', 'huggingface_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ctrl_c_cancels_a_command_line_download(hub, monkeypatch, capsys):
    import os
    import signal

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)  # several progress steps for 1.5 MB
    handler = signal.getsignal(signal.SIGINT)  # Python's own, or SIG_IGN where the test run was started in the background
    update = cli._DownloadBars.update

    def press_ctrl_c(bars, *args):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C during the transfer
        update(bars, *args)

    monkeypatch.setattr(cli._DownloadBars, "update", press_ctrl_c)
    assert cli.main(["models", "--download", NAME]) == 130
    assert "download of ben-test_resnet-s2 cancelled" in capsys.readouterr().err
    assert zoo.cached_folder(ENTRY) is None
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C restored to what it was


def test_without_huggingface_hub_the_error_says_what_is_missing(env, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` raises ImportError
    with pytest.raises(ModelError, match=r"models by name need the huggingface_hub package"):
        resolve_card(NAME)
