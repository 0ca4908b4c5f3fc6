"""The QGIS side of the model zoo: the Model list shows the BigEarthNet v2 models with their download
size, and the algorithm downloads a model with the feedback's progress and Cancel (emulated Hub)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from qgis.core import QgsNetworkAccessManager, QgsProcessingException, QgsProcessingFeedback
from qgis.PyQt.QtNetwork import QNetworkProxy

from doubles import make_timm, write_checkpoint
from hub_server import FakeHub

from s2seg.algorithms.common import apply_qgis_proxy, model_names, model_spec
from s2seg.algorithms.segment_tile import SegmentTileAlgorithm
from s2seg.core.models import zoo

from plugin_feedback import CancelAtFirstProgress, RecordingFeedback

class CancelRecording(RecordingFeedback):
    """Records what it is told, and presses Cancel at the first progress report."""

    def setProgress(self, progress: float) -> None:  # noqa: N802 - QGIS API
        super().setProgress(progress)
        if progress > 0:
            self.cancel()


ENTRY = zoo.ZooEntry("ben-test_resnet-s2", "test_resnet", "v0.2.0", "BigEarthNet v2 test ResNet", 1)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv(zoo.MODEL_DIR_ENV, str(tmp_path / "imported"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(zoo.CATALOGUE, ENTRY.name, ENTRY)
    folder = write_checkpoint(tmp_path / "ckpt", make_timm())
    with FakeHub() as server:
        server.add_commit(ENTRY.repo_id, {name: (folder / name).read_bytes() for name in zoo.FILES})
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


def test_model_list_shows_downloadable_models_with_size(qgis_app):
    names = model_names()
    assert "BigEarthNet v2 ResNet-50 — download 95 MB" in names
    assert model_spec("BigEarthNet v2 ResNet-50 — download 95 MB", "") == "ben-resnet50-s2"
    alg = SegmentTileAlgorithm()
    alg.initAlgorithm()
    assert alg.with_option_names({"MODEL": "ben-resnet50-s2"})["MODEL"] == "BigEarthNet v2 ResNet-50 — download 95 MB"


def test_download_in_the_algorithm_cancels_then_completes(hub):
    alg = SegmentTileAlgorithm()
    with pytest.raises(QgsProcessingException, match="download of ben-test_resnet-s2 cancelled"):
        alg.download_model(ENTRY.name, CancelAtFirstProgress())
    assert zoo.cached_folder(ENTRY) is None
    feedback = RecordingFeedback()
    alg.download_model(ENTRY.name, feedback)
    assert zoo.cached_folder(ENTRY) is not None and 100.0 in feedback.progress_values
    assert any("Downloading ben-test_resnet-s2" in line for line in feedback.infos)
    requests = len(hub.requests)
    alg.download_model(ENTRY.name, QgsProcessingFeedback())  # cached: nothing asked of the Hub
    assert len(hub.requests) == requests


def test_qgis_proxy_reaches_the_hub_client(monkeypatch):
    for key in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"):
        # setenv first: a plain delenv of an absent variable records nothing, and the proxy set below
        # would outlive the test (every later download in the session going to proxy.example).
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    manager = QgsNetworkAccessManager.instance()
    previous = manager.fallbackProxy(), manager.excludeList(), manager.noProxyList()
    try:
        manager.setFallbackProxyAndExcludes(QNetworkProxy(QNetworkProxy.HttpProxy, "proxy.example", 3128, "me", "p@ss"),
                                            ["127.0.0.1"], ["localhost"])
        apply_qgis_proxy()
        assert os.environ["HTTPS_PROXY"] == "http://me:p%40ss@proxy.example:3128"
        assert os.environ["NO_PROXY"] == "127.0.0.1,localhost"
    finally:
        manager.setFallbackProxyAndExcludes(*previous)


def test_algorithm_downloads_the_picked_model_then_segments(hub, small_tile, tmp_path):
    """The whole algorithm with the model picked from the list: Cancel during the download stops the run
    and leaves no output folder; the next run downloads it and segments with it."""
    from qgis.core import QgsProcessingContext

    alg = SegmentTileAlgorithm()
    alg.initAlgorithm()  # the Model list now holds the test entry
    params = {"INPUT": str(small_tile), "MODEL": ENTRY.choice, "OUTPUT_FOLDER": str(tmp_path / "out")}
    context = QgsProcessingContext()
    cancelling = CancelRecording()
    results, ok = alg.run(params, context, cancelling)
    assert not ok and "download of ben-test_resnet-s2 cancelled" in " ".join(cancelling.errors)
    assert not (tmp_path / "out").exists() and zoo.cached_folder(ENTRY) is None
    feedback = RecordingFeedback()
    results, ok = alg.run(params, context, feedback)
    assert ok, feedback.errors
    assert any("Downloading ben-test_resnet-s2" in line for line in feedback.infos)
    assert Path(results["CLASS"]).is_file()
    report = json.loads(next((tmp_path / "out").glob("*_report.json")).read_text())
    assert report["model"]["name"] == ENTRY.name and report["model"]["extra"]["hub"]["commit"] == hub.repos[ENTRY.repo_id].refs["main"]
