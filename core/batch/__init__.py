"""Many tiles, one Dask task each: the runner behind ``s2seg batch`` and ``s2seg:segmenttiles`` (docs/design.md §9).

Every tile (a .SAFE folder, its .zip, or a folder of band files) becomes one task
that runs :func:`s2seg.core.pipeline.segment` into ``OUT/<tile name>/`` on a Dask
``distributed`` worker. Without a scheduler address a ``LocalCluster`` is started,
sized for the device (one worker per CUDA GPU; on a CPU the cores are split between
workers and each worker's torch gets its share, so workers do not oversubscribe);
with an address the tasks go to that cluster, whose workers must see the inputs
and the output folder at the same paths (shared storage).

The runner never stops on a tile's error: the tile is reported as failed with the
engine's message (and, for an unexpected exception, its traceback) and the others go
on. A tile whose report exists (the engine writes it last, atomically) is complete and
skipped on a re-run; a tile that was interrupted is resumed by the engine's own journal
(``EngineConfig.resume``, "auto" by default: used when tile, model and settings match,
else the tile starts over). At the end the outcomes are written to ``OUT/s2seg_batch.json``
and ``OUT/s2seg_batch.html``.

One module per job:

* :mod:`.results` — ``TileJob``, ``TileOutcome``, ``BatchResult`` and the status names;
* :mod:`.jobs` — inputs (paths, globs, ``@list.txt``) and each tile's output folder;
* :mod:`.cluster` — local cluster sizing (``local_cluster_plan``) and start-up;
* :mod:`.task` — ``run_tile``, the per-tile task on a worker (model cache, skip, resume, progress);
* :mod:`.driver` — ``run_batch``: the cluster, submitting the tiles, progress, cancel;
* :mod:`.summary` — the table, the summary line, ``s2seg_batch.json`` / ``.html``;
* :mod:`.command` — ``s2seg batch`` (arguments and the terminal front end).

Nothing here imports qgis; dask and torch are imported only when a batch runs. The names
below are the package's public interface (the QGIS algorithm ``algorithms/segment_tiles.py``
imports ``FAILED, OK, SKIPPED, run_batch, summary_line, write_summary`` from here).
"""
from __future__ import annotations

from ..config import usable_cores
from .cluster import WORKER_MEMORY_BYTES, ClusterPlan, local_cluster_plan
from .command import add_arguments, cli_main
from .driver import CANCEL_GRACE_S, CONNECT_TIMEOUT_S, run_batch
from .jobs import expand_inputs, plan_jobs, tile_folder_name
from .results import CANCELLED, FAILED, OK, SKIPPED, BatchResult, LogCallback, ProgressCallback, TileJob, TileOutcome
from .summary import SUMMARY_HTML, SUMMARY_JSON, format_table, summary_html, summary_line, write_summary
from .task import PROGRESS_INTERVAL_S, completed_report, run_tile

__all__ = [
    "CANCELLED", "FAILED", "OK", "SKIPPED", "SUMMARY_HTML", "SUMMARY_JSON", "WORKER_MEMORY_BYTES", "CANCEL_GRACE_S",
    "CONNECT_TIMEOUT_S", "PROGRESS_INTERVAL_S", "BatchResult", "ClusterPlan", "LogCallback", "ProgressCallback",
    "TileJob", "TileOutcome", "add_arguments", "cli_main", "completed_report", "expand_inputs", "format_table",
    "local_cluster_plan", "plan_jobs", "run_batch", "run_tile", "summary_html", "summary_line", "tile_folder_name",
    "usable_cores", "write_summary",
]
