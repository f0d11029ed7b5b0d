"""Metrics: the counters a worker bumps, and the stream that carries them to ``--metrics``.

* :mod:`machida.metrics.stats`: the counters and the latency :class:`Histogram` (no I/O);
* :mod:`machida.wire.records`: the record codec, :func:`encode_record` and :class:`RecordDecoder`;
* :mod:`machida.metrics.client`: :class:`MetricsClient`, the worker's side of the stream;
* :mod:`machida.metrics.receiver`: :func:`serve_records`, the receiving end (tests, Metrics UI).

The record format is documented in ``docs/metrics.md``. The client and the receiver
use asyncio; they are imported on first use, so that code that does no I/O (the
pipeline, the data plane, the in-process driver) can import the counters from
this package without loading the event loop's machinery.
"""

from __future__ import annotations

import importlib
from typing import Any

from machida.metrics.stats import (
    BINS,
    PIPELINE_COUNTERS,
    Histogram,
    PipelineStats,
    Stats,
    StepStats,
    bin_of,
    upper_bound,
)
from machida.wire.records import FORMAT, MAX_RECORD, RecordDecoder, encode_record

__all__ = [
    "BINS",
    "FORMAT",
    "MAX_RECORD",
    "PIPELINE_COUNTERS",
    "Histogram",
    "MetricsClient",
    "PipelineStats",
    "RecordDecoder",
    "RecordServer",
    "Stats",
    "StepStats",
    "bin_of",
    "encode_record",
    "serve_records",
    "upper_bound",
]

# Names of the asyncio half, and the module of each.
_STREAMING = {"MetricsClient": "client", "RecordServer": "receiver", "serve_records": "receiver"}


def __getattr__(name: str) -> Any:
    if name in _STREAMING:
        return getattr(importlib.import_module(f"machida.metrics.{_STREAMING[name]}"), name)
    raise AttributeError(f"module 'machida.metrics' has no attribute {name!r}")
