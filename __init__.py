"""s2seg QGIS plugin entry point: QGIS calls classFactory(iface); nothing heavy is imported here."""


def classFactory(iface):  # noqa: N802 - QGIS API; iface is None under qgis_process
    from .s2seg_plugin.plugin import S2SegPlugin

    return S2SegPlugin(iface)
