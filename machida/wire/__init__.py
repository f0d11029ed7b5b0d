"""Wire codecs: every byte format the runner and the tools speak, with no I/O.

Each module is sans-I/O: feed it bytes, get back every complete frame of the
read at once (earlier frames are kept when a later one is bad, and ``.error``
is set); ask it to encode, get bytes.

* :mod:`~machida.wire.auth`: the cluster-secret handshake that opens every control and data link;
* :mod:`~machida.wire.framing`: ``u32be length | payload``, the frame all channels share;
* :mod:`~machida.wire.source`: a source's frames, sized by the application's ``payload_length``;
* :mod:`~machida.wire.boundary`: the boundaries between workers: batches, acknowledgements,
  and the two halves the data plane keeps of each;
* :mod:`~machida.wire.control`: the control channel that forms and stops a cluster, one
  typed message per kind;
* :mod:`~machida.wire.external`: Wallaroo's external channel (Print, RotateLog, CleanShutdown);
* :mod:`~machida.wire.records`: the ``--metrics`` stats records.
"""
