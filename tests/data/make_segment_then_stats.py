"""Regenerate ``segment_then_stats.model3``: the graphical model used by tests/test_plugin_model3.py.

The model is what an analyst would draw in the Graphical Modeler: a tile folder and a chunk size
as inputs, "Segment Sentinel-2 tile" on that tile, and the core "Raster layer statistics"
(native:rasterlayerstatistics) on the segmentation's ENTROPY output. Its two outputs are the
segmentation's output folder and the statistics HTML page.

Run from the repository root (the file is committed; rerun only to change the model)::

    QT_QPA_PLATFORM=offscreen .venv/bin/python tests/data/make_segment_then_stats.py
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL_FILE = HERE / "segment_then_stats.model3"


def build_model():  # -> QgsProcessingModelAlgorithm
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
        QgsProcessingParameterNumber,
    )
    from qgis.PyQt.QtCore import QPointF

    static = QgsProcessingModelChildParameterSource.fromStaticValue
    model = QgsProcessingModelAlgorithm("Segment tile then entropy statistics", "s2seg")
    model.setHelpContent({
        "ALG_DESC": "Segments a Sentinel-2 tile with s2seg and summarises its entropy (bits) with "
                    "the core Raster layer statistics algorithm.",
    })

    tile = QgsProcessingModelParameter("tile")
    tile.setPosition(QPointF(120, 60))
    tile.setDescription("Sentinel-2 tile (.SAFE folder)")
    model.addModelParameter(
        QgsProcessingParameterFile("tile", "Sentinel-2 tile (.SAFE folder)", behavior=QgsProcessingParameterFile.Folder),
        tile,
    )
    chunk = QgsProcessingModelParameter("chunk_size")
    chunk.setPosition(QPointF(360, 60))
    chunk.setDescription("Chunk size in 10 m pixels (0 = automatic)")
    model.addModelParameter(
        QgsProcessingParameterNumber("chunk_size", "Chunk size in 10 m pixels (0 = automatic)",
                                     type=QgsProcessingParameterNumber.Integer, defaultValue=0, minValue=0),
        chunk,
    )

    segment = QgsProcessingModelChildAlgorithm("s2seg:segmenttile")
    segment.setChildId("segment")
    segment.setDescription("Segment Sentinel-2 tile")
    segment.setPosition(QPointF(240, 200))
    sources = {
        "INPUT": QgsProcessingModelChildParameterSource.fromModelParameter("tile"),
        "MODEL": static("builtin"),
        "CHUNK_SIZE": QgsProcessingModelChildParameterSource.fromModelParameter("chunk_size"),
        "BATCH_SIZE": static(0),
        "DEVICE": static("auto"),
        "WRITE_PROBS": static(False),
    }
    for name, source in sources.items():
        segment.addParameterSources(name, [source])
    folder = QgsProcessingModelOutput("segmentation", "Segmentation folder")
    folder.setChildId("segment")
    folder.setChildOutputName("OUTPUT_FOLDER")
    folder.setPosition(QPointF(480, 260))
    segment.setModelOutputs({"segmentation": folder})
    model.addChildAlgorithm(segment)

    stats = QgsProcessingModelChildAlgorithm("native:rasterlayerstatistics")
    stats.setChildId("entropy_stats")
    stats.setDescription("Entropy statistics")
    stats.setPosition(QPointF(240, 340))
    stats.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromChildOutput("segment", "ENTROPY")])
    stats.addParameterSources("BAND", [static(1)])
    html = QgsProcessingModelOutput("entropy_statistics", "Entropy statistics")
    html.setChildId("entropy_stats")
    html.setChildOutputName("OUTPUT_HTML_FILE")
    html.setPosition(QPointF(480, 400))
    stats.setModelOutputs({"entropy_statistics": html})
    model.addChildAlgorithm(stats)
    return model


def main() -> int:
    sys.path.insert(0, "/usr/share/qgis/python/plugins")
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    from processing.core.Processing import Processing

    from s2seg.s2seg_plugin.provider import S2SegProvider

    Processing.initialize()
    provider = S2SegProvider()  # keep a reference while the model is built
    if not QgsApplication.processingRegistry().addProvider(provider):
        print("cannot register the s2seg provider", file=sys.stderr)
        return 1
    model = build_model()
    ok, errors = model.validate()
    if not ok:
        print("\n".join(errors), file=sys.stderr)
        return 1
    if not model.toFile(str(MODEL_FILE)):
        print(f"cannot write {MODEL_FILE}", file=sys.stderr)
        return 1
    print(MODEL_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
