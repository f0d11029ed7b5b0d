"""Answers to the external channel's placement queries, from what a worker knows. No I/O.

Any worker answers: it knows the placement the initializer last sent it. The
shapes follow Wallaroo 0.5.0's queries, as JSON (keys that JSON has no type for,
such as ``bytes``, are given as their ``repr``):

* ``partition-query``: ``{"state_partitions": {state: {worker: [key, ...]}},
  "stateless_partitions": {}}``, every worker of the cluster listed;
* ``partition-count-query``: the same with the number of keys;
* ``cluster-status-query``: ``{"processing_messages": bool, "worker_names": [...],
  "worker_count": n}``.

Stateless steps run on the worker that owns the source, so there are no stateless
partitions to list.
"""

from __future__ import annotations

import json
from typing import Any

from machida.app.plan import Placement


def _key(key: Any) -> Any:
    return key if isinstance(key, (str, int, float, bool)) or key is None else repr(key)


def partitions(placement: Placement | None, keys: dict[str, tuple]) -> str:
    """Which worker owns which key of each state."""
    states: dict[str, dict[str, list]] = {}
    if placement is not None:
        for name, owners in placement.owners:
            by_worker: dict[str, list] = {worker: [] for worker in placement.workers}
            for index, owner in enumerate(owners):
                by_worker.setdefault(owner, []).append(_key(keys[name][index]))
            states[name] = by_worker
    return json.dumps({"state_partitions": states, "stateless_partitions": {}})


def partition_counts(placement: Placement | None) -> str:
    """How many keys of each state each worker owns."""
    counts = placement.counts() if placement is not None else {}
    return json.dumps({"state_partitions": counts, "stateless_partitions": {}})


def cluster_status(processing: bool, workers: list[str]) -> str:
    return json.dumps({"processing_messages": processing, "worker_names": workers,
                       "worker_count": len(workers)})  # fmt: skip
