"""Many tiles, one Dask task each: the runner behind ``s2seg batch`` and ``s2seg:segmenttiles`` (DESIGN §9).

Every tile (a .SAFE folder, its .zip, or a folder of band files) becomes one task
that runs :func:`s2seg.core.pipeline.segment` into ``OUT/<tile name>/`` on a Dask
``distributed`` worker. Without a scheduler address a ``LocalCluster`` is started,
sized for the device (one worker per CUDA GPU; on a CPU the cores are split between
workers and each worker's torch gets its share, so workers do not oversubscribe);
with an address the tasks go to that cluster, whose workers must see the inputs
and the output folder at the same paths (shared storage).

The runner never stops on a tile's error: the tile is reported as failed with the
engine's message and the others go on. A tile whose report exists (the engine
writes it last, atomically) is complete and skipped on a re-run; a tile that was
interrupted is resumed by the engine's own journal (``EngineConfig.resume``, "auto"
by default: used when tile, model and settings match, else the tile starts over). At the end the outcomes are written to
``OUT/s2seg_batch.json`` and ``OUT/s2seg_batch.html``.

Nothing here imports qgis; dask and torch are imported only when a batch runs.
"""
from __future__ import annotations

import contextlib
import copy
import glob
import hashlib
import html
import importlib.util
import json
import logging
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from .config import EngineConfig
from .errors import Cancelled, ConfigError, InputError, OutputError, S2SegError
from .preview import PREVIEW_SUFFIX

OK, SKIPPED, FAILED, CANCELLED = "ok", "skipped", "failed", "cancelled"
SUMMARY_JSON = "s2seg_batch.json"
SUMMARY_HTML = "s2seg_batch.html"
#: Memory one CPU worker may need for a full tile (chunk queues, blend buffers, the model);
#: the local cluster never starts more workers than the machine's memory holds at this rate.
WORKER_MEMORY_BYTES = 4 * 2**30
#: Seconds between two in-tile progress events sent by a worker (per tile).
PROGRESS_INTERVAL_S = 0.5
#: After a cancel, how long to wait for running tiles to stop before reporting them cancelled anyway.
CANCEL_GRACE_S = 60
#: How long to try reaching a scheduler given by address.
CONNECT_TIMEOUT_S = 20
_GLOB_CHARS = ("*", "?", "[")
_TILE_SUFFIXES = (".zip", ".SAFE")

ProgressCallback = Callable[[float, str], None]
LogCallback = Callable[[str], None]


# --- what to run ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TileJob:
    """One tile and the folder its products go to."""

    source: Path
    name: str
    output_dir: Path


@dataclass
class TileOutcome:
    """What happened to one tile. ``result`` is the engine's ``SegmentResult`` for tiles run now."""

    name: str
    source: str
    output_dir: str
    status: str
    seconds: float = 0.0
    device: str = ""
    message: str = ""
    worker: str = ""
    resumed: bool = False
    result: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "result"}


@dataclass(frozen=True)
class ClusterPlan:
    """How many workers, torch threads per worker and GPUs a local cluster gets."""

    workers: int
    threads_per_worker: int
    gpus: int = 0

    def describe(self) -> str:
        kind = f"{self.gpus} GPU(s), one per worker" if self.gpus else "CPU"
        return f"local cluster: {self.workers} worker(s) × {self.threads_per_worker} torch thread(s), {kind}"


