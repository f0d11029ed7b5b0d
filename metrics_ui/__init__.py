"""A live Metrics UI for a machida cluster's ``--metrics`` stream.

Workers stream stats records (``docs/metrics.md``) to ``metrics_ui --listen``;
:mod:`metrics_ui.model` turns them into per-worker rates, one-second series
and latency percentiles; :mod:`metrics_ui.server` serves a page that charts
them, and the same data as JSON, from ``--http``. The page draws with
Chart.js, fetched at build time by :mod:`metrics_ui.vendor` and served
locally, so it needs no internet at run time. ``docs/metrics-ui.md`` is the
user's guide.
"""
