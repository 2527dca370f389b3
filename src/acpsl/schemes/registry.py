"""The registry of cut schemes (``acpsl.schemes.create`` / ``names``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from acpsl.registry import Registry
from acpsl.schemes.base import Scheme

SCHEMES: Registry[Scheme] = Registry("scheme")
_WIRE_IDS: dict[int, str] = {}


def register(name: str) -> Callable[[type[Scheme]], type[Scheme]]:
    """Class decorator: register a :class:`Scheme` subclass under ``name``.

    Also checks that its ``wire_id`` is unique, so every payload names its scheme unambiguously.
    """

    def decorator(cls: type[Scheme]) -> type[Scheme]:
        if cls.wire_id in _WIRE_IDS:
            raise ValueError(
                f"scheme {name!r} reuses wire id {cls.wire_id} of {_WIRE_IDS[cls.wire_id]!r}"
            )
        SCHEMES.register(name)(cls)
        _WIRE_IDS[cls.wire_id] = name
        return cls

    return decorator


def create(name: str, **params: Any) -> Scheme:
    """Build the scheme registered as ``name`` with keyword ``params``."""
    return SCHEMES.create(name, **params)


def names() -> list[str]:
    """Registered scheme names."""
    return SCHEMES.names()
