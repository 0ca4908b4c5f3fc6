"""Estimates from a labelled sample design (issue 22, part 2).

Reads the GeoPackage written by :func:`.design.write_design` after a person filled its
``reference`` field (a class code or a class name), and runs the stratified estimators
of :mod:`.estimate` with the strata sizes stored in the file. Units with an empty or
unknown reference label are reported and left out.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .config import DESIGN_LAYER, REFERENCE_FIELD, SAMPLE_LAYER, STRATA_LAYER
from .design import Products, find_products
from .estimate import AccuracyError, Assessment, estimate


@dataclass
class LabelledSample:
    """The sample units of a design file with their reference labels, and the strata table."""

    fids: np.ndarray
    stratum: np.ndarray
    map_class: np.ndarray
    labels: list[str | None]
    strata: list[dict[str, Any]]
    design: dict[str, Any]


@dataclass
class AssessResult:
    """An assessment with what was left out of it and the design it rests on."""

    assessment: Assessment
    products: Products
    sample_path: Path
    reference_field: str
    design: dict[str, Any]
    strata: list[dict[str, Any]]
    unlabelled: list[int] = field(default_factory=list)  # feature ids
    unknown: dict[int, str] = field(default_factory=dict)  # feature id → label

    @property
    def pixel_area(self) -> float:
        return self.products.pixel_area

    def to_dict(self) -> dict[str, Any]:
        return {"sample": str(self.sample_path), "tile": self.products.tile, "reference_field": self.reference_field,
                "unlabelled_units": self.unlabelled, "unknown_labels": {str(k): v for k, v in self.unknown.items()},
                "design": self.design, "strata": self.strata, "area_unit": "m²", **self.assessment.to_dict()}


def read_sample(path: Path, reference_field: str = REFERENCE_FIELD) -> LabelledSample:
    """The units, labels, strata table and design settings of a sample GeoPackage."""
    from osgeo import ogr

    path = Path(path)
    if not path.is_file():
        raise InputError(f"sample file {path} does not exist")
    try:
        ds = ogr.Open(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot open sample file {path}: {exc}") from None
    if ds is None:
        raise InputError(f"cannot open sample file {path} as a GeoPackage")
    layers = {ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())}
    missing = [name for name in (SAMPLE_LAYER, STRATA_LAYER) if name not in layers]
    if missing:
        raise InputError(f"sample file {path} lacks the layer(s) {', '.join(missing)}: was it written by "
                         "the s2seg sample design?")
    points = ds.GetLayerByName(SAMPLE_LAYER)
    defn = points.GetLayerDefn()
    fields = {defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())}
    for name in ("stratum", "map_class", reference_field):
        if name not in fields:
            raise InputError(f"layer {SAMPLE_LAYER!r} of {path} has no field {name!r}")
    fids, strata, classes, labels = [], [], [], []
    for feature in points:
        fids.append(feature.GetFID())
        strata.append(feature.GetFieldAsInteger("stratum"))
        classes.append(feature.GetFieldAsInteger("map_class"))
        if feature.IsFieldSetAndNotNull(reference_field):
            labels.append(feature.GetFieldAsString(reference_field))
        else:
            labels.append(None)
    table = []
    for feature in ds.GetLayerByName(STRATA_LAYER):
        table.append({"stratum": feature.GetFieldAsInteger("stratum"), "name": feature.GetFieldAsString("name"),
                      "map_class": feature.GetFieldAsInteger("map_class"),
                      "confidence": feature.GetFieldAsString("confidence"),
                      "pixels": feature.GetFieldAsInteger64("pixels"), "area": feature.GetFieldAsDouble("area"),
                      "sample": feature.GetFieldAsInteger("sample")})
    design: dict[str, Any] = {}
    if DESIGN_LAYER in layers:
        for feature in ds.GetLayerByName(DESIGN_LAYER):
            design = json.loads(feature.GetFieldAsString("json") or "{}")
    ds = None
    return LabelledSample(np.array(fids, np.int64), np.array(strata, np.int64), np.array(classes, np.int64),
                          labels, table, design)


def parse_labels(labels: list[str | None], class_names: list[str]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Class codes of the labels (a code or a class name, case and spaces ignored); -1 where empty
    or unknown. Returns (codes, empty mask, {position: unknown label})."""
    by_name = {name.strip().casefold(): i for i, name in enumerate(class_names)}
    codes = np.full(len(labels), -1, np.int64)
    empty = np.zeros(len(labels), bool)
    unknown: dict[int, str] = {}
    for i, label in enumerate(labels):
        text = (label or "").strip()
        if not text:
            empty[i] = True
        elif text.lstrip("-").isdigit() and 0 <= int(text) < len(class_names):
            codes[i] = int(text)
        elif text.casefold() in by_name:
            codes[i] = by_name[text.casefold()]
        else:
            unknown[i] = text
    return codes, empty, unknown


def assess(products_dir: Path, sample_path: Path, *, reference_field: str = REFERENCE_FIELD,
           tile: str | None = None, fpc: bool = False) -> AssessResult:
    """Accuracy and error-adjusted areas (m²) from a labelled sample of a tile's products."""
    sample = read_sample(sample_path, reference_field)
    tile = tile or sample.design.get("tile")
    products = find_products(products_dir, tile)
    names = products.class_names
    codes, empty, unknown = parse_labels(sample.labels, names)
    keep = codes >= 0
    if not keep.any():
        raise AccuracyError(f"no unit of {sample_path} has a reference label in field {reference_field!r} "
                            f"({int(empty.sum())} empty, {len(unknown)} unknown): label the points first")
    sizes = {s["stratum"]: s["pixels"] for s in sample.strata}
    classes = sorted({s["map_class"] for s in sample.strata if s["pixels"] > 0} | set(codes[keep].tolist()))
    assessment = estimate(sample.stratum[keep], sample.map_class[keep], codes[keep], sizes, classes,
                          class_names=[names[c] if c < len(names) else f"class {c}" for c in classes],
                          unit_area=products.pixel_area, fpc=fpc)
    result = AssessResult(assessment=assessment, products=products, sample_path=Path(sample_path),
                          reference_field=reference_field, design=sample.design, strata=sample.strata,
                          unlabelled=sample.fids[empty].tolist(),
                          unknown={int(sample.fids[i]): label for i, label in unknown.items()})
    if result.unlabelled:
        assessment.messages.insert(0, f"{len(result.unlabelled)} unit(s) without a reference label left out")
    if unknown:
        shown = ", ".join(f"{fid}: {label!r}" for fid, label in list(result.unknown.items())[:10])
        assessment.messages.insert(0, f"{len(unknown)} unit(s) with a reference label that is no class name or "
                                      f"code left out ({shown}{' …' if len(unknown) > 10 else ''})")
    return result
