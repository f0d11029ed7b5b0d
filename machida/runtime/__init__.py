"""One worker: its data plane and flow control (no I/O), and the asyncio channels around them.

In reading order:

* :mod:`~machida.runtime.flow` (no I/O): which inputs may be read now, and why not;
* :mod:`~machida.runtime.dataplane` (no I/O): a worker's messages, from a source or
  boundary read to a sink write and the batches for other workers;
* :mod:`~machida.runtime.channels`: the asyncio protocols of sources and the control
  channel, and the inputs flow control pauses together;
* :mod:`~machida.runtime.guard`: the cluster-secret handshake every link between
  workers opens with, and dialling;
* :mod:`~machida.runtime.boundary`: the asyncio halves of the boundaries between workers;
* :mod:`~machida.runtime.sink`: the sink connections;
* :mod:`~machida.runtime.listeners`: the listening sockets.

The worker process that puts them together is :mod:`machida.process`.
"""
