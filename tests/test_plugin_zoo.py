"""The QGIS side of the model zoo: the Model list shows the BigEarthNet v2 models with their download
size, and the algorithm downloads a model with the feedback's progress and Cancel (emulated Hub)."""
from __future__ import annotations

import hashlib
import os

import pytest
from qgis.core import QgsNetworkAccessManager, QgsProcessingException, QgsProcessingFeedback
from qgis.PyQt.QtNetwork import QNetworkProxy

from doubles import make_timm, write_checkpoint
from hub_server import FakeHub

from s2seg.algorithms.common import apply_qgis_proxy, model_names, model_spec
from s2seg.algorithms.segment_tile import SegmentTileAlgorithm
from s2seg.core.models import zoo

from plugin_feedback import CancelAtFirstProgress, RecordingFeedback

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
        monkeypatch.delenv(key, raising=False)
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
