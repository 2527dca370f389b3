"""Plug-ins named ``MODULE:FUNCTION`` (SPEC section 7): a user's model or dataset builder.

``--model MODULE:FUNCTION`` / ``--dataset MODULE:FUNCTION`` (or ``model =`` / ``dataset =``
in TOML) import ``MODULE`` and take its ``FUNCTION``. ``MODULE`` is either

* a dotted module name, importable from ``sys.path``, the current directory or a directory of
  ``$ACPSL_PLUGIN_PATH`` (``os.pathsep``-separated), e.g. ``mylab.nets:build``; or
* a path to a ``.py`` file (absolute, or relative to one of those directories), e.g.
  ``./nets.py:build``; its directory is put on ``sys.path`` and it is imported under its
  file name, so its classes pickle and DataLoader/Ray workers can import it too.

``FUNCTION`` names an attribute of the module, or a name the module registers when imported
(``@acpsl.models.register("mynet")`` then ``--model nets.py:mynet``).

Workers of ``acpsl compare`` (local processes and Ray tasks) import the same modules before
they build a run: :func:`worker_environment` gives them the driver's search path and the
plug-in modules registered in the driver.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from acpsl.errors import ConfigError

#: Extra directories to search for plug-in modules (``os.pathsep``-separated).
PLUGIN_PATH_ENV = "ACPSL_PLUGIN_PATH"
#: Modules a worker imports before it builds a run (comma-separated; set by ``compare``).
PLUGIN_MODULES_ENV = "ACPSL_PLUGINS"

T = TypeVar("T")


def is_reference(name: str) -> bool:
    """Whether ``name`` is a ``MODULE:FUNCTION`` reference (not a registered name)."""
    return isinstance(name, str) and ":" in name


def split_reference(text: str, *, kind: str) -> tuple[str, str]:
    """``"MODULE:FUNCTION"`` -> ``(MODULE, FUNCTION)``; the last ``:`` separates them.

    Raises:
        ConfigError: either part is empty.
    """
    module, _, attr = text.rpartition(":")
    module, attr = module.strip(), attr.strip()
    if not module or not attr or (not attr.isidentifier() and "-" not in attr):
        raise ConfigError(
            f"invalid {kind} plug-in {text!r}: use MODULE:FUNCTION, e.g. mylab.nets:build or "
            "./nets.py:build"
        )
    return module, attr


def short_name(name: str) -> str:
    """A folder- and label-friendly name: ``FUNCTION`` of a reference, else ``name``."""
    return name.rpartition(":")[2] if is_reference(name) else name


def search_dirs() -> list[Path]:
    """Where plug-in modules are looked for beyond ``sys.path``: cwd, ``$ACPSL_PLUGIN_PATH``."""
    dirs = [Path.cwd()]
    dirs += [Path(p) for p in os.environ.get(PLUGIN_PATH_ENV, "").split(os.pathsep) if p]
    return dirs


def _add_to_sys_path(directory: Path) -> None:
    entry = str(directory.resolve())
    if entry not in sys.path:
        sys.path.append(entry)


def _is_file_module(module: str) -> bool:
    return module.endswith(".py") or "/" in module or os.sep in module


def import_plugin_module(module: str, *, kind: str, text: str) -> ModuleType:
    """Import the module of a reference (a dotted name or a ``.py`` file path).

    Raises:
        ConfigError: the module cannot be found, or importing it raised; one line saying
            what failed and what to do.
    """
    hint = (
        f"make {module!r} importable (a dotted module on PYTHONPATH or in the current "
        f"directory, a directory in ${PLUGIN_PATH_ENV}, or a path to a .py file)"
    )
    if _is_file_module(module):
        candidates = [Path(module)] if Path(module).is_absolute() else []
        candidates += [d / module for d in search_dirs()] if not candidates else []
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            where = ", ".join(str(d) for d in search_dirs())
            raise ConfigError(
                f"{kind} plug-in {text!r}: file {module} not found (looked in {where}); {hint}"
            )
        path = path.resolve()
        name = path.stem
        if not name.isidentifier():
            raise ConfigError(
                f"{kind} plug-in {text!r}: {path.name} is not an importable module name; "
                "rename the file (letters, digits, underscores)"
            )
        loaded = sys.modules.get(name)
        if loaded is not None:
            origin = getattr(loaded, "__file__", None)
            if origin is None or Path(origin).resolve() != path:
                raise ConfigError(
                    f"{kind} plug-in {text!r}: another module named {name!r} is already "
                    f"imported (from {origin}); rename {path.name}"
                )
            return loaded
        _add_to_sys_path(path.parent)
        return _import(name, kind=kind, text=text, hint=hint)
    for directory in search_dirs():
        _add_to_sys_path(directory)
    return _import(module, kind=kind, text=text, hint=hint)


def _import(name: str, *, kind: str, text: str, hint: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.split(".")[0] == exc.name.split(".")[0]:
            raise ConfigError(f"cannot import {kind} plug-in {text!r}: {exc}; {hint}") from None
        raise ConfigError(
            f"{kind} plug-in {text!r}: importing {name} failed: {type(exc).__name__}: {exc}"
        ) from None
    except ConfigError:
        raise
    except Exception as exc:  # the user's module raised while importing
        message = " ".join(str(exc).split())
        raise ConfigError(
            f"{kind} plug-in {text!r}: importing {name} failed: {type(exc).__name__}: {message}"
        ) from None


def resolve(
    text: str, *, kind: str, registered: Callable[[str], Callable[..., T] | None]
) -> Callable[..., T]:
    """The callable a ``MODULE:FUNCTION`` reference names.

    Args:
        text: the reference.
        kind: ``"model"`` or ``"dataset"`` (for messages).
        registered: looks a name up in the kind's registry (``None`` when absent); a
            ``FUNCTION`` the module registers under that name is found there.

    Raises:
        ConfigError: the module cannot be imported, or has no such callable.
    """
    module_name, attr = split_reference(text, kind=kind)
    module = import_plugin_module(module_name, kind=kind, text=text)
    found = getattr(module, attr, None)
    if found is None:
        found = registered(attr)
    if found is None:
        raise ConfigError(
            f"{kind} plug-in {text!r}: module {module.__name__} has no function {attr!r} and "
            f"registers no {kind} of that name"
        )
    if not callable(found):
        raise ConfigError(
            f"{kind} plug-in {text!r}: {module.__name__}.{attr} is a "
            f"{type(found).__name__}, not a function"
        )
    return found


def accepted_kwargs(func: Callable[..., Any], values: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``values`` that ``func`` takes (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return dict(values)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(values)
    return {k: v for k, v in values.items() if k in params}


# ----------------------------------------------------------------------------- workers
def registered_modules(factories: Iterable[Callable[..., Any]]) -> list[str]:
    """Modules outside acpsl that registered ``factories`` (a worker must import them).

    Raises:
        ConfigError: a factory was registered in ``__main__`` (a script), which a worker
            process cannot import.
    """
    out: list[str] = []
    for factory in factories:
        module = getattr(factory, "__module__", None) or ""
        if module == "acpsl" or module.startswith("acpsl."):
            continue
        if module == "__main__":
            name = getattr(factory, "__name__", repr(factory))
            raise ConfigError(
                f"{name} is registered in the script being run (__main__), which compare's "
                "workers cannot import; move it to a module and name it as MODULE:FUNCTION"
            )
        if module not in out:
            out.append(module)
    return out


def worker_environment(modules: Iterable[str] = ()) -> dict[str, str]:
    """Environment variables that make a worker see the driver's plug-ins.

    ``$ACPSL_PLUGIN_PATH`` gets the driver's current directory, its own value and every
    ``sys.path`` entry outside the Python installation; ``$ACPSL_PLUGINS`` lists ``modules``.
    """
    dirs = [str(Path.cwd())]
    dirs += [p for p in os.environ.get(PLUGIN_PATH_ENV, "").split(os.pathsep) if p]
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    for entry in sys.path:
        if entry and not any(entry.startswith(p) for p in prefixes) and Path(entry).is_dir():
            dirs.append(str(Path(entry).resolve()))
    unique = list(dict.fromkeys(dirs))
    env = {PLUGIN_PATH_ENV: os.pathsep.join(unique)}
    names = list(dict.fromkeys(modules))
    if names:
        env[PLUGIN_MODULES_ENV] = ",".join(names)
    return env


def prepare_worker(env: dict[str, str] | None = None) -> None:
    """In a worker: apply :func:`worker_environment`'s variables and import the modules.

    Args:
        env: the variables (Ray passes them as a task argument); ``None``: ``os.environ``.
    """
    if env:
        os.environ.update(env)
    for directory in search_dirs():
        _add_to_sys_path(directory)
    for name in filter(None, os.environ.get(PLUGIN_MODULES_ENV, "").split(",")):
        _import(
            name,
            kind="plug-in",
            text=name,
            hint=f"make {name!r} importable on the workers (${PLUGIN_PATH_ENV})",
        )
