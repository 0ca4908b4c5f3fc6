"""The ``s2seg`` command line: the options ``segment`` and ``batch`` share (one registry), the engine
settings they pass on, and how errors are reported (one line for user errors, with the option to
change; a traceback for bugs)."""
from __future__ import annotations

import argparse
import types
from pathlib import Path

import pytest

from s2seg.core import cli, options
from s2seg.core.batch import FAILED, BatchResult, TileJob, TileOutcome, command, run_tile
from s2seg.core.config import FRONT_END_MASK, EngineConfig
from s2seg.core.errors import DeviceUnavailable, InputError, OutputsExist, ResumeImpossible


def subparser(name: str) -> argparse.ArgumentParser:
    parser = cli._parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def option_actions(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    """Option string → what argparse does with it (dest, default, type, choices, const, action class)."""
    return {flag: (a.dest, a.default, a.type, tuple(a.choices or ()), a.const, type(a).__name__, a.help)
            for a in parser._actions for flag in a.option_strings if flag not in ("-h", "--help")}


# --- one registry of shared options ------------------------------------------------------------------
def test_segment_and_batch_take_the_same_engine_options_with_the_same_defaults():
    segment, batch = option_actions(subparser("segment")), option_actions(subparser("batch"))
    shared = set(segment) & set(batch)
    for flag in ("--model", "--chunk-size", "--batch-size", "--device", "--half", "--probs", "--overwrite",
                 "--resume", "--no-resume", "--quiet", "--debug"):
        assert flag in shared, flag
        assert segment[flag] == batch[flag], flag
    # Only batch's cluster options differ.
    assert set(batch) - set(segment) == {"--scheduler", "--workers", "--threads-per-worker"}
    assert set(segment) - set(batch) == set()


def test_defaults_are_the_engine_config_defaults():
    """All but the mask: the command line masks clouds, shadows and snow unless told not to (as QGIS)."""
    for name in ("segment", "batch"):
        args = subparser(name).parse_args(["T", "O"])
        assert options.engine_config(args) == EngineConfig(mask=FRONT_END_MASK) != EngineConfig(), name


def test_every_engine_option_reaches_the_config():
    argv = ["--chunk-size", "480", "--batch-size", "8", "--device", "cpu", "--half", "--probs", "--overwrite",
            "--no-resume"]
    expected = EngineConfig(chunk_size=480, batch_size=8, device="cpu", half=True, write_probs=True, overwrite=True,
                            resume="never", mask=FRONT_END_MASK)
    for name in ("segment", "batch"):
        args = subparser(name).parse_args(["T", "O", *argv])
        assert options.engine_config(args) == expected, name
    assert options.engine_config(subparser("batch").parse_args(["T", "O", "--resume"])).resume == "require"
    with pytest.raises(SystemExit):
        subparser("batch").parse_args(["T", "O", "--resume", "--no-resume"])


def test_batch_passes_half_and_resume_to_the_engine_for_each_tile(tmp_path, monkeypatch, capsys):
    """Command line → run_batch's config → run_tile → the engine's config of the tile."""
    seen: dict = {}

    def fake_run_batch(inputs, output, **kwargs):
        seen.update(kwargs)
        return BatchResult(outcomes=[], seconds=0.0, cluster="none")

    monkeypatch.setattr(command, "run_batch", fake_run_batch)
    assert cli.main(["batch", "T.SAFE", str(tmp_path / "out"), "--half", "--no-resume", "--device", "cpu", "--quiet"]) == 0
    config = seen["config"]
    assert (config.half, config.resume, config.device) == (True, "never", "cpu")

    import s2seg.core.pipeline as pipeline

    engine_configs = []

    def fake_segment(source, output_dir, model=None, config=None, **kwargs):
        engine_configs.append(config)
        return types.SimpleNamespace(device="cpu", n_chunks=1, resumed_chunks=0)

    monkeypatch.setattr(pipeline, "segment", fake_segment)
    job = TileJob(source=tmp_path / "T.SAFE", name="T", output_dir=tmp_path / "out" / "T")
    outcome = run_tile(job, config=config)
    assert outcome.status == "ok", outcome.message
    (tile_config,) = engine_configs
    assert (tile_config.half, tile_config.resume, tile_config.overwrite) == (True, "never", True)


# --- errors ------------------------------------------------------------------------------------------
@pytest.fixture
def failing_segment(monkeypatch):
    """Make ``s2seg segment`` raise the given exception from inside the engine's entry point."""
    import s2seg.core.pipeline as pipeline

    def install(exc: BaseException) -> None:
        def segment(*args, **kwargs):
            raise exc

        monkeypatch.setattr(pipeline, "segment", segment)

    return install


@pytest.mark.parametrize("error, wording", [
    (OutputsExist("the output folder /o holds the products of a finished run of T"), "use --overwrite to replace them"),
    (ResumeImpossible("no interrupted run of T to continue in /o"), "run without --resume to start over"),
    (DeviceUnavailable("CUDA is not available to torch on this machine"), "use --device auto or --device cpu"),
])
def test_option_errors_are_one_line_with_the_cli_wording(failing_segment, capsys, tmp_path, error, wording):
    failing_segment(error)
    assert cli.main(["segment", str(tmp_path / "T"), str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err == f"s2seg: error: {error}; {wording}\n"


def test_other_user_errors_are_one_line_without_wording(failing_segment, capsys, tmp_path):
    failing_segment(InputError("band B03 of /t is missing"))
    assert cli.main(["segment", str(tmp_path / "T"), str(tmp_path / "o"), "--quiet"]) == 1
    assert capsys.readouterr().err == "s2seg: error: band B03 of /t is missing\n"


def test_unexpected_error_prints_its_traceback(failing_segment, capsys, tmp_path):
    failing_segment(ZeroDivisionError("division by zero in a stage"))
    assert cli.main(["segment", str(tmp_path / "T"), str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert f"{Path(__file__).name}\", line" in err  # where it was raised: the stub above
    last = err.rstrip().splitlines()[-1]
    assert last.startswith("s2seg: internal error: ZeroDivisionError: division by zero in a stage")


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_prints_the_traceback_of_user_errors(failing_segment, capsys, tmp_path, where):
    failing_segment(InputError("band B03 of /t is missing"))
    argv = ["segment", str(tmp_path / "T"), str(tmp_path / "o"), "--quiet"]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err
    assert err.rstrip().splitlines()[-1] == "s2seg: error: band B03 of /t is missing"


def test_help_says_how_errors_are_reported(capsys):
    with pytest.raises(SystemExit):
        cli.main(["segment", "--help"])
    out = capsys.readouterr().out
    assert "--debug" in out and "traceback" in out


def test_batch_shows_option_wording_and_tracebacks_of_failed_tiles(tmp_path, monkeypatch, capsys):
    base = dict(source="/in/T.SAFE", output_dir="/out/T", status=FAILED)
    outcomes = [
        TileOutcome("T1", **base, message="CUDA is not available", error_type="DeviceUnavailable"),
        TileOutcome("T2", **base, message="ValueError: bad (at stage.py:12)", error_type="ValueError",
                    traceback='Traceback (most recent call last):\n  File "stage.py", line 12, in run\nValueError: bad\n'),
    ]
    monkeypatch.setattr(command, "run_batch",
                        lambda inputs, output, **kw: BatchResult(outcomes=outcomes, seconds=1.0, cluster="none"))
    assert cli.main(["batch", "T.SAFE", str(tmp_path / "out"), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "T1: failed: CUDA is not available; use --device auto or --device cpu" in captured.out
    assert 'File "stage.py", line 12' in captured.err
    assert outcomes[0].message == "CUDA is not available"  # the outcome (and the summary) keep the neutral message


def test_option_wording_is_keyed_on_the_type():
    assert options.with_option_hint("m", OutputsExist("m")) == "m; use --overwrite to replace them"
    assert options.with_option_hint("m", "ResumeImpossible") == "m; run without --resume to start over"
    assert options.with_option_hint("m", InputError("m")) == "m"
    # Subclasses of the option errors get the same wording.
    sub = type("NoGpu", (DeviceUnavailable,), {})
    assert options.with_option_hint("m", sub("m")).endswith("use --device auto or --device cpu")


def test_building_the_parser_imports_neither_torch_nor_dask():
    """``s2seg --help`` and argument errors stay instant: torch and dask load only when a command runs."""
    import subprocess
    import sys

    code = ("import sys; from s2seg.core import cli; cli._parser(); "
            "print(sorted(m for m in ('torch', 'dask', 'distributed', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
