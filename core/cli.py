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

from .errors import Cancelled, ModelError, S2SegError
from .options import QUIET, REVISION, add_engine_options, engine_config, with_option_hint

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
    seg.add_argument("tile", nargs="+", metavar="TILE",
                     help="a .SAFE folder or .zip, a folder of band files, a stacked raster (GeoTIFF/VRT), a STAC "
                          "item (JSON file or http(s) URL), or band COGs: their http(s) URLs (several TILE values: "
                          "…/B02.tif …/B03.tif …) or a .txt file listing them, one per line")  # str: a URL keeps its //
    seg.add_argument("output", type=Path, help="output folder")
    add_engine_options(seg)
    seg.set_defaults(run=_segment)

    from .batch import add_arguments as add_batch_arguments  # light: dask and torch load only when it runs

    batch = sub.add_parser("batch", parents=[common], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                           help="segment many tiles, one Dask task each (local cluster or --scheduler)")
    add_batch_arguments(batch)
    batch.set_defaults(run=_batch)

    models = sub.add_parser("models", parents=[common], help="list the models available by name; download or import "
                                                             "the BigEarthNet v2 ones")
    action = models.add_mutually_exclusive_group()
    action.add_argument("--download", metavar="NAME", help="download a BigEarthNet v2 model into the Hugging Face "
                                                           "cache now (checks the Hub for a newer commit)")
    action.add_argument("--import", dest="import_dir", metavar="DIR", type=Path,
                        help="register a downloaded checkpoint folder copied from elsewhere (no internet needed)")
    models.add_argument("--name", help="with --import: the model the folder is (when its config.json cannot tell)")
    REVISION.add_to(models)
    QUIET.add_to(models)
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

    from .nomenclature import format_share
    from .pipeline import segment

    config = engine_config(args)
    model = args.model  # NAME@REVISION with --revision
    _download_if_needed(model, quiet=args.quiet)  # its own progress bar, before the run's
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
        tile = args.tile[0] if len(args.tile) == 1 else args.tile  # several: band URLs
        result = segment(tile, args.output, model=model, config=config, progress=progress, cancel=cancel,
                         log=lambda m: tqdm.write(m, file=sys.stderr))
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
    resumed = f" ({result.resumed_chunks} resumed)" if result.resumed_chunks else ""
    print(f"{result.tile_name}: {result.model_name} on {result.device}, {result.n_chunks} chunk(s){resumed} of {result.chunk_size} px, "
          f"{result.seconds:.1f} s → {result.output_dir}")
    for stat in sorted(result.class_stats, key=lambda s: -s.share):
        if stat.share >= 0.005:
            print(f"  {format_share(stat.share):>7}  {stat.area_km2:9.2f} km²  maxprob {stat.mean_maxprob:.2f}  {stat.name}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from .models import available_cards, zoo

    if args.download:
        found = zoo.lookup(args.download)
        if found is None:
            zoo.refuse_sentinel1(args.download)
            raise ModelError(f"{args.download!r} is not a downloadable model; known: {', '.join(zoo.CATALOGUE)}")
        entry, revision = found
        with _DownloadBars(args.quiet) as bars:
            folder = zoo.download(entry, args.revision or revision, progress=bars.update, cancel=bars.cancel.is_set)
        print(f"{entry.name}: {entry.repo_id} commit {folder.name} → {folder}")
        return 0
    if args.import_dir:
        folder = zoo.import_folder(args.import_dir, args.name)
        print(f"{folder.name}: imported from {args.import_dir} → {folder}")
        return 0
    for name, card in available_cards().items():
        print(f"{name:24s} {card.format:11s} {card.output_kind:5s} {card.patch_size:4d} px {card.resolution:2d} m  {card.num_classes:3d} classes  "
              f"bands {','.join(card.bands)}  {card.description}")
    # The zoo's sizes before download are estimates (see docs/models.md); once here, the size on disk.
    for name, entry in zoo.CATALOGUE.items():
        state, size = zoo.state(entry)
        shown = f"{size / 1e6:.0f} MB" if size is not None else f"≈{entry.size_text}"
        print(f"{name:32s} ben-v2  {state:14s} {shown:>9s}  {entry.repo_id}  {entry.title}")
    return 0


class _DownloadBars:
    """One tqdm bar per downloaded file; Ctrl-C cancels the download (exit code 130, nothing kept)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.bars = quiet, {}
        self.cancel = threading.Event()
        self._previous = None

    def update(self, name: str, done: int, total: int | None) -> None:
        from tqdm import tqdm

        if name not in self.bars:
            self.bars[name] = tqdm(total=total, desc=name, unit="B", unit_scale=True, disable=self.quiet, file=sys.stderr)
        bar = self.bars[name]
        bar.update(done - bar.n)

    def __enter__(self) -> "_DownloadBars":
        self._previous = signal.signal(signal.SIGINT, lambda signum, frame: self.cancel.set())
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)
        for bar in self.bars.values():
            bar.close()


def _download_if_needed(model: str, quiet: bool) -> None:
    """Download a zoo model that is not on this machine yet, with a progress bar (the engine would too, silently)."""
    from .models import zoo

    found = zoo.lookup(model) if isinstance(model, str) else None
    if found is None:
        return
    entry, revision = found
    if zoo.cached_folder(entry, revision) is None and (revision or zoo.imported_folder(entry) is None):
        with _DownloadBars(quiet) as bars:
            zoo.download(entry, revision, progress=bars.update, cancel=bars.cancel.is_set)


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

    _download_if_needed(args.model, quiet=args.quiet)  # once, here, rather than by every worker at once
    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
