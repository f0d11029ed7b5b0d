"""The control plane: forming a cluster, keeping it together, and taking it down.

* :mod:`~machida.cluster.node`: what the control plane may ask of the worker it
  steers (a :class:`typing.Protocol`; :class:`machida.process.Process` implements it);
* :mod:`~machida.cluster.membership` (no I/O): the initializer's member list,
  who may join it, and who is ready;
* :mod:`~machida.cluster.quiescence` (no I/O): when polling rounds show that
  nothing is in flight any more;
* :mod:`~machida.cluster.role`: what both roles share: the dispatch of typed
  control messages, the external channel's requests, the end of a clean shutdown;
* :mod:`~machida.cluster.initializer` and :mod:`~machida.cluster.member`: the
  two roles, over the control channel (:mod:`machida.wire.control`);
* :mod:`~machida.cluster.shutdown`: the initializer's clean-shutdown coordinator;
* :mod:`~machida.cluster.secret`: the cluster secret's file, found or created.
"""
