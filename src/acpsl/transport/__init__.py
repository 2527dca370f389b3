"""Split learning over the network: a gRPC server (``acpsl serve``) and clients (``acpsl client``).

Optional part of acpsl (``pip install acpsl[net]``): importing :mod:`acpsl` never imports
gRPC; this package does. Modules, one job each:

* ``splitlearning.proto`` and its generated ``splitlearning_pb2*`` modules: the wire protocol
  (payload bytes in ``bytes`` fields, no pickle);
* :mod:`~acpsl.transport.security`: TLS, shared-token authentication, message-size limits;
* :mod:`~acpsl.transport.coordinator`: who trains when, sessions, drop policy and timeouts;
* :mod:`~acpsl.transport.service`: the gRPC servicer (RPC -> coordinator, errors -> statuses);
* :mod:`~acpsl.transport.server` / :mod:`~acpsl.transport.client`: the two processes;
* :mod:`~acpsl.transport.backend`: the in-process engine behind both;
* :mod:`~acpsl.transport.cli`: the ``serve`` and ``client`` subcommands.
"""
