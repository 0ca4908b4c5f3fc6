"""``s2seg batch``: its arguments (the shared engine options of :mod:`s2seg.core.options` plus the
cluster's) and the command that runs :func:`~s2seg.core.batch.driver.run_batch` in a terminal."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
from pathlib import Path

from ..options import add_engine_options, engine_config, with_option_hint
from .driver import run_batch
from .results import OK, SKIPPED, TileOutcome
from .summary import format_table, summary_line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``s2seg batch`` arguments: inputs, output folder, cluster options, then the shared options."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="tiles: .SAFE folders, .zip files, band folders, stacked rasters, STAC items (files or URLs), "
                             ".txt lists of band URLs (one tile each), globs ('tiles/*.SAFE') or @list.txt (a list "
                             "of tiles, one per line)")
    parser.add_argument("output", type=Path, metavar="OUT", help="output folder; each tile goes to OUT/<tile name>/")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="address of a running Dask scheduler (tcp://host:8786); default: start a local cluster")
    parser.add_argument("--workers", type=int, default=0, help="local cluster: worker processes (0 = automatic)")
    parser.add_argument("--threads-per-worker", type=int, default=0,
                        help="torch threads per worker (0 = automatic: local cores / workers)")
    add_engine_options(parser)


def _shown(outcome: TileOutcome) -> TileOutcome:
    """The outcome as the terminal shows it: the option wording added to errors an option fixes."""
    if not outcome.error_type:
        return outcome
    return dataclasses.replace(outcome, message=with_option_hint(outcome.message, outcome.error_type))


def cli_main(args: argparse.Namespace) -> int:
    """Run ``s2seg batch`` from parsed arguments; prints progress, the table and the summary line.

    Every tile runs with the engine options given (``--half``, ``--resume``/``--no-resume`` …); the
    traceback of a tile that failed on an unexpected error (a bug, not a bad input) goes to stderr
    after the table, and into ``s2seg_batch.json``.
    """
    import signal

    from tqdm import tqdm

    config = engine_config(args)
    cancel = threading.Event()
    bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}] {postfix}",
               disable=args.quiet, file=sys.stderr)

    def progress(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction, 1)
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    def on_tile(outcome: TileOutcome, done: int, total: int) -> None:
        outcome = _shown(outcome)
        text = f"[{done}/{total}] {outcome.name}: {outcome.status}"
        if outcome.status in (OK, SKIPPED):
            text += f" ({outcome.seconds:.1f} s{', ' + outcome.device if outcome.device else ''}) → {outcome.output_dir}"
        elif outcome.message:
            text += f": {outcome.message}"
        tqdm.write(text, file=sys.stderr)

    def log(message: str) -> None:
        if not args.quiet:
            tqdm.write(message, file=sys.stderr)

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda signum, frame: cancel.set())
    try:
        # The batch owns its tiles' folders: --overwrite re-runs complete tiles (force); the engine always
        # replaces an incomplete tile's products (run_tile sets overwrite for each tile).
        result = run_batch(args.inputs, args.output, model=args.model, config=config, scheduler=args.scheduler,
                           workers=args.workers, threads_per_worker=args.threads_per_worker, force=args.overwrite,
                           progress=progress, log=log, cancel=cancel, on_tile=on_tile)
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
    print(format_table([_shown(o) for o in result.outcomes]))
    for outcome in result.outcomes:
        if outcome.traceback:
            print(f"\n{outcome.name}: unexpected error (a bug in s2seg or a model; please report it):\n"
                  f"{outcome.traceback.rstrip()}", file=sys.stderr)
    print(summary_line(result))
    if result.summary_html is not None:
        print(f"summary: {result.summary_html}")
    return result.exit_code
