"""One small registry per plug-in kind (schemes, scorers, ratio policies, models, datasets, ...).

Modelled on timm's ``register_model``/``create_model`` and torchvision's ``register_model``:
registering a name twice is an error, and ``create`` names the valid choices when a name is
unknown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from acpsl.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> factory map for one kind of plug-in.

    Args:
        kind: what the registry holds, used in error messages ("scheme", "model", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a factory (a class or a function) under ``name``.

        Raises:
            ValueError: if ``name`` is already registered.
        """

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``.

        Raises:
            ConfigError: if ``name`` is unknown; the message lists the known names.
        """
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def create(self, name: str, **params: Any) -> T:
        """Build the plug-in ``name`` with keyword parameters ``params``.

        A parameter the factory does not accept is reported as a :class:`ConfigError`.
        """
        factory = self.get(name)
        try:
            return factory(**params)
        except TypeError as exc:
            raise ConfigError(f"bad parameters for {self.kind} {name!r}: {exc}") from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def list(self) -> list[str]:
        """Alias of :meth:`names` (the STYLE guide's ``list()``)."""
        return self.names()

    def __contains__(self, name: object) -> bool:
        return name in self._items
