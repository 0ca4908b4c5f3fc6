"""Grouping of the products in the layer tree as QGIS desktop does it: the desktop adds each new
layer at the layer tree view's insertion point, which follows the current layer into the tile group
created for the previous product. The products must still end up in one flat group per run.

(Found with tools/screenshot_qgis.sh: under real QGIS the group nested itself once per product.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from qgis.core import QgsLayerTreeGroup, QgsLayerTreeRegistryBridge, QgsProject, QgsRasterLayer

from s2seg.s2seg_plugin.styling import move_into_group

PRODUCTS = ("maxprob", "gap", "entropy", "class")  # top first: confidence above the class map


def tiny_raster(path: Path) -> str:
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 4, 4, 1, gdal.GDT_Float32)
    ds.SetGeoTransform((500000, 10, 0, 5000000, 0, -10))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    ds.SetProjection(srs.ExportToWkt())
    ds.GetRasterBand(1).WriteArray(np.zeros((4, 4), np.float32))
    ds = None
    return str(path)


@pytest.fixture()
def project(qgis_new_project) -> QgsProject:
    """A fresh project whose insertion point is put back at the root afterwards: the groups it points
    into are deleted when the next test clears the project (the desktop's layer tree view does this)."""
    project = QgsProject.instance()
    bridge = project.layerTreeRegistryBridge()
    root = project.layerTreeRoot()
    bridge.setLayerInsertionPoint(QgsLayerTreeRegistryBridge.InsertionPoint(root, 0))
    yield project
    bridge.setLayerInsertionPoint(QgsLayerTreeRegistryBridge.InsertionPoint(root, 0))


def load_run(project: QgsProject, tmp_path: Path, run_id: str, order: tuple[str, ...] = PRODUCTS) -> None:
    """Add the products one by one, moving the insertion point into the new group as the desktop does."""
    bridge = project.layerTreeRegistryBridge()
    for product in order:
        layer = QgsRasterLayer(tiny_raster(tmp_path / f"{run_id}_{product}.tif"), product)
        assert layer.isValid()
        project.addMapLayer(layer)
        moved = move_into_group(project, layer, "T32UNU", product, run_id)
        assert moved is not None
        bridge.setLayerInsertionPoint(QgsLayerTreeRegistryBridge.InsertionPoint(moved.parent(), 0))


def groups_of(node) -> list[QgsLayerTreeGroup]:
    return [c for c in node.children() if isinstance(c, QgsLayerTreeGroup)]


def test_one_flat_ordered_group_when_insertion_point_follows_current_layer(tmp_path, project):
    load_run(project, tmp_path, "run1", order=("entropy", "class", "gap", "maxprob"))
    (group,) = groups_of(project.layerTreeRoot())
    assert not groups_of(group)
    assert [n.name() for n in group.children()] == list(PRODUCTS)
    assert len(project.mapLayers()) == len(PRODUCTS)


def test_second_run_gets_a_sibling_group_not_a_nested_one(tmp_path, project):
    load_run(project, tmp_path, "run1")
    load_run(project, tmp_path, "run2")  # the insertion point starts inside run1's group
    groups = groups_of(project.layerTreeRoot())
    assert len(groups) == 2 and all(not groups_of(g) for g in groups)
    assert all([n.name() for n in g.children()] == list(PRODUCTS) for g in groups)
