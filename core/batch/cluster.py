"""How big a local Dask cluster is (workers × torch threads, GPUs) and how it is started."""
from __future__ import annotations

import contextlib
import copy
import glob
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Iterator

from ..config import usable_cores
from ..errors import ConfigError

#: Memory one CPU worker may need for a full tile (chunk queues, blend buffers, the model);
#: the local cluster never starts more workers than the machine's memory holds at this rate.
WORKER_MEMORY_BYTES = 4 * 2**30


@dataclass(frozen=True)
class ClusterPlan:
    """How many workers, torch threads per worker and GPUs a local cluster gets."""

    workers: int
    threads_per_worker: int
    gpus: int = 0

    def describe(self) -> str:
        kind = f"{self.gpus} GPU(s), one per worker" if self.gpus else "CPU"
        return f"local cluster: {self.workers} worker(s) × {self.threads_per_worker} torch thread(s), {kind}"


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



# --- starting a local cluster -------------------------------------------------------------------
class _SpawnSettings:
    """How local worker processes are spawned, for the life of a local cluster.

    * with ``python`` (inside QGIS ``sys.executable`` is the QGIS binary, not a Python);
    * without re-running the caller's main script: ``multiprocessing`` "spawn" re-executes
      ``__main__`` from its file in every child, and a script without an ``if __name__ ==
      "__main__"`` guard (the ``s2seg`` entry script, a user's) would start the batch again in
      each worker. The tasks live in :mod:`s2seg.core.batch.task`, so the workers never need ``__main__``.
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


