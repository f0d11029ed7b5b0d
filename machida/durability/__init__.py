"""Durability: what a worker keeps on disk so that it can start again where it was.

:mod:`~machida.durability.recovery` writes and reads the recovery files (the
topology a process joined); :mod:`~machida.durability.eventlog` is the event
log's file format; :mod:`~machida.durability.resilience` is resilience mode:
it logs state snapshots and applied sequence numbers before acknowledgements,
restores them after a crash, and rotates the log.
"""
