"""Settings ▸ Options ▸ S2Seg and the Plugins ▸ S2Seg menu, in a GUI-enabled QGIS (offscreen) in a
subprocess with a throw-away profile: the page saves the settings, a chosen environment goes on sys.path
after QGIS's own packages, the plugin applies it at load, and initGui/unload add and remove the menu
entries and the options page."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import s2seg

PACKAGE_PARENT = str(Path(s2seg.__file__).parent.parent)  # not resolved: s2seg may be a link

SCRIPT = r'''
import sys
from pathlib import Path
from unittest import mock
from qgis.core import QgsApplication
app = QgsApplication([], True); app.initQgis()
from s2seg.s2seg_plugin import settings
from s2seg.s2seg_plugin.options_page import S2SegOptionsFactory
env = Path(sys.argv[1]); site = env / "lib" / "python3.11" / "site-packages"; site.mkdir(parents=True)
page = S2SegOptionsFactory().createWidget(None)
assert page.values() == settings.PluginSettings(), page.values()
page.environment.setFilePath(str(env)); page.device.setCurrentText("cpu"); page.output_folder.setFilePath("/data/out")
page.apply()
stored = settings.load()
assert stored == settings.PluginSettings(environment=str(env), default_device="cpu", default_output_folder="/data/out"), stored
assert sys.path[-1] == str(site), sys.path[-3:]
sys.path.remove(str(site))
from s2seg.algorithms.segment_tile import SegmentTileAlgorithm
alg = SegmentTileAlgorithm(); alg.initAlgorithm({})   # the dialogs propose the stored defaults
assert alg.parameterDefinition("DEVICE").defaultValue() == "cpu"
assert alg.parameterDefinition("OUTPUT_FOLDER").defaultValue() == "/data/out"
import s2seg
plugin = s2seg.classFactory(None)        # load: the stored environment is applied, after QGIS's packages
assert sys.path[-1] == str(site), sys.path[-3:]
from qgis.PyQt.QtWidgets import QMainWindow
window = QMainWindow()
iface = mock.MagicMock()
iface.mainWindow.return_value = window
plugin = s2seg.classFactory(iface); plugin.initGui()
menu = [c.args[1].text() for c in iface.addPluginToMenu.call_args_list]
assert menu == ["Install dependencies…", "Diagnostics and self-test…"], menu
assert iface.registerOptionsWidgetFactory.call_count == 1
plugin.unload()
assert iface.removePluginMenu.call_count == 2 and iface.unregisterOptionsWidgetFactory.call_count == 1
print("OK")
'''


def test_options_page_and_menu(tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QGIS_CUSTOM_CONFIG_PATH": str(tmp_path / "profile"),
           "PYTHONPATH": os.pathsep.join(p for p in (PACKAGE_PARENT, os.environ.get("PYTHONPATH", ""),
                                                     "/usr/share/qgis/python/plugins") if p)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "env")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr
