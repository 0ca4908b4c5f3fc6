"""The ``s2seg`` command line: segment, batch, models, sample-tile.

The options ``segment`` and ``batch`` share are declared once in :mod:`s2seg.core.options`.
Errors: a user error (:class:`S2SegError`: a bad input, model or option) is one line, with the
option to change where one fixes it (:func:`s2seg.core.options.with_option_hint`); any other
exception is a bug and prints its traceback too. ``--debug`` prints the traceback of every error.
(The benchmark harness is not part of the command line: ``make bench`` runs ``benchmarks/``.)
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import traceback
from pathlib import Path

from .errors import Cancelled, S2SegError
from .options import add_engine_options, engine_config, with_option_hint

#: Modules (relative to ``s2seg.core``) that add subcommands through ``add_commands(subparsers)``;
#: a new command family (e.g. the accuracy commands) adds its module here. Keep them light to import.
COMMAND_MODULES: tuple[str, ...] = (".accuracy.cli",)

EPILOG = """errors: a problem with an input, a model or an option is reported in one line (exit code 1);
any other error is a bug in s2seg or a model and is reported with its traceback (exit code 1).
--debug prints the traceback of every error. Ctrl-C stops a run within one batch (exit code 130)."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False)
    try:
        return args.run(args)
    except Cancelled as exc:
        print(f"s2seg: {exc}", file=sys.stderr)
        return 130
    except S2SegError as exc:
        if debug:
            traceback.print_exc(file=sys.stderr)
        print(f"s2seg: error: {with_option_hint(str(exc), exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug: keep where it happened, then one line to close on
        traceback.print_exc(file=sys.stderr)
        print(f"s2seg: internal error: {type(exc).__name__}: {exc} (a bug in s2seg or the model: please report "
              "it with the traceback above)", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s2seg", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Segment whole Sentinel-2 tiles into land cover with per-pixel confidence.")
    debug_help = "print the traceback of every error, not only of unexpected ones"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # Also after the subcommand (``s2seg segment … --debug``); SUPPRESS keeps a flag given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = parser.add_subparsers(dest="command")

    seg = sub.add_parser("segment", parents=[common], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                         help="segment one tile (.SAFE folder, .zip, IMG_DATA or folder of band files)")
    seg.add_argument("tile", help="a .SAFE folder or .zip, a folder of band files, a stacked raster (GeoTIFF/VRT) "
                                  "or a STAC item (JSON file or http(s) URL)")  # str: a URL must keep its //
    seg.add_argument("output", type=Path, help="output folder")
    add_engine_options(seg)
    seg.set_defaults(run=_segment)

    from .batch import add_arguments as add_batch_arguments  # light: dask and torch load only when it runs

    batch = sub.add_parser("batch", parents=[common], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                           help="segment many tiles, one Dask task each (local cluster or --scheduler)")
    add_batch_arguments(batch)
    batch.set_defaults(run=_batch)

    models = sub.add_parser("models", parents=[common], help="list the models available by name")
    models.set_defaults(run=_models)

    sample = sub.add_parser("sample-tile", parents=[common], help="write a synthetic, physically plausible Sentinel-2 tile")
    sample.add_argument("output", type=Path, help="folder to write the tile into")
    sample.add_argument("--size", type=int, default=10980, help="10 m size in pixels (default 10980, a full tile)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--level", choices=("L2A", "L1C"), default="L2A")
    sample.add_argument("--layout", choices=("safe", "flat", "zip"), default="safe")
    sample.add_argument("--format", dest="fmt", choices=("gtiff", "jp2"), default="gtiff")
    sample.add_argument("--nodata-corner", action="store_true", help="DN 0 triangle in a corner, as at swath edges")
    sample.set_defaults(run=_sample_tile)

    for module in COMMAND_MODULES:
        importlib.import_module(module, __package__).add_commands(sub)
    return parser


def _segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .pipeline import segment

    config = engine_config(args)
    cancel = threading.Event()
    bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}] {postfix}", disable=args.quiet, file=sys.stderr)

    def progress(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction, 1)
        bar.set_postfix_str(message, refresh=True)

    previous = signal.getsignal(signal.SIGINT)

    def interrupt(signum, frame) -> None:  # Ctrl-C: stop within one batch, keep what is written, exit 130
        cancel.set()

    signal.signal(signal.SIGINT, interrupt)
    try:
        result = segment(args.tile, args.output, model=args.model, config=config, progress=progress, cancel=cancel,
                         log=lambda m: tqdm.write(m, file=sys.stderr))
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
    resumed = f" ({result.resumed_chunks} resumed)" if result.resumed_chunks else ""
    print(f"{result.tile_name}: {result.model_name} on {result.device}, {result.n_chunks} chunk(s){resumed} of {result.chunk_size} px, "
          f"{result.seconds:.1f} s → {result.output_dir}")
    for stat in sorted(result.class_stats, key=lambda s: -s.share):
        if stat.share >= 0.005:
            print(f"  {100 * stat.share:5.1f}%  {stat.area_km2:9.2f} km²  maxprob {stat.mean_maxprob:.2f}  {stat.name}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from .models import available_cards

    for name, card in available_cards().items():
        print(f"{name:24s} {card.format:11s} {card.output_kind:5s} {card.patch_size:4d} px {card.resolution:2d} m  {card.num_classes:3d} classes  "
              f"bands {','.join(card.bands)}  {card.description}")
    return 0


def _sample_tile(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .sample import write_sample_tile

    with tqdm(total=100, unit="%", file=sys.stderr) as bar:
        def progress(fraction: float, message: str) -> None:
            bar.n = round(100 * fraction, 1)
            bar.set_postfix_str(message, refresh=True)

        path = write_sample_tile(args.output, size=args.size, seed=args.seed, level=args.level, layout=args.layout,
                                 nodata_corner=args.nodata_corner, fmt=args.fmt, progress=progress)
    print(path)
    return 0


def _batch(args: argparse.Namespace) -> int:
    from .batch import cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
