"""``s2seg sample-design`` and ``s2seg assess``: the accuracy commands of the command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import OutputsExist
from .config import CONFIDENCE_MEASURES, REFERENCE_FIELD, DesignConfig

_DEFAULTS = DesignConfig()


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the two commands to the ``s2seg`` sub-command parsers."""
    design = subparsers.add_parser(
        "sample-design", help="draw a stratified random sample of a segmented tile to label (GeoPackage)")
    design.add_argument("products", type=Path, help="output folder of a segment run")
    design.add_argument("output", type=Path, help="sample file to write (.gpkg)")
    design.add_argument("--tile", help="tile name, when the folder holds several tiles")
    design.add_argument("--size", type=int, default=_DEFAULTS.total,
                        help="total sample size (0 = from --target-se, Olofsson et al. 2014 eq. 13)")
    design.add_argument("--target-se", type=float, default=_DEFAULTS.target_se,
                        help="target standard error of overall accuracy (default %(default)s)")
    design.add_argument("--target-se-users", type=float, default=_DEFAULTS.target_se_users,
                        help="also give every stratum enough points for this standard error of its user's "
                             "accuracy (0 = off)")
    design.add_argument("--minimum", type=int, default=_DEFAULTS.minimum,
                        help="sample units per stratum at least (default %(default)s)")
    design.add_argument("--confidence", choices=CONFIDENCE_MEASURES, default=_DEFAULTS.confidence,
                        help="split every class into confident and uncertain pixels by this measure")
    design.add_argument("--threshold", type=float, default=_DEFAULTS.threshold,
                        help="gap below, or entropy (bits) above, this value is uncertain (default %(default)s)")
    design.add_argument("--expected-accuracy", type=float, default=_DEFAULTS.expected_user,
                        help="expected user's accuracy of a class or of its confident part (default %(default)s)")
    design.add_argument("--expected-uncertain", type=float, default=_DEFAULTS.expected_uncertain,
                        help="expected user's accuracy of an uncertain part (default %(default)s)")
    design.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    design.add_argument("--overwrite", action="store_true", help="replace an existing sample file")
    design.set_defaults(run=_sample_design)

    assess = subparsers.add_parser("assess", help="accuracy and error-adjusted areas from a labelled sample")
    assess.add_argument("products", type=Path, help="output folder of the segment run the sample was drawn from")
    assess.add_argument("sample", type=Path, help="the sample file (.gpkg) with reference labels")
    assess.add_argument("--reference-field", default=REFERENCE_FIELD,
                        help="field holding the reference class (code or name; default %(default)s)")
    assess.add_argument("--html", type=Path, help="HTML report (default: <sample>_assessment.html beside it)")
    assess.add_argument("--json", type=Path, help="JSON report (default: <sample>_assessment.json beside it)")
    assess.add_argument("--fpc", action="store_true", help="apply the finite population correction")
    assess.set_defaults(run=_assess)


def _sample_design(args: argparse.Namespace) -> int:
    from .design import sample_design

    config = DesignConfig(total=args.size, target_se=args.target_se, target_se_users=args.target_se_users,
                          minimum=args.minimum,
                          confidence=args.confidence, threshold=args.threshold,
                          expected_user=args.expected_accuracy, expected_uncertain=args.expected_uncertain,
                          seed=args.seed)
    try:
        design = sample_design(args.products, args.output, config, tile=args.tile, overwrite=args.overwrite)
    except OutputsExist as exc:
        raise OutputsExist(f"{exc} (--overwrite replaces it)") from None
    for message in design.messages:
        print(f"note: {message}", file=sys.stderr)
    print(f"{args.output}: {len(design.rows)} points in {len(design.strata)} strata of tile {design.products.tile}")
    for s in design.strata:
        print(f"  {s.sample:5d} of {s.pixels:12,d} px  {s.name}")
    return 0


def _assess(args: argparse.Namespace) -> int:
    from .assess import assess
    from .report import HECTARE, write_reports

    result = assess(args.products, args.sample, reference_field=args.reference_field, fpc=args.fpc)
    html_path, json_path = write_reports(result, args.html, args.json)
    a = result.assessment
    for message in a.messages:
        print(f"note: {message}", file=sys.stderr)
    ci = a.overall.ci95
    print(f"overall accuracy {a.overall.value:.3f} (95 % CI {ci[0]:.3f}–{ci[1]:.3f}), {a.n_units} units")
    for name, mapped, area in zip(a.class_names, a.mapped_areas, a.areas):
        lo, hi = area.ci95
        print(f"  {mapped / HECTARE:12,.1f} ha mapped  {area.value / HECTARE:12,.1f} ha estimated "
              f"[{lo / HECTARE:,.1f}, {hi / HECTARE:,.1f}]  {name}")
    print(f"{html_path}\n{json_path}")
    return 0
