"""The gRPC server of a networked run (``acpsl serve``): bind, serve, drive the rounds, stop."""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from acpsl.errors import ConfigError
from acpsl.transport import splitlearning_pb2_grpc as pb_grpc
from acpsl.transport.coordinator import Coordinator, ServerBackend, Timing
from acpsl.transport.security import (
    DEFAULT_MAX_MESSAGE_BYTES,
    TlsFiles,
    TokenAuthInterceptor,
    message_options,
    server_credentials,
)
from acpsl.transport.service import SplitLearningService

log = logging.getLogger("acpsl.transport")


@dataclass(frozen=True)
class ServerOptions:
    """How the server listens and whom it lets in.

    Attributes:
        host: address to bind (``127.0.0.1`` for loopback, ``0.0.0.0`` for every interface).
        port: TCP port; 0 picks a free one (see :attr:`SplitServer.port`).
        token: shared token every call must carry; ``None`` disables token checks.
        tls: TLS files (``None``: plaintext, only sensible on loopback or a trusted network).
        max_message_bytes: largest message accepted or sent.
        on_drop: drop policy, ``skip`` or ``wait``.
        timing: time limits of the coordinator.
    """

    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None
    tls: TlsFiles | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    on_drop: str = "skip"
    timing: Timing = field(default_factory=Timing)


class SplitServer:
    """A started gRPC server plus the coordinator's driver thread.

    Args:
        backend: the training side (:class:`~acpsl.transport.backend.EngineServerBackend`).
        options: listening and security options.
    """

    def __init__(self, *, backend: ServerBackend, options: ServerOptions) -> None:
        if not 0 <= options.port < 65536:
            raise ConfigError(f"invalid port {options.port}: use 0 (any free port) to 65535")
        self.options = options
        self._backend = backend
        self.coordinator = Coordinator(
            backend=backend, on_drop=options.on_drop, timing=options.timing
        )
        interceptors = [TokenAuthInterceptor(token=options.token)] if options.token else []
        # Idle clients hold a thread each in NextTask's long poll; leave room for the rest.
        workers = 2 * backend.num_clients + 8
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="acpsl-rpc"),
            interceptors=interceptors,
            # gRPC sets SO_REUSEPORT by default: a second server on the same port would bind
            # too and steal half the connections. Off, a taken port fails to bind.
            options=[*message_options(options.max_message_bytes), ("grpc.so_reuseport", 0)],
        )
        pb_grpc.add_SplitLearningServicer_to_server(
            SplitLearningService(coordinator=self.coordinator), self._server
        )
        address = f"{options.host}:{options.port}"
        try:
            if options.tls is not None:
                self.port = self._server.add_secure_port(address, server_credentials(options.tls))
            else:
                self.port = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            self.port = 0
            reason = str(exc).split(";")[0].rstrip(". ")  # drop gRPC's "set GRPC_VERBOSITY"
        except BaseException:  # bad TLS files: the run directory is not ours to keep
            self._release()
            raise
        else:
            reason = "the port is in use or not allowed"
        if self.port == 0:
            self._release()
            raise ConfigError(
                f"cannot listen on {address}: {reason}. Is another server (acpsl serve) "
                "already running on that port? Stop it, or choose another --port (0 picks a "
                "free one)"
            )
        self._driver = threading.Thread(
            target=self.coordinator.run, name="acpsl-driver", daemon=True
        )

    @property
    def address(self) -> str:
        """``host:port`` the server listens on."""
        return f"{self.options.host}:{self.port}"

    def start(self, *, port_file: str | None = None) -> None:
        """Start serving and driving; writes the bound port to ``port_file`` if given."""
        self._server.start()
        if port_file:
            tmp = Path(f"{port_file}.tmp")
            tmp.write_text(f"{self.port}\n", encoding="utf-8")
            tmp.replace(port_file)
        log.info("acpsl serve: listening on %s", self.address)
        self._driver.start()

    def wait(self, *, timeout: float | None = None, grace: float = 3.0) -> bool:
        """Block until the run is over, then give clients ``grace`` s to read DONE and stop.

        Returns:
            Whether the run is over (``False`` only when ``timeout`` passed first).
        """
        self._driver.join(timeout=timeout)
        if self._driver.is_alive():
            return False
        # Clients learn the run is over from their next NextTask; let them ask once more.
        threading.Event().wait(min(grace, self.coordinator.timing.poll_s + 1.0))
        self._server.stop(grace=1.0).wait()
        self._release()
        return True

    def _release(self) -> None:
        """Let go of the backend's run directory (its lock), if it holds one."""
        close = getattr(self._backend, "close", None)
        if callable(close):
            close()

    def stop(self) -> None:
        """Stop driving and serving now (finished rounds keep their records and checkpoint)."""
        self.coordinator.stop()
        if self._driver.is_alive():
            self._driver.join(timeout=5.0)
        self._server.stop(grace=0.5).wait()
        self._release()
