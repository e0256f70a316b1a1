"""Task functions: ``@sje.task`` and the per-process catalog built from imported modules.

The decorator only wraps a function; nothing is registered globally at import time. A worker
builds its catalog by importing the modules it was told to (``--tasks``) and collecting the
``Task`` objects they define, so a message can never make a worker import an arbitrary path.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from sje.errors import WorkerError

R = TypeVar("R")
DEFAULT_QUEUE = "default"


@dataclass(frozen=True, slots=True)
class TaskDefaults:
    """Options a task function declares with ``@sje.task``; a job's own options win."""

    queue: str = DEFAULT_QUEUE
    priority: int = 0
    retries: int = 0
    backoff: float = 1.0
    backoff_max: float = 300.0
    timeout: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "priority": self.priority,
            "retries": self.retries,
            "backoff": self.backoff,
            "backoff_max": self.backoff_max,
            "timeout": self.timeout,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskDefaults:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


class Task(Generic[R]):
    """A function registered under a stable name, with default options for its jobs."""

    def __init__(self, fn: Callable[..., R], name: str, defaults: TaskDefaults) -> None:
        self.fn = fn
        self.name = name
        self.defaults = defaults
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<sje.Task {self.name}>"


@overload
def task(fn: Callable[..., R], /) -> Task[R]: ...


@overload
def task(
    *,
    name: str | None = None,
    queue: str = DEFAULT_QUEUE,
    retries: int = 0,
    backoff: float = 1.0,
    backoff_max: float = 300.0,
    timeout: float | None = None,
    priority: int = 0,
) -> Callable[[Callable[..., R]], Task[R]]: ...


def task(
    fn: Callable[..., R] | None = None,
    /,
    *,
    name: str | None = None,
    queue: str = DEFAULT_QUEUE,
    retries: int = 0,
    backoff: float = 1.0,
    backoff_max: float = 300.0,
    timeout: float | None = None,
    priority: int = 0,
) -> Task[R] | Callable[[Callable[..., R]], Task[R]]:
    """Make ``fn`` a task named ``name`` (default ``module.function``).

    Options are defaults for jobs that run this task; a job definition may override each.
    Both plain and ``async def`` functions work; async ones share a child's event loop.
    """
    defaults = TaskDefaults(queue, priority, retries, backoff, backoff_max, timeout)

    def wrap(func: Callable[..., R]) -> Task[R]:
        return Task(func, name or f"{func.__module__}.{func.__qualname__}", defaults)

    return wrap(fn) if fn is not None else wrap


def load_catalog(modules: Iterable[str]) -> dict[str, Task[Any]]:
    """Import ``modules`` and return every ``Task`` they define, by name.

    Raises ``WorkerError`` naming the module when an import fails or two tasks share a name.
    """
    if "" not in sys.path:
        sys.path.insert(0, "")
    catalog: dict[str, Task[Any]] = {}
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise WorkerError(
                f"Cannot import task module '{module_name}': {type(exc).__name__}: {exc}. "
                "Check the --tasks value and that the module is on PYTHONPATH."
            ) from exc
        for value in vars(module).values():
            if isinstance(value, Task):
                other = catalog.get(value.name)
                if other is not None and other.fn is not value.fn:
                    raise WorkerError(
                        f"Two tasks are named '{value.name}' (in '{module_name}'); "
                        "give one of them name=... in @sje.task."
                    )
                catalog[value.name] = value
    return catalog
