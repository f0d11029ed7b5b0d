"""The parts of ``integration_test``, Wallaroo's 2017 test harness, in the order a run uses them.

* :mod:`.inputs`: what the senders send, as framed records (a range, files, a list);
* :mod:`.workers`: port choice, the worker command lines, and the worker processes;
* :mod:`.sinks`: the sink receivers that count and keep each record, and saving them;
* :mod:`.stopping`: when a run is over: records counted, a delay, or idle metrics;
* :mod:`.compare`: ``--validation-cmp``, the received records against the expected ones;
* :mod:`.harness`: one run from start to end, returning what the command line reports.

``wallaroo_tools.integration_test`` is the command line over them.
"""
