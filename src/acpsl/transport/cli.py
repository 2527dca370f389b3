"""The ``acpsl serve`` and ``acpsl client`` subcommands (a plug-in of :mod:`acpsl.cli`).

``acpsl serve`` takes every ``acpsl train`` option (the run's configuration, sent to the
clients when they join) plus the network options; ``acpsl client --server HOST:PORT`` takes
only connection options and the local ``--data-dir``/``--device``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path
from typing import Any

from acpsl.errors import ConfigError

#: Default port of ``acpsl serve``.
DEFAULT_PORT = 50051
#: Copies of :mod:`acpsl.transport.security`'s values (that module imports gRPC, which the
#: parser must not: ``acpsl --help`` starts without it); a test keeps them equal.
TOKEN_ENV = "ACPSL_TOKEN"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20

log = logging.getLogger("acpsl.transport")


def _add_security(parser: argparse.ArgumentParser, *, server: bool) -> None:
    group = parser.add_argument_group("security")
    group.add_argument(
        "--token",
        default=None,
        help=f"shared token every call must carry (default: ${TOKEN_ENV}, else none)",
    )
    group.add_argument(
        "--token-file", default=None, metavar="FILE", help="read the shared token from FILE"
    )
    group.add_argument(
        "--tls-cert",
        default=None,
        metavar="PEM",
        help="this side's certificate chain"
        + (" (enables TLS)" if server else " (mutual TLS; with --tls-key)"),
    )
    group.add_argument("--tls-key", default=None, metavar="PEM", help="its private key")
    if server:
        group.add_argument(
            "--tls-client-ca",
            default=None,
            metavar="PEM",
            help="require client certificates signed by this CA (mutual TLS; default: off)",
        )
    else:
        group.add_argument(
            "--tls-ca",
            default=None,
            metavar="PEM",
            help="CA (or self-signed server certificate) to verify the server with; "
            "enables TLS (default: plaintext)",
        )
        group.add_argument(
            "--tls-server-name",
            default=None,
            metavar="NAME",
            help="name the server certificate must carry when it differs from HOST",
        )
    group.add_argument(
        "--max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        metavar="N",
        help=f"largest gRPC message sent or accepted (default: {DEFAULT_MAX_MESSAGE_BYTES})",
    )


def add_parser(subparsers: Any) -> None:
    """Add ``acpsl serve`` and ``acpsl client`` to the ``acpsl`` parser (only when gRPC,
    the optional extra ``acpsl[net]``, is installed; it is looked up, not imported)."""
    from acpsl.engine.cli_args import add_train_arguments

    if importlib.util.find_spec("grpc") is None:
        return

    serve = subparsers.add_parser(
        "serve",
        help="run the server side of split learning as a gRPC service",
        description="Serve a split-learning run: hold the server-side model, coordinate the "
        "clients' turns (sequential or splitfed), evaluate after each round and write "
        "OUT/records.jsonl (the in-process records plus bytes_wire_*), checkpoint.pt, "
        "config.toml, partition.json and summary.json.",
    )
    net = serve.add_argument_group("network")
    net.add_argument("--out", required=True, metavar="DIR", help="run directory")
    net.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint; without --config the settings "
        "are read from OUT/config.toml and only the options given override them",
    )
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    net.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"TCP port, 0 = any free one (default: {DEFAULT_PORT})",
    )
    net.add_argument(
        "--port-file", default=None, metavar="FILE", help="write the bound port to FILE"
    )
    net.add_argument(
        "--on-drop",
        choices=("skip", "wait"),
        default="skip",
        help="a client that drops mid-round: skip its turn, or wait --rejoin-timeout for it "
        "to come back (default: skip)",
    )
    net.add_argument(
        "--client-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="a client silent this long during its turn is dropped (default: 60)",
    )
    net.add_argument(
        "--join-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="wait this long for every client to join (default: 600)",
    )
    net.add_argument(
        "--rejoin-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="--on-drop wait: how long to wait for a dropped client (default: 120)",
    )
    _add_security(serve, server=True)
    add_train_arguments(serve)
    serve.set_defaults(func=run_serve)

    client = subparsers.add_parser(
        "client",
        help="run one split-learning client against an `acpsl serve` server",
        description="Join a server, receive the run's configuration, and train this client's "
        "data shard through the cut whenever the server gives it a turn.",
    )
    client.add_argument("--server", required=True, metavar="HOST:PORT", help="server address")
    client.add_argument(
        "--client-id",
        type=int,
        default=-1,
        metavar="ID",
        help="client id to take, 0-based (default: the lowest free one)",
    )
    client.add_argument(
        "--data-dir", default=None, help="this client's dataset root (default: the server's)"
    )
    client.add_argument(
        "--device", default=None, help="auto | cpu | cuda | cuda:N (default: the server's)"
    )
    client.add_argument(
        "--model",
        default=None,
        metavar="MODULE:FUNCTION",
        help="where this client finds the run's plug-in model, when its copy of the module "
        "lives elsewhere than the server's reference says (default: the server's)",
    )
    client.add_argument(
        "--dataset",
        default=None,
        metavar="MODULE:FUNCTION",
        help="where this client finds the run's plug-in dataset (default: the server's)",
    )
    client.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar per turn (default: the server's setting)",
    )
    client.add_argument(
        "--connect-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="keep retrying this long while the server is unreachable (default: 60)",
    )
    _add_security(client, server=False)
    client.set_defaults(func=run_client)


def check_port_free(host: str, port: int) -> None:
    """Fail early, in one line, when ``host:port`` is taken (before the run is built and
    before gRPC tries to bind and logs its own multi-line error).

    A probe socket with ``SO_REUSEADDR``, as gRPC binds (so a port with connections in
    TIME_WAIT counts as free, and a listening one as taken). ``port`` 0 is always free.

    Raises:
        ConfigError: the port is in use (exit code 2, like any option to change).
    """
    import errno
    import socket

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return  # a host that does not resolve: gRPC reports it
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    continue
                raise ConfigError(
                    f"cannot listen on {host}:{port}: the port is in use. Is another server "
                    "(acpsl serve) already running on that port? Stop it, or choose another "
                    "--port (0 picks a free one)"
                ) from None


def run_serve(args: argparse.Namespace) -> int:
    """``acpsl serve``: build the configuration, serve until the run is over."""
    from acpsl.engine.cli_args import config_from_args
    from acpsl.engine.commands import resume_config
    from acpsl.transport.backend import EngineServerBackend
    from acpsl.transport.coordinator import Timing
    from acpsl.transport.security import TlsFiles, resolve_token
    from acpsl.transport.server import ServerOptions, SplitServer

    # --resume continues the run in --out with its own settings (as `acpsl train --resume`)
    config = resume_config(args, out=Path(args.out)) if args.resume else config_from_args(args)
    check_port_free(args.host, args.port)
    tls = None
    if args.tls_cert or args.tls_key:
        tls = TlsFiles(cert=args.tls_cert, key=args.tls_key, ca=args.tls_client_ca)
    elif args.tls_client_ca:
        raise ConfigError("--tls-client-ca needs TLS: give --tls-cert and --tls-key too")
    token = resolve_token(token=args.token, token_file=args.token_file)
    if tls is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "serving on %s without TLS: payloads and the token travel in clear text", args.host
        )
    options = ServerOptions(
        host=args.host,
        port=args.port,
        token=token,
        tls=tls,
        max_message_bytes=args.max_message_bytes,
        on_drop=args.on_drop,
        timing=Timing(
            client_timeout=args.client_timeout,
            join_timeout=args.join_timeout,
            rejoin_timeout=args.rejoin_timeout,
        ),
    )
    backend = EngineServerBackend(config=config, out_dir=args.out, resume=args.resume)
    server = SplitServer(backend=backend, options=options)
    # SplitServer.start logs "listening on HOST:PORT" (once: the CLI does not repeat it)
    server.start(port_file=args.port_file)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
        raise
    error = server.coordinator.error
    if error is not None:
        raise error
    print(f"records: {args.out}/records.jsonl", flush=True)
    return 0


def run_client(args: argparse.Namespace) -> int:
    """``acpsl client``: join the server and train this client's turns until DONE."""
    from acpsl.transport.backend import EngineClientBackend
    from acpsl.transport.client import ClientOptions, SplitClient
    from acpsl.transport.security import TlsFiles, resolve_token

    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name:
        tls = TlsFiles(
            cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca, server_name=args.tls_server_name
        )
    options = ClientOptions(
        server=args.server,
        token=resolve_token(token=args.token, token_file=args.token_file),
        tls=tls,
        max_message_bytes=args.max_message_bytes,
        client_id=args.client_id,
        connect_timeout=args.connect_timeout,
    )
    backend = EngineClientBackend(
        data_dir=args.data_dir,
        device=args.device,
        progress=args.progress,
        model=args.model,
        dataset=args.dataset,
    )
    client = SplitClient(backend=backend, options=options)
    try:
        message = client.run()
    finally:
        client.close()
    print(
        f"acpsl client {backend.client_id}: {message} ({client.turns} turns, {client.evals} "
        f"evaluations, {client.wire_sent:,} B sent, {client.wire_received:,} B received)",
        flush=True,
    )
    return 0