@dataclass
class BatchResult:
    """The outcome of every tile, in input order, and where the summaries are."""

    outcomes: list[TileOutcome]
    seconds: float
    cluster: str
    summary_json: Path | None = None
    summary_html: Path | None = None

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[TileOutcome]:
        return [o for o in self.outcomes if o.status == FAILED]

    @property
    def cancelled(self) -> bool:
        return any(o.status == CANCELLED for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        """0 when every tile is done, 1 when any failed, 130 when cancelled (as ``s2seg segment``)."""
        return 130 if self.cancelled else 1 if self.failed else 0


# --- inputs ---------------------------------------------------------------------------------------
def expand_inputs(items: Iterable[str | Path]) -> list[Path]:
    """Tile paths from paths, globs and ``@list.txt`` files (one path or glob per line, ``#`` comments).

    Relative lines of a list file are relative to the list file's folder. A glob that
    matches nothing is an error (a typo must not silently shrink a batch); a plain path
    is kept even when missing, so the run reports it as a failed tile. Duplicates
    (same resolved path) are dropped, the first occurrence keeps its place.
    """
    found: list[Path] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = os.path.normcase(str(path.resolve()))
        if key not in seen:
            seen.add(key)
            found.append(path)

    def visit(item: str, base: Path | None) -> None:
        text = item.strip()
        if not text:
            return
        if text.startswith("@"):
            list_file = Path(text[1:]).expanduser()
            if base is not None and not list_file.is_absolute():
                list_file = base / list_file
            try:
                lines = list_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise InputError(f"cannot read the list of tiles {list_file}: {exc.strerror or exc}") from None
            for line in lines:
                if line.strip() and not line.lstrip().startswith("#"):
                    visit(line, list_file.parent)
            return
        pattern = os.path.expanduser(text)
        if base is not None and not os.path.isabs(pattern):
            pattern = str(base / pattern)
        if any(c in pattern for c in _GLOB_CHARS):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise InputError(f"no tile matches {text!r}")
            for match in matches:
                add(Path(match))
        else:
            add(Path(pattern))

    for item in items:
        visit(str(item), None)
    if not found:
        raise InputError("no tiles given")
    return found


def tile_folder_name(source: Path) -> str:
    """``S2B_MSIL2A_…_T32UNU_….SAFE.zip`` → ``S2B_MSIL2A_…_T32UNU_…``: the input's name without .zip/.SAFE."""
    name = source.name or source.resolve().name
    changed = True
    while changed:
        changed = False
        for suffix in _TILE_SUFFIXES:
            if name.upper().endswith(suffix.upper()) and len(name) > len(suffix):
                name, changed = name[: -len(suffix)], True
    return name or "tile"


def plan_jobs(sources: Sequence[Path], output_root: str | Path) -> list[TileJob]:
    """One job per tile; the output folder is named after the input (unique per product in ESA naming).

    Inputs that share a name (two ``IMG_DATA`` folders, copies of one product) get a suffix
    derived from their absolute path. A tile keeps the folder an earlier run gave it, whatever
    else is in the batch now, so re-running a subset still finds its complete tiles.
    """
    root = Path(output_root).expanduser()
    bases = [tile_folder_name(Path(s)) for s in sources]
    names = []
    for source, base in zip(sources, bases):
        hashed = f"{base}-{_path_digest(Path(source))}"
        if (root / hashed).is_dir():
            names.append(hashed)
        elif _made_from(root / base, Path(source)):
            names.append(base)
        else:
            names.append(hashed if bases.count(base) > 1 else base)
    for i, (source, name) in enumerate(zip(sources, names)):
        if names.count(name) > 1:  # e.g. an earlier lone run took the plain name for another input
            names[i] = f"{bases[i]}-{_path_digest(Path(source))}"
    return [TileJob(source=Path(s), name=n, output_dir=root / n) for s, n in zip(sources, names)]


def _path_digest(path: Path) -> str:
    return hashlib.sha1(os.path.normcase(str(path.resolve())).encode("utf-8")).hexdigest()[:8]


def _made_from(folder: Path, source: Path) -> bool:
    """Does ``folder`` hold the engine report of a run on ``source``?"""
    if not folder.is_dir():
        return False
    for report_path in folder.glob("*_report.json"):
        try:
            recorded = json.loads(report_path.read_text(encoding="utf-8"))["tile"]["source"]
            if Path(recorded).resolve() == source.resolve():
                return True
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return False


# --- cluster sizing -------------------------------------------------------------------------------
def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _cuda_devices(device: str) -> int:
    if device == "cpu":
        return 0
    if sys.platform.startswith("linux") and not glob.glob("/dev/nvidia[0-9]*"):
        return 0  # no NVIDIA device node: no need to import torch here just to learn that
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken torch install: plan for the CPU, the tile will say why
        return 0


def local_cluster_plan(n_tiles: int, device: str = "auto", workers: int = 0, threads_per_worker: int = 0,
                       cores: int | None = None, gpus: int | None = None, memory: int | None = None) -> ClusterPlan:
    """Workers × torch threads for a local cluster; 0 means choose.

    * CUDA (``device`` auto/cuda with GPUs): one worker per GPU (never more workers than GPUs
      unless asked), the CPU cores split between them for reading and writing.
    * CPU: one worker per core, one torch thread each — measured the faster split here (see the
      README: 2 workers × 1 thread did more tiles per hour than 1 × 2 on two cores, because a
      tile's reading, blending and writing run partly single-threaded and overlap with another
      tile's inference). Never more workers than tiles (idle workers' cores go to the others'
      threads), nor than the memory holds at :data:`WORKER_MEMORY_BYTES` each.
    """
    if workers < 0 or threads_per_worker < 0:
        raise ConfigError(f"workers and threads per worker must be 0 (automatic) or positive, got {workers} and {threads_per_worker}")
    cores = cores or usable_cores()
    gpus = _cuda_devices(device) if gpus is None else gpus
    n_tiles = max(1, n_tiles)
    if gpus:
        w = workers or min(gpus, n_tiles)
        t = threads_per_worker or max(1, cores // w)
        return ClusterPlan(w, t, gpus)
    memory = _total_memory() if memory is None else memory
    by_memory = max(1, memory // WORKER_MEMORY_BYTES) if memory else cores
    if workers:
        w = workers
    elif threads_per_worker:
        w = max(1, cores // threads_per_worker)
    else:
        w = cores
    if not workers:
        w = max(1, min(w, n_tiles, by_memory))
    t = threads_per_worker or max(1, cores // w)
    return ClusterPlan(w, t, 0)


# --- on the worker --------------------------------------------------------------------------------
_MODEL_CACHE: dict[tuple, Any] = {}
_MODEL_LOCK = threading.Lock()
_MODEL_CACHE_SIZE = 2


def _cached_model(model: Any, device_name: str) -> Any:
    """The model loaded once per worker process and device (keyed by name or path + mtime)."""
    from .models import load_model, pick_device, resolve_card

    if not isinstance(model, (str, Path)):
        return model
    device = pick_device(device_name)
    path = Path(str(model)).expanduser()
    stamp = path.stat().st_mtime_ns if path.exists() else None
    key = (str(model), stamp, str(device))
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            while len(_MODEL_CACHE) >= _MODEL_CACHE_SIZE:  # a long-lived worker of a shared cluster
                _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
            _MODEL_CACHE[key] = load_model(resolve_card(model), device)
        return _MODEL_CACHE[key]


def completed_report(output_dir: Path, model_name: str | None = None, write_probs: bool | None = None) -> dict | None:
    """The engine report of a finished tile in ``output_dir``, or None when the tile is not complete.

    Complete means: the report exists (written last, atomically), every product it lists
    exists, and it was made with the same model and probability setting as asked now.
    """
    if not output_dir.is_dir():
        return None
    for report_path in sorted(output_dir.glob("*_report.json")):
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        products = report.get("products") or {}
        if not products or not all(Path(p).exists() for p in products.values()):
            continue
        if model_name is not None and (report.get("model") or {}).get("name") != model_name:
            continue
        if write_probs is not None and bool((report.get("config") or {}).get("write_probs")) != write_probs:
            continue
        return report
    return None


def _leftovers(output_dir: Path) -> bool:
    """Temporary products or a journal of an interrupted run?"""
    if not output_dir.is_dir():
        return False
    return any(".part" in p.name or "journal" in p.name.lower() for p in output_dir.iterdir())


def engine_supports_resume() -> bool:
    return any(f.name == "resume" for f in fields(EngineConfig))


def _worker_context() -> tuple[Any, int]:
    """The distributed worker running this task (None outside one) and its task slots."""
    try:
        from distributed import get_worker

        worker = get_worker()
        return worker, max(1, int(getattr(worker.state, "nthreads", 1) or 1))
    except Exception:  # noqa: BLE001 - called outside a worker (tests, serial use)
        return None, 1


def run_tile(job: TileJob, model: Any = "builtin", config: EngineConfig | None = None, torch_threads: int = 0,
             force: bool = False, topic: str | None = None, cancel_event: str | None = None,
             host_slots: dict[str, int] | None = None, cancel: threading.Event | None = None,
             progress: ProgressCallback | None = None) -> TileOutcome:
    """Segment one tile into ``job.output_dir``; never raises for a tile's own error (returns ``failed``).

    On a Dask worker it sets torch's threads: ``torch_threads``, or else the host's cores divided
    by the task slots of all workers on this host (``host_slots``: host → slots, as the client
    saw them; this worker's own slots when its host is not listed), so that tiles running side
    by side on one machine share its cores instead of oversubscribing them. It sends throttled
    progress events under ``topic`` and watches the distributed Event ``cancel_event``. Outside
    a worker ``progress``/``cancel`` are used directly.
    """
    started = time.perf_counter()
    config = config or EngineConfig()
    cancel = cancel or threading.Event()
    worker, slots = _worker_context()
    base = dict(name=job.name, source=str(job.source), output_dir=str(job.output_dir),
                worker=str(getattr(worker, "address", "") or ""))

    def emit(payload: dict) -> None:
        if worker is not None and topic:
            try:
                worker.log_event(topic, {"tile": job.name, **payload})
            except Exception:  # noqa: BLE001 - progress is best effort
                pass

    stop_watch = threading.Event()
    try:
        import torch

        if worker is not None:
            host = _host_of(str(getattr(worker, "address", "")))
            threads = torch_threads or max(1, usable_cores() // max(slots, (host_slots or {}).get(host, 0)))
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        if cancel_event and worker is not None:
            _watch_cancel(cancel_event, cancel, stop_watch)

        from .models import resolve_card
        from .pipeline import segment

        card = resolve_card(model)
        report = None if force else completed_report(job.output_dir, card.name, config.write_probs)
        if report is not None:
            return TileOutcome(**base, status=SKIPPED, seconds=time.perf_counter() - started,
                               device=str(report.get("device", "")), message="already complete")
        # The tile's folder belongs to the batch and the tile is not complete: replace what is there, except
        # an interrupted run's journaled chunks, which the engine's resume (mode "auto" unless the caller
        # chose otherwise) continues from when tile, model and settings match.
        tile_config = config.with_(overwrite=True)
        leftovers = _leftovers(job.output_dir)
        emit({"event": "start", "leftovers": leftovers and engine_supports_resume()})
        last = [0.0]

        def on_progress(fraction: float, message: str) -> None:
            if progress is not None:
                progress(fraction, message)
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL_S or fraction >= 1.0:
                last[0] = now
                emit({"event": "progress", "fraction": float(fraction), "message": str(message)})

        def on_log(message: str) -> None:
            emit({"event": "log", "message": str(message)})

        loaded = _cached_model(model, config.device)
        result = segment(job.source, job.output_dir, model=loaded, config=tile_config, progress=on_progress,
                         cancel=cancel, log=on_log)
        resumed = int(getattr(result, "resumed_chunks", 0) or 0)
        return TileOutcome(**base, status=OK, seconds=time.perf_counter() - started, device=result.device,
                           resumed=resumed > 0, message=f"resumed {resumed} of {result.n_chunks} chunk(s)" if resumed else "",
                           result=result)
    except Cancelled as exc:
        return TileOutcome(**base, status=CANCELLED, seconds=time.perf_counter() - started, message=str(exc))
    except S2SegError as exc:
        return TileOutcome(**base, status=FAILED, seconds=time.perf_counter() - started, message=str(exc))
    except Exception as exc:  # noqa: BLE001 - one tile's bug must not stop the batch; keep where it happened
        where = traceback.extract_tb(exc.__traceback__)[-1:]
        at = f" (at {Path(where[0].filename).name}:{where[0].lineno})" if where else ""
        return TileOutcome(**base, status=FAILED, seconds=time.perf_counter() - started,
                           message=f"{type(exc).__name__}: {exc}{at}")
    finally:
        stop_watch.set()


def _host_of(address: str) -> str:
    """``tcp://10.0.0.5:40123`` → ``10.0.0.5``."""
    return address.split("://", 1)[-1].rsplit(":", 1)[0]


def _prepare_worker(model: Any, torch_threads: int = 0) -> str:
    """Import the engine (torch …), set torch's threads and resolve the model: the card's name.

    Run on every local worker before the tiles (so tile times measure tiles, and a bad model
    is one error instead of one per tile), and on one worker of an existing cluster (which
    also proves its workers can import s2seg). The client itself never imports torch.
    """
    import torch

    from . import pipeline  # noqa: F401 - importing is half the point
    from .models import resolve_card

    if torch_threads and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    return resolve_card(model).name


def _watch_cancel(name: str, cancel: threading.Event, stop: threading.Event) -> None:
    """Set ``cancel`` when the client sets the distributed Event ``name`` (polled, so engine threads stay free)."""
    from distributed import Event, get_client

    client = get_client()
    event = Event(name, client=client)

    def watch() -> None:
        while not stop.is_set() and not cancel.is_set():
            try:
                if event.is_set():
                    cancel.set()
                    return
            except Exception:  # noqa: BLE001 - scheduler gone: the worker is being shut down anyway
                return
            stop.wait(0.25)

    threading.Thread(target=watch, name="s2seg-batch-cancel", daemon=True).start()


# --- on the client --------------------------------------------------------------------------------
class _SpawnSettings:
    """How local worker processes are spawned, for the life of a local cluster.

    * with ``python`` (inside QGIS ``sys.executable`` is the QGIS binary, not a Python);
    * without re-running the caller's main script: ``multiprocessing`` "spawn" re-executes
      ``__main__`` from its file in every child, and a script without an ``if __name__ ==
      "__main__"`` guard (the ``s2seg`` entry script, a user's) would start the batch again in
      each worker. The tasks live in this module, so the workers never need ``__main__``.
    """

    def __init__(self, active: bool, python: str | None) -> None:
        self.active = active
        self.python = python if active else None
        self._previous_exe: str | None = None
        self._main_file: str | None = None

    def __enter__(self) -> "_SpawnSettings":
        if not self.active:
            return self
        import multiprocessing.spawn as spawn

        if self.python:
            self._previous_exe = spawn.get_executable()
            spawn.set_executable(self.python)
        main = sys.modules.get("__main__")
        if main is not None and getattr(main, "__spec__", None) is None and getattr(main, "__file__", None):
            self._main_file = main.__file__
            del main.__file__
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.active:
            return
        import multiprocessing.spawn as spawn

        if self._previous_exe is not None:
            spawn.set_executable(self._previous_exe)
        main = sys.modules.get("__main__")
        if self._main_file is not None and main is not None:
            main.__file__ = self._main_file


@contextlib.contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Start local workers with SIGINT ignored (inherited through exec, and Python keeps it so).

    Ctrl-C in a terminal reaches the whole process group: the workers would die with a
    KeyboardInterrupt mid-tile and leave the scheduler waiting. Ignoring it there lets the
    client alone handle it, by cancelling the tiles cleanly. Only from the main thread
    (``signal`` allows nothing else; elsewhere, e.g. in QGIS, there is no terminal anyway).
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


#: Dask's nanny sets these in every worker before it starts (``distributed.nanny.pre-spawn-environ``).
#: The thread counts become the plan's; ``MALLOC_TRIM_THRESHOLD_`` is dropped: it turns off glibc's
#: dynamic mmap threshold, so every large numpy/torch buffer of the engine is mmap'ed and zero-filled
#: afresh — measured here it made a tile ~1.5× slower, with five times the system time.
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _worker_environ(threads: int) -> dict[str, Any]:
    return {"MALLOC_TRIM_THRESHOLD_": None, **{name: str(threads) for name in _THREAD_ENV}}


def _start_local_cluster(plan: ClusterPlan, processes: bool) -> Any:
    import dask
    from distributed import LocalCluster

    environ = _worker_environ(plan.threads_per_worker)
    env = {k: v for k, v in environ.items() if v is not None}
    # ":0": any free port (the scheduler's HTTP server starts even without a dashboard; 8787 may be taken).
    options: dict[str, Any] = dict(threads_per_worker=1, processes=processes, dashboard_address=":0",
                                   silence_logs=logging.ERROR)
    if not processes:
        return LocalCluster(n_workers=plan.workers, **options)
    # The nanny copies pre-spawn variables into this process's environment before spawning; put it back.
    saved = {name: os.environ.get(name) for name in environ}
    try:
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in environ.items()}):
            return _new_local_cluster(plan, options, env)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _new_local_cluster(plan: ClusterPlan, options: dict[str, Any], env: dict[str, str]) -> Any:
    from distributed import LocalCluster

    if not plan.gpus:
        return LocalCluster(n_workers=plan.workers, env=env, **options)

    class GpuLocalCluster(LocalCluster):
        """One worker process per GPU, each seeing only its own (``CUDA_VISIBLE_DEVICES``)."""

        def new_worker_spec(self) -> dict:
            spec = super().new_worker_spec()
            name, worker_spec = next(iter(spec.items()))
            worker_spec = copy.deepcopy(worker_spec)
            gpu = len(self.worker_spec) % plan.gpus
            worker_spec.setdefault("options", {})["env"] = {**env, "CUDA_VISIBLE_DEVICES": str(gpu)}
            return {name: worker_spec}

    cluster = GpuLocalCluster(n_workers=0, env=env, **options)
    cluster.scale(plan.workers)  # adds specs one at a time through new_worker_spec
    cluster.sync(cluster._correct_state)  # start them now, while the spawn environment is set
    return cluster


def run_batch(inputs: Iterable[str | Path], output_root: str | Path, model: Any = "builtin",
              config: EngineConfig | None = None, scheduler: str | None = None, workers: int = 0,
              threads_per_worker: int = 0, force: bool = False, processes: bool = True,
              progress: ProgressCallback | None = None, log: LogCallback | None = None,
              cancel: threading.Event | None = None, on_tile: Callable[[TileOutcome, int, int], None] | None = None,
              worker_python: str | None = None) -> BatchResult:
    """Segment every tile of ``inputs`` into ``output_root/<tile name>/``, one Dask task per tile.

    ``scheduler``: address of a running Dask scheduler (``tcp://host:8786``); None starts a
    ``LocalCluster`` sized by :func:`local_cluster_plan` (``processes=False`` runs its workers as
    threads of this process, sharing one torch thread pool). ``force`` re-runs complete tiles.
    ``progress(fraction, message)`` and ``log(message)`` are called on the calling thread;
    ``on_tile(outcome, done, total)`` as each tile finishes. Setting ``cancel`` cancels queued
    tiles and stops running ones within one engine batch. Raises :class:`S2SegError` only for
    problems of the whole batch (no tiles, bad output folder, bad model, unreachable scheduler,
    workers without s2seg).
    """
    started = time.perf_counter()
    config = config or EngineConfig()
    log = log or (lambda message: None)
    progress = progress or (lambda fraction, message: None)
    cancel = cancel or threading.Event()
    output_root = Path(output_root).expanduser()
    jobs = plan_jobs(expand_inputs(inputs), output_root)
    try:
        output_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {output_root}: {exc.strerror or exc}") from None
    model_arg = str(model) if isinstance(model, Path) else model

    import distributed

    run_id = uuid.uuid4().hex[:12]
    topic, event_name = f"s2seg-batch-{run_id}", f"s2seg-batch-cancel-{run_id}"
    cluster = client = None
    torch_threads = threads_per_worker
    # Spawn settings hold for the cluster's whole life: a nanny restarts a dead worker the same way.
    with _SpawnSettings(scheduler is None and processes, worker_python):
        try:
            if scheduler:
                description = f"scheduler {scheduler}"
                try:
                    client = distributed.Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
                except (OSError, TimeoutError) as exc:
                    raise S2SegError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
                workers_info = client.scheduler_info().get("workers", {})
                log(f"connected to {scheduler}: {len(workers_info)} worker(s), "
                    f"{sum(w.get('nthreads', 0) for w in workers_info.values())} task slot(s)")
                _check_workers(client, model_arg, torch_threads, every=False)
            else:
                plan = local_cluster_plan(len(jobs), config.device, workers, threads_per_worker)
                description = plan.describe()
                torch_threads = plan.threads_per_worker
                log(f"starting a {description} for {len(jobs)} tile(s)")
                t0 = time.perf_counter()
                with _workers_ignore_sigint():
                    cluster = _start_local_cluster(plan, processes)
                    client = distributed.Client(cluster)
                    client.wait_for_workers(plan.workers, timeout=120)
                _check_workers(client, model_arg, torch_threads, every=True)
                log(f"local cluster ready in {time.perf_counter() - t0:.1f} s")
                if importlib.util.find_spec("bokeh") is not None:
                    log(f"Dask dashboard: {client.dashboard_link}")
            outcomes = _drive(client, jobs, model_arg, config, torch_threads, force, topic, event_name,
                              progress, log, cancel, on_tile)
        finally:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
    result = BatchResult(outcomes=outcomes, seconds=time.perf_counter() - started, cluster=description)
    try:
        result.summary_json, result.summary_html = write_summary(result, output_root)
    except OSError as exc:
        log(f"warning: cannot write the batch summary in {output_root}: {exc.strerror or exc}")
    return result


def _check_workers(client: Any, model: Any, torch_threads: int, every: bool) -> None:
    """:func:`_prepare_worker` on every worker (``every``) or on one; its errors become the batch's."""
    try:
        if every:
            # In parallel on all workers, in their event loops (nothing else runs there yet).
            client.run(_prepare_worker, model, torch_threads)
        else:
            client.submit(_prepare_worker, model, pure=False).result()
    except S2SegError:
        raise
    except ImportError as exc:
        raise S2SegError(f"the Dask workers cannot import the s2seg engine ({type(exc).__name__}: {exc}); "
                         "install s2seg and its requirements in the workers' environment") from None


def _drive(client: Any, jobs: list[TileJob], model: Any, config: EngineConfig, torch_threads: int, force: bool,
           topic: str, event_name: str, progress: ProgressCallback, log: LogCallback, cancel: threading.Event,
           on_tile: Callable[[TileOutcome, int, int], None] | None) -> list[TileOutcome]:
    """Submit one task per tile and follow them to the end (on the calling thread)."""
    from distributed import Event, as_completed

    host_slots: dict[str, int] = {}
    for address, info in client.scheduler_info().get("workers", {}).items():
        host = _host_of(address)
        host_slots[host] = host_slots.get(host, 0) + int(info.get("nthreads", 1) or 1)
    events: "queue.SimpleQueue[dict]" = queue.SimpleQueue()
    client.subscribe_topic(topic, lambda event: events.put(event[1]))
    stop_event = Event(event_name, client=client)
    futures = {}
    for job in jobs:
        future = client.submit(run_tile, job, model, config, torch_threads, force, topic, event_name, host_slots,
                               key=f"s2seg-tile-{job.name}-{uuid.uuid4().hex[:8]}", pure=False)
        futures[future] = job
    by_name = {job.name: job for job in jobs}
    outcomes: dict[str, TileOutcome] = {}
    running: dict[str, float] = {}
    total = len(jobs)
    cancelling = False
    cancelled_at = 0.0
    last_message = ""

    def report() -> None:
        nonlocal last_message
        fraction = (len(outcomes) + sum(running.values())) / total
        message = f"{len(outcomes)}/{total} tile(s) done, {len(running)} running"
        progress(min(fraction, 1.0), message if message != last_message else "")
        last_message = message

    def drain() -> None:
        changed = False
        while True:
            try:
                event = events.get_nowait()
            except queue.Empty:
                break
            name = event.get("tile")
            if name not in by_name or name in outcomes:
                continue
            kind = event.get("event")
            if kind == "start":
                running[name] = 0.0
                log(f"{name}: started" + (" (found an interrupted run: resuming it if tile, model and settings match)"
                                          if event.get("leftovers") else ""))
            elif kind == "progress":
                running[name] = float(event.get("fraction", 0.0))
            elif kind == "log":
                log(f"{name}: {event.get('message', '')}")
            changed = True
        if changed:
            report()

    try:
        report()
        pending = as_completed(list(futures))
        while not pending.is_empty():
            if cancel.is_set() and not cancelling:
                cancelling = True
                log("cancelling: queued tiles are dropped, running tiles stop within one batch")
                cancelled_at = time.monotonic()
                stop_event.set()
                client.cancel([f for f in futures if futures[f].name not in running and f.status == "pending"])
            if cancelling and time.monotonic() - cancelled_at > CANCEL_GRACE_S:
                log(f"{total - len(outcomes)} tile(s) did not stop within {CANCEL_GRACE_S} s of the cancel; giving up on them")
                client.cancel([f for f, job in futures.items() if job.name not in outcomes])
                break
            done = pending.next_batch(block=False)
            if not done:
                drain()
                time.sleep(0.1)
                continue
            drain()
            for future in done:
                job = futures[future]
                outcome = _outcome_of(future, job)
                outcomes[job.name] = outcome
                running.pop(job.name, None)
                if on_tile is not None:
                    on_tile(outcome, len(outcomes), total)
                report()
    finally:
        try:
            client.unsubscribe_topic(topic)
        except Exception:  # noqa: BLE001 - the client may be closing
            pass
    return [outcomes.get(job.name) or TileOutcome(job.name, str(job.source), str(job.output_dir), CANCELLED)
            for job in jobs]


def _outcome_of(future: Any, job: TileJob) -> TileOutcome:
    base = dict(name=job.name, source=str(job.source), output_dir=str(job.output_dir))
    if future.status == "cancelled":
        return TileOutcome(**base, status=CANCELLED, message="cancelled before it started")
    if future.status == "error":
        exc = future.exception()
        # KilledWorker: the worker process died (out of memory, a crash in a native library) several times.
        return TileOutcome(**base, status=FAILED, message=f"{type(exc).__name__}: {exc}")
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - e.g. the result could not be sent back
        return TileOutcome(**base, status=FAILED, message=f"{type(exc).__name__}: {exc}")


# --- summaries ------------------------------------------------------------------------------------
def format_table(outcomes: Sequence[TileOutcome]) -> str:
    """A plain-text table: tile, status, seconds, device, output folder; then the errors."""
    header = ("tile", "status", "seconds", "device", "output folder")
    rows = [(o.name, o.status, f"{o.seconds:.1f}", o.device or "-", o.output_dir) for o in outcomes]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i != 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    text = [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    problems = [o for o in outcomes if o.status in (FAILED, CANCELLED) and o.message]
    if problems:
        text.append("")
        text.extend(f"{o.name}: {o.status}: {o.message}" for o in problems)
    return "\n".join(text)


def summary_line(result: BatchResult) -> str:
    done = result.count(OK)
    rate = done / result.seconds * 3600 if result.seconds > 0 and done else 0.0
    return (f"{len(result.outcomes)} tile(s): {done} ok, {result.count(SKIPPED)} skipped, {len(result.failed)} failed"
            + (f", {result.count(CANCELLED)} cancelled" if result.cancelled else "")
            + f" in {result.seconds:.1f} s ({rate:.0f} tiles/hour) on {result.cluster}")


def write_summary(result: BatchResult, output_root: Path) -> tuple[Path, Path]:
    """``s2seg_batch.json`` and ``s2seg_batch.html`` in ``output_root`` (written atomically)."""
    data = {"summary": summary_line(result), "seconds": round(result.seconds, 3), "cluster": result.cluster,
            "counts": {s: result.count(s) for s in (OK, SKIPPED, FAILED, CANCELLED)},
            "tiles": [o.to_dict() for o in result.outcomes]}
    json_path = output_root / SUMMARY_JSON
    html_path = output_root / SUMMARY_HTML
    _atomic_write(json_path, json.dumps(data, indent=2) + "\n")
    _atomic_write(html_path, summary_html(result, output_root))
    return json_path, html_path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 80em; }
h1 { font-size: 1.4em; } table { border-collapse: collapse; margin: .5em 0; }
th, td { padding: .25em .7em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; }
.ok { color: #1e7b34; } .skipped { color: #555; } .failed, .cancelled { color: #b03a2e; font-weight: bold; }
.msg { color: #b03a2e; font-family: monospace; font-size: .9em; white-space: pre-wrap; }
"""


def summary_html(result: BatchResult, output_root: Path) -> str:
    """A self-contained page: one row per tile with links to its report and preview (relative links)."""
    e = lambda value: html.escape(str(value), quote=True)  # noqa: E731

    def link(path: Path, label: str) -> str:
        try:
            rel = Path(os.path.relpath(path, output_root)).as_posix()
        except ValueError:
            rel = path.as_uri()
        return f'<a href="{e(rel)}">{e(label)}</a>'

    rows = []
    for o in result.outcomes:
        folder = Path(o.output_dir)
        links = []
        if o.status in (OK, SKIPPED) and folder.is_dir():
            reports = sorted(folder.glob("*_report.html")) or sorted(folder.glob("*_report.json"))
            if reports:
                links.append(link(reports[0], "report"))
            previews = sorted(folder.glob("*" + PREVIEW_SUFFIX))
            if previews:
                links.append(link(previews[0], "preview"))
        message = f'<div class="msg">{e(o.message)}</div>' if o.status in (FAILED, CANCELLED) and o.message else ""
        rows.append(
            f'<tr><td>{e(o.name)}{message}</td><td class="{e(o.status)}">{e(o.status)}</td>'
            f'<td class="num">{o.seconds:.1f}</td><td>{e(o.device or "–")}</td>'
            f'<td>{link(folder, o.name + "/")}</td><td>{" · ".join(links)}</td></tr>'
        )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>s2seg batch</title>"
        f"<style>{_CSS}</style></head><body>\n<h1>s2seg batch</h1>\n<p>{e(summary_line(result))}</p>\n"
        "<table><thead><tr><th>Tile</th><th>Status</th><th>Seconds</th><th>Device</th><th>Output folder</th>"
        "<th>Files</th></tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>\n</body></html>\n"
    )


# --- command line ---------------------------------------------------------------------------------
def add_arguments(parser: Any) -> None:
    """The ``s2seg batch`` arguments (the segment options plus the cluster's)."""
    from .config import DEVICES

    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="tiles: .SAFE folders, .zip files, band folders, globs ('tiles/*.SAFE') or @list.txt (one per line)")
    parser.add_argument("output", type=Path, metavar="OUT", help="output folder; each tile goes to OUT/<tile name>/")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="address of a running Dask scheduler (tcp://host:8786); default: start a local cluster")
    parser.add_argument("--workers", type=int, default=0, help="local cluster: worker processes (0 = automatic)")
    parser.add_argument("--threads-per-worker", type=int, default=0,
                        help="torch threads per worker (0 = automatic: local cores / workers)")
    parser.add_argument("--model", default="builtin", help="model name (see `s2seg models`), card .json, BigEarthNet v2 folder, .onnx or TorchScript .pt")
    parser.add_argument("--chunk-size", type=int, default=0, help="chunk edge in 10 m pixels (0 = automatic)")
    parser.add_argument("--batch-size", type=int, default=0, help="patches per forward pass (0 = automatic)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--probs", action="store_true", help="also write per-class probabilities")
    parser.add_argument("--overwrite", action="store_true", help="re-run tiles that are already complete")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def cli_main(args: Any) -> int:
    """Run ``s2seg batch`` from parsed arguments; prints progress, the table and the summary line."""
    import signal

    from tqdm import tqdm

    config = EngineConfig(chunk_size=args.chunk_size, batch_size=args.batch_size, device=args.device,
                          write_probs=args.probs)
    cancel = threading.Event()
    bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}] {postfix}",
               disable=args.quiet, file=sys.stderr)

    def progress(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction, 1)
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    def on_tile(outcome: TileOutcome, done: int, total: int) -> None:
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
        result = run_batch(args.inputs, args.output, model=args.model, config=config, scheduler=args.scheduler,
                           workers=args.workers, threads_per_worker=args.threads_per_worker, force=args.overwrite,
                           progress=progress, log=log, cancel=cancel, on_tile=on_tile)
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
    print(format_table(result.outcomes))
    print(summary_line(result))
    if result.summary_html is not None:
        print(f"summary: {result.summary_html}")
    return result.exit_code
