"""A machida-compatible runner for Wallaroo's class-based Python API (October 2017).

The package loads an application module written for machida, turns its
``application_setup(args)`` into a frozen plan (:mod:`machida.app.plan`), and
carries messages through the user's objects (:mod:`machida.app.pipeline`), either
in-process (:mod:`machida.testing`) or on a cluster of worker processes.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
