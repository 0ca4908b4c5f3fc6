"""QGIS start-up script for tools/screenshot_qgis.sh: run "Segment Sentinel-2 tile" the way a user does,
then grab the screen.

Runs inside QGIS desktop (``qgis --code tools/screenshot_qgis.py``) with the s2seg plugin installed
in a throw-away profile. Steps, each on the Qt event loop so the GUI stays live:

1. check the plugin loaded, show the Processing Toolbox filtered to the algorithm;
2. open the algorithm's own dialog with the sample tile and press Run (background task, as a user);
3. once Processing has loaded the styled layers (group named after the tile), close the dialog,
   zoom to the tile, expand the group and select the algorithm in the Toolbox;
4. grab the whole screen to $S2SEG_SHOT_PNG and quit.

Configuration comes from the environment (set by the shell script): S2SEG_SHOT_TILE (input),
S2SEG_SHOT_OUTDIR (output folder), S2SEG_SHOT_PNG (screenshot), S2SEG_SHOT_STATUS (a file that
receives "ok" or the error, so the shell script can tell success from a hang or crash).
"""
from __future__ import annotations

import os
import time
import traceback

from qgis.core import QgsApplication, QgsLayerTreeGroup, QgsLayerTreeLayer, QgsProject
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtWidgets import QApplication
from qgis.utils import iface, plugins

ALG_ID = "s2seg:segmenttile"
TILE = os.environ["S2SEG_SHOT_TILE"]
OUTDIR = os.environ["S2SEG_SHOT_OUTDIR"]
PNG = os.environ["S2SEG_SHOT_PNG"]
STATUS = os.environ["S2SEG_SHOT_STATUS"]
TIMEOUT_S = float(os.environ.get("S2SEG_SHOT_TIMEOUT", "240"))

state: dict = {"started": time.monotonic()}


def finish(message: str) -> None:
    with open(STATUS, "w", encoding="utf-8") as fh:
        fh.write(message + "\n")
    # Close the project while the GUI is alive: a bare quit() crashes in ~QgsProject, whose layer tree
    # signals then reach docks already deleted; Project ▸ Exit may stop at a "save?" question.
    QgsProject.instance().clear()
    QgsProject.instance().setDirty(False)
    QTimer.singleShot(500, QgsApplication.instance().quit)


def guarded(step):
    """Run a step; any exception ends the session with the traceback in the status file."""
    def run() -> None:
        try:
            step()
        except Exception:  # noqa: BLE001 - report everything to the shell script
            finish("error\n" + traceback.format_exc())
    return run


def later(ms: int, step) -> None:
    QTimer.singleShot(ms, guarded(step))


def toolbox():
    return plugins["processing"].toolbox


def start() -> None:
    if "s2seg" not in plugins:
        raise RuntimeError(f"the s2seg plugin is not loaded (loaded: {sorted(plugins)})")
    if QgsApplication.processingRegistry().algorithmById(ALG_ID) is None:
        raise RuntimeError(f"{ALG_ID} is not in the Processing registry")
    window = iface.mainWindow()
    screen = QApplication.primaryScreen().geometry()
    window.setGeometry(screen)  # no window manager under Xvfb: size the window by hand
    iface.messageBar().clearWidgets()
    from qgis.PyQt.QtWidgets import QDockWidget

    browser = window.findChild(QDockWidget, "Browser")
    if browser is not None:
        browser.hide()  # room for the Layers panel and the class legend
    layers = window.findChild(QDockWidget, "Layers")
    if layers is not None:
        window.resizeDocks([layers], [360], Qt.Horizontal)  # long class names fit
    box = toolbox()
    box.show()
    box.raise_()
    box.searchBox.setText("segment sentinel")
    box.algorithmTree.expandAll()

    import processing

    dialog = processing.createAlgorithmDialog(ALG_ID, {"INPUT": TILE, "OUTPUT_FOLDER": OUTDIR})
    dialog.show()
    state["dialog"] = dialog
    later(1500, run_dialog)


def run_dialog() -> None:
    state["dialog"].runAlgorithm()  # the Run button: QgsProcessingAlgRunnerTask, then load the results
    later(500, wait_for_layers)


def product_group() -> QgsLayerTreeGroup | None:
    root = QgsProject.instance().layerTreeRoot()
    for child in root.children():
        if isinstance(child, QgsLayerTreeGroup) and len(child.findLayers()) >= 4:
            return child
    return None


def wait_for_layers() -> None:
    if time.monotonic() - state["started"] > TIMEOUT_S:
        raise TimeoutError(f"no styled layer group after {TIMEOUT_S:.0f} s")
    group = product_group()
    if group is None:
        later(500, wait_for_layers)
        return
    state["dialog"].close()
    iface.messageBar().clearWidgets()
    group.setExpanded(True)
    nodes = [n for n in group.children() if isinstance(n, QgsLayerTreeLayer)]
    land_cover = nodes[0].layer()
    nodes[0].setExpanded(True)  # the paletted legend: colour and name of each class
    for node in nodes[1:]:
        node.setExpanded(False)
    iface.setActiveLayer(land_cover)
    canvas = iface.mapCanvas()
    canvas.setExtent(land_cover.extent())
    canvas.refresh()
    # Select the algorithm in the filtered Toolbox tree.
    tree = toolbox().algorithmTree
    tree.expandAll()
    model = tree.model()
    providers = [model.index(row, 0) for row in range(model.rowCount())]
    index = next((i for i in providers if model.data(i) == "S2Seg"), model.index(0, 0))
    while index.isValid() and model.rowCount(index) > 0:
        index = model.index(0, 0, index)
    if index.isValid():
        tree.setCurrentIndex(index)
    state["group"] = group.name()
    later(3000, grab)


def grab() -> None:
    canvas = iface.mapCanvas()
    if canvas.isDrawing() and time.monotonic() - state["started"] < TIMEOUT_S:
        later(500, grab)
        return
    QApplication.processEvents()
    pixmap = QApplication.primaryScreen().grabWindow(0)
    if not pixmap.save(PNG, "PNG"):
        raise OSError(f"cannot write {PNG}")
    finish(f"ok group={state['group']}")


later(3000, start)
