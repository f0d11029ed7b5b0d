"""A Flink cluster's REST API, the few calls a run needs: free task slots, and its own jobs.

Used with ``--jobmanager``: before a rescale, to tell whether the cluster has
the task slots the new parallelism needs; when a run is started again after a
crash, to cancel the jobs its previous process left running (their sources can
no longer reach the ingress). Plain HTTP with the standard library.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

TIMEOUT_S = 5.0


class RestError(Exception):
    """The REST API did not answer as expected; the message says what happened."""


def _call(address: tuple[str, int], path: str, method: str = "GET") -> Any:
    host, port = address
    request = urllib.request.Request(f"http://{host}:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            body = response.read()
    except OSError as err:
        raise RestError(f"{method} http://{host}:{port}{path}: {err}") from None
    return json.loads(body) if body.strip() else {}


def free_slots(address: tuple[str, int]) -> int:
    return int(_call(address, "/overview")["slots-available"])


def jobs(address: tuple[str, int]) -> list[dict]:
    """Every job the cluster knows: ``jid``, ``name``, ``state``, ..."""
    return list(_call(address, "/jobs/overview")["jobs"])


def cancel(address: tuple[str, int], job_id: str) -> None:
    _call(address, f"/jobs/{job_id}?mode=cancel", "PATCH")
