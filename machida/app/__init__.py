"""The application model: what a machida module is, and how a message goes through it.

:mod:`~machida.app.loader` imports the module as machida did and calls its
``application_setup(args)``; :mod:`~machida.app.plan` checks the action list
and freezes it into an :class:`~machida.app.plan.AppPlan` (pipelines, steps,
state partitions, key placement); :mod:`~machida.app.topology` compiles one
worker's share of the plan into calls of the user's objects; and
:mod:`~machida.app.callbacks` is the one error policy for those calls
(:mod:`~machida.app.python2` names the Python 2 syntax a module fails on). Nothing
here does I/O; the in-process driver (:mod:`machida.testing`) and the
runtime both use it.
"""
