"""s2seg's benchmark harness and measurement tools (repository only: not shipped in the plugin zip).

``make bench`` runs :mod:`s2seg.benchmarks.bench`; ``measure_gpu``, ``measure_batch`` and
``measure_models`` are stand-alone scripts (``python -m s2seg.benchmarks.measure_gpu …``).
Engine internals are reached only through :mod:`s2seg.benchmarks.engine_parts`.
"""
import s2seg.core  # noqa: E402,F401 - first: the engine's OpenMP wait policy, set before anything loads torch
