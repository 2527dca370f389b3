"""The gRPC servicer: maps each RPC onto the :class:`~acpsl.transport.coordinator.Coordinator`.

Every refusal becomes a gRPC status with a message saying what was wrong, and the server
keeps serving: a malformed or unusable payload (:class:`~acpsl.errors.PayloadError`: bad
bytes, an empty batch, labels outside the classes or not matching the samples, NaN or
infinite values, a payload that does not fit the model) is ``INVALID_ARGUMENT``; a call
outside the caller's turn, or a ``FinishEval`` before every test batch, is
``FAILED_PRECONDITION``; an unknown or expired session is ``PERMISSION_DENIED``; any other
exception is a server bug, logged with its traceback and answered ``INTERNAL``. (A missing
or wrong token is refused earlier, by :class:`~acpsl.transport.security.TokenAuthInterceptor`,
and an oversized message by gRPC itself with ``RESOURCE_EXHAUSTED``.) Every refusal is
counted in :attr:`Coordinator.rejected <acpsl.transport.coordinator.Coordinator.rejected>`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from acpsl.errors import PayloadError
from acpsl.transport import splitlearning_pb2 as pb
from acpsl.transport import splitlearning_pb2_grpc as pb_grpc
from acpsl.transport.coordinator import Coordinator, RpcReject

log = logging.getLogger("acpsl.transport")

Req = TypeVar("Req")
Rep = TypeVar("Rep")


class SplitLearningService(pb_grpc.SplitLearningServicer):  # type: ignore[misc]
    """The ``acpsl.transport.SplitLearning`` service over one coordinator.

    Args:
        coordinator: the run's coordinator.
    """

    def __init__(self, *, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def _call(
        self, name: str, fn: Callable[[Req], Rep], request: Req, context: grpc.ServicerContext
    ) -> Rep:
        try:
            return fn(request)
        except RpcReject as exc:
            code, message = exc.code, str(exc)
        except PayloadError as exc:
            code, message = "INVALID_ARGUMENT", f"malformed payload: {exc}"
        except (ValueError, RuntimeError) as exc:
            # A well-formed payload that does not fit the model (wrong shape, wrong labels
            # count) fails inside torch; the caller sent bad data, the server is fine.
            code, message = "INVALID_ARGUMENT", f"payload rejected: {exc}"
        except Exception as exc:  # a bug: report it, count it, keep serving
            log.exception("%s failed", name)
            code, message = "INTERNAL", f"server error: {type(exc).__name__}: {exc}"
        self.coordinator.count_rejection(code)
        log.warning("%s rejected (%s): %s", name, code, message)
        context.abort(getattr(grpc.StatusCode, code), message)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def GetConfig(self, request: pb.ConfigRequest, context: grpc.ServicerContext) -> pb.ConfigReply:
        return self._call("GetConfig", self.coordinator.get_config, request, context)

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        return self._call("Join", self.coordinator.join, request, context)

    def NextTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> pb.Task:
        return self._call("NextTask", self.coordinator.next_task, request, context)

    def Step(self, request: pb.StepRequest, context: grpc.ServicerContext) -> pb.StepReply:
        return self._call("Step", self.coordinator.step, request, context)

    def FinishTurn(self, request: pb.TurnResult, context: grpc.ServicerContext) -> pb.Ack:
        return self._call("FinishTurn", self.coordinator.finish_turn, request, context)

    def EvalStep(self, request: pb.EvalRequest, context: grpc.ServicerContext) -> pb.EvalReply:
        return self._call("EvalStep", self.coordinator.eval_step, request, context)

    def FinishEval(self, request: pb.EvalDone, context: grpc.ServicerContext) -> pb.Ack:
        return self._call("FinishEval", self.coordinator.finish_eval, request, context)


def status_name(error: Any) -> str:
    """The status code name of a ``grpc.RpcError`` (``"UNKNOWN"`` if it has none)."""
    code = error.code() if hasattr(error, "code") else None
    return code.name if code is not None else "UNKNOWN"
