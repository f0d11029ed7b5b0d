"""A machida-compatible runner for Wallaroo's class-based Python API (October 2017).

The package loads an application module written for machida, turns its
``application_setup(args)`` into a frozen plan, and carries messages through
the user's objects, either in-process (:mod:`machida.testing`) or on a
cluster of worker processes (the ``machida`` command). Its layers, whose
imports form no cycle (``tests/test_layers.py`` checks it, and that the codecs,
the model and the cores of the runtime and the cluster load neither asyncio
nor socket):

* :mod:`machida.wire`: the byte formats (sources, boundaries, control,
  external channel, metrics records), sans-I/O codecs;
* :mod:`machida.app`: the application model: loader, plan, the compiled
  pipeline that calls the user's objects, and their error policy;
* :mod:`machida.metrics`: counters (no I/O) and the ``--metrics`` stream;
* :mod:`machida.durability`: recovery files, the event log, resilience;
* :mod:`machida.runtime`: one worker process: its data plane and flow
  control (no I/O), the asyncio protocols around them, and the process shell;
* :mod:`machida.cluster`: the control plane: forming the cluster and taking
  it down, steering the process through a declared interface;
* :mod:`machida.cli`: the command line; :mod:`machida.testing`: the
  in-process driver, on the same data plane as the workers.

``machida/lib/wallaroo.py`` is the ``wallaroo`` API module applications import.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
