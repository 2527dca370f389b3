"""Transport security: TLS credentials, shared-token authentication and message-size limits.

The server checks a shared token on every call (metadata ``authorization: Bearer <token>``)
with a constant-time comparison, and rejects a call without the right token with
``UNAUTHENTICATED`` before any handler runs; the server keeps serving. TLS is optional: a
server certificate (the clients verify it against a CA file) and, optionally, client
certificates the server verifies (mutual TLS). The maximum message size bounds both
directions; gRPC itself rejects a larger message with ``RESOURCE_EXHAUSTED``.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from acpsl.errors import ConfigError

#: Metadata key that carries the shared token.
TOKEN_METADATA_KEY = "authorization"
#: Environment variable read when no token is given on the command line.
TOKEN_ENV = "ACPSL_TOKEN"
#: Default maximum gRPC message size: 64 MiB, well above one ResNet-18 cut batch (1.6 MB).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20


def resolve_token(*, token: str | None, token_file: str | None) -> str | None:
    """The shared token from ``token``, else ``token_file``, else ``$ACPSL_TOKEN``, else ``None``.

    Raises:
        ConfigError: the token file cannot be read or is empty.
    """
    if token:
        return token
    if token_file:
        try:
            text = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read token file {token_file}: {exc}") from None
        if not text:
            raise ConfigError(f"token file {token_file} is empty; put the shared token in it")
        return text
    return os.environ.get(TOKEN_ENV) or None


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata that carries ``token`` (empty when there is no token)."""
    return ((TOKEN_METADATA_KEY, f"Bearer {token}"),) if token else ()


def _abort_handler(code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, details)

    return grpc.unary_unary_rpc_method_handler(abort)


class TokenAuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Rejects every call whose ``authorization`` metadata is not ``Bearer <token>``.

    Args:
        token: the shared secret the clients must present.
    """

    def __init__(self, *, token: str) -> None:
        if not token:
            raise ConfigError("the shared token must be a non-empty string")
        self._expected = f"Bearer {token}".encode()
        self._reject = _abort_handler(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or wrong token: give the client the server's shared token "
            f"(--token, --token-file or ${TOKEN_ENV})",
        )

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        presented = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == TOKEN_METADATA_KEY:
                presented = value.encode() if isinstance(value, str) else bytes(value)
                break
        if not hmac.compare_digest(presented, self._expected):
            return self._reject
        return continuation(handler_call_details)


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{what} file {path} is not PEM (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one side's TLS setup.

    Attributes:
        cert: this side's certificate chain (server: required; client: for mutual TLS).
        key: this side's private key (with ``cert``).
        ca: certificates to verify the other side with (client: the server's CA or the
            self-signed server certificate; server: the CA of client certificates, which
            makes client certificates required).
        server_name: client only: the name to check the server certificate against when it
            differs from the host dialled (``grpc.ssl_target_name_override``).
    """

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError(
                "TLS needs both a certificate and its private key (--tls-cert and --tls-key)"
            )


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Server TLS credentials; client certificates are required when ``tls.ca`` is set.

    Raises:
        ConfigError: the certificate or key is missing or not PEM.
    """
    if tls.cert is None or tls.key is None:
        raise ConfigError("a TLS server needs --tls-cert and --tls-key")
    cert = _read(tls.cert, "TLS certificate")
    key = _read(tls.key, "TLS key")
    ca = _read(tls.ca, "TLS client CA")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    """Client TLS credentials (verifying the server with ``tls.ca``, else the system roots)."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca, "TLS CA"),
        private_key=_read(tls.key, "TLS client key"),
        certificate_chain=_read(tls.cert, "TLS client certificate"),
    )


def message_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC options bounding messages in both directions to ``max_message_bytes``.

    Raises:
        ConfigError: the limit is not a positive integer below 2 GiB (gRPC's own bound).
    """
    if isinstance(max_message_bytes, bool) or not 0 < int(max_message_bytes) < 2**31:
        raise ConfigError(
            f"invalid max message size {max_message_bytes!r}: give a positive number of bytes "
            "below 2 GiB"
        )
    limit = int(max_message_bytes)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
    ]
