"""Rough edges of the dialog and of qgis_process: option numbers for by-name enums, plain-text help in
``qgis_process help``, the tile picker taking files (.zip, a .SAFE's manifest) as well as folders, and the
Results Viewer entry titled with the tile."""
from __future__ import annotations

import json
from pathlib import Path

import processing
import pytest
from qgis.core import QgsApplication, QgsProcessingContext

from s2seg.algorithms.common import html_to_text


@pytest.fixture()
def enabled_plugin(qgis_process, tmp_path):
    plugin_path = tmp_path / "plugins"
    plugin_path.mkdir()
    (plugin_path / "s2seg").symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
    qgis_process("plugins", "enable", "s2seg", plugin_path=plugin_path, check=True)
    return plugin_path


def test_qgis_process_help_is_plain_text_and_option_numbers_run(qgis_process, enabled_plugin, small_tile, tmp_path):
    help_text = qgis_process("help", "s2seg:segmenttile", plugin_path=enabled_plugin, check=True).stdout
    assert "<p>" not in help_text and "<b>" not in help_text and "&" not in help_text
    assert "Overwrite existing outputs: replace the finished products" in help_text
    assert "- 0: builtin" in help_text  # what qgis_process offers for MODEL …
    out = tmp_path / "out"
    proc = qgis_process("--json", "run", "s2seg:segmenttile", "--", f"INPUT={small_tile}", "MODEL=0", "DEVICE=1",
                        "RESUME=2", f"OUTPUT_FOLDER={out}", plugin_path=enabled_plugin, check=True)  # … is accepted
    results = json.loads(proc.stdout)["results"]
    assert Path(results["CLASS"]).is_file()
    assert "builtin on cpu" in "\n".join(json.loads(proc.stdout)["log"]["info"])


def test_option_numbers_map_to_names(s2seg_provider):
    alg = QgsApplication.processingRegistry().createAlgorithmById("s2seg:segmenttile")
    context = QgsProcessingContext()
    named = alg.with_option_names({"MODEL": 0, "DEVICE": "1", "RESUME": "never", "CHUNK_SIZE": 7})
    assert named == {"MODEL": "builtin", "DEVICE": "cpu", "RESUME": "never", "CHUNK_SIZE": 7}
    assert alg.checkParameterValues({"INPUT": "/x", "MODEL": 0, "DEVICE": 1, "OUTPUT_FOLDER": "/tmp/o"}, context)[0]
    assert not alg.checkParameterValues({"INPUT": "/x", "DEVICE": 9, "OUTPUT_FOLDER": "/tmp/o"}, context)[0]
    assert alg.enum_string({"DEVICE": 2}, "DEVICE", context) == "cuda"


def test_html_to_text():
    assert html_to_text("<p>A <b>b</b> &amp; c</p><h3>Outputs</h3><p>x <code>y</code></p>") == \
        "A b & c\n\nOUTPUTS\n\nx y"


def test_tile_picked_as_a_file_inside_the_safe(s2seg_provider, small_tile, tmp_path):
    from s2seg.algorithms.segment_tile import tile_path

    manifest = small_tile / "MTD_MSIL2A.xml"
    assert manifest.is_file()
    results = processing.run("s2seg:segmenttile", {"INPUT": str(manifest), "DEVICE": "cpu",
                                                   "OUTPUT_FOLDER": str(tmp_path / "out")})
    assert Path(results["CLASS"]).is_file()
    band = next(small_tile.rglob("*_B04_10m.*"))
    assert tile_path(str(band)) == str(band.parent)
    assert tile_path(str(small_tile)) == str(small_tile)
    zipped = tmp_path / "t.zip"
    zipped.write_bytes(b"")
    assert tile_path(str(zipped)) == str(zipped)
