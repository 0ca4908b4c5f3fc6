"""The ``s2seg`` command line: segment, models, sample-tile, bench."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from .config import DEVICES, EngineConfig
from .errors import Cancelled, S2SegError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except Cancelled as exc:
        print(f"s2seg: {exc}", file=sys.stderr)
        return 130
    except S2SegError as exc:
        print(f"s2seg: error: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s2seg", description="Segment whole Sentinel-2 tiles into land cover with per-pixel confidence.")
    sub = parser.add_subparsers(dest="command")

    seg = sub.add_parser("segment", help="segment one tile (.SAFE folder, .zip, IMG_DATA or folder of band files)")
    seg.add_argument("tile", type=Path)
    seg.add_argument("output", type=Path, help="output folder")
    seg.add_argument("--model", default="builtin", help="model name (see `s2seg models`), card .json, BigEarthNet v2 folder, .onnx or TorchScript .pt")
    seg.add_argument("--chunk-size", type=int, default=0, help="chunk edge in 10 m pixels (0 = automatic)")
    seg.add_argument("--batch-size", type=int, default=0, help="patches per forward pass (0 = automatic)")
    seg.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA, else Apple MPS, else CPU")
    seg.add_argument("--half", action="store_true", help="half-precision (float16 autocast) inference on CUDA; ignored elsewhere")
    seg.add_argument("--probs", action="store_true", help="also write per-class probabilities")
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    resume = seg.add_mutually_exclusive_group()
    resume.add_argument("--resume", dest="resume", action="store_const", const="require", default="auto",
                        help="continue an interrupted run (an error when there is none to continue). Without this "
                             "flag a run resumes automatically when the output folder holds the journal of an "
                             "interrupted run of the same tile, model and settings, and starts over otherwise")
    resume.add_argument("--no-resume", dest="resume", action="store_const", const="never",
                        help="discard the partial results of an interrupted run and start over")
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(run=_segment)

    models = sub.add_parser("models", help="list the models available by name")
    models.set_defaults(run=_models)

    sample = sub.add_parser("sample-tile", help="write a synthetic, physically plausible Sentinel-2 tile")
    sample.add_argument("output", type=Path, help="folder to write the tile into")
    sample.add_argument("--size", type=int, default=10980, help="10 m size in pixels (default 10980, a full tile)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--level", choices=("L2A", "L1C"), default="L2A")
    sample.add_argument("--layout", choices=("safe", "flat", "zip"), default="safe")
    sample.add_argument("--format", dest="fmt", choices=("gtiff", "jp2"), default="gtiff")
    sample.add_argument("--nodata-corner", action="store_true", help="DN 0 triangle in a corner, as at swath edges")
    sample.set_defaults(run=_sample_tile)

    bench = sub.add_parser("bench", help="benchmark the pipeline against its I/O and compute floors")
    bench.add_argument("--size", type=int, default=5040)
    bench.add_argument("--full", action="store_true", help="use a full 10980² tile")
    bench.set_defaults(run=_bench)

    from .batch import add_arguments as add_batch_arguments  # light: dask and torch load only when it runs

    batch = sub.add_parser("batch", help="segment many tiles, one Dask task each (local cluster or --scheduler)")
    add_batch_arguments(batch)
    batch.set_defaults(run=_batch)
    from .accuracy.cli import add_commands as add_accuracy_commands  # light: numpy only until a command runs
    add_accuracy_commands(sub)
    return parser


def _segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .pipeline import segment

    config = EngineConfig(chunk_size=args.chunk_size, batch_size=args.batch_size, device=args.device,
                          write_probs=args.probs, overwrite=args.overwrite, resume=args.resume, half=args.half)
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


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(size=10980 if args.full else args.size)


def _batch(args: argparse.Namespace) -> int:
    from .batch import cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
