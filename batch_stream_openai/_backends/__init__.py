"""How workers are started: ``backend="process" | "thread" | "ray"``.

Each backend makes `Worker` objects (`base.py`) that the supervisor keeps alive and the
dispatcher feeds; nothing above this package knows which one it has.

- ``"process"`` (default): one worker process each (`process.py`), ``spawn`` or
  ``forkserver``.
- ``"thread"``: the same worker code in threads of this process (`thread.py`); also what
  ``workers=0`` means.
- ``"ray"``: one Ray async actor each, anywhere on a Ray cluster (`ray.py`; Ray is
  imported only when chosen).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from .base import Worker

__all__ = ["BACKENDS", "Worker", "check_backend", "worker_factory"]

BACKENDS = ("process", "thread", "ray")
# Earlier name of the process backend, still accepted.
_ALIASES = {"local": "process"}


def check_backend(backend: object) -> str:
    """The backend's canonical name; ValueError naming the choices for anything else."""
    name = _ALIASES.get(backend, backend) if isinstance(backend, str) else backend
    if name not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}"
        )
    return str(name)


def worker_factory(
    backend: str, config_blob: bytes, *, start_method: str, ray_address: str | None
) -> Callable[[int], Worker]:
    """A function that starts one worker of `backend`, given its slot number."""
    if backend == "ray":
        from .ray import RayWorker

        return partial(RayWorker, config_blob, address=ray_address)
    if backend == "thread":
        from .thread import WorkerThread

        return partial(WorkerThread, config_blob)
    from .process import WorkerProcess, process_context

    return partial(WorkerProcess, process_context(start_method), config_blob)
