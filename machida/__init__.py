"""A machida-compatible runner for Wallaroo's class-based Python API (October 2017).

The package loads an application module written for machida, turns its
``application_setup(args)`` into a frozen plan, and carries messages through
the user's objects, either in-process (:mod:`machida.testing`) or on a
cluster of worker processes (the ``machida`` command). Its layers are ranked;
each imports only those below it, and none forms a cycle
(``tests/test_layers.py`` checks both, and that the codecs, the model and the
cores of the runtime and the cluster load neither asyncio nor socket):

0. the foundation: :mod:`machida.errors` (one exception per meaning),
   :mod:`machida.console` (the console lines and the one ``Error:`` line),
   :mod:`machida.options` and :mod:`machida.config` (the command line),
   :mod:`machida.aio` (asyncio helpers), :mod:`machida.files` (a directory made
   durable);
1. :mod:`machida.wire`: the byte formats (sources, boundaries, control,
   external channel, metrics records), sans-I/O codecs and typed messages;
2. :mod:`machida.metrics` (counters, the ``--metrics`` stream) and
   :mod:`machida.external` (the external channel, served alike by the runner
   and machida-flink);
3. :mod:`machida.app`: the application model: loader, plan, the compiled
   topology that calls the user's objects, and their error policy;
4. :mod:`machida.durability`: recovery files, the event log, resilience;
5. :mod:`machida.runtime`: one worker: its data plane and flow control (no
   I/O) and the asyncio channels around them;
6. :mod:`machida.cluster`: the control plane: forming the cluster and taking
   it down, steering the worker through a declared interface;
7. :mod:`machida.process` (the worker process), :mod:`machida.testing` (the
   in-process driver, on the same data plane as the workers) and
   :mod:`machida.cli` (the command line).

``machida/lib/wallaroo.py`` is the ``wallaroo`` API module applications import.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
