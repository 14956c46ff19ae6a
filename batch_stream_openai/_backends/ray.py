"""Workers as Ray actors: ``BatchPool(backend="ray")``, with the pool unchanged.

Each worker is one Ray async actor (`WorkerActor`) running the very same worker code as
a worker process (`engine.open_runner`, `engine.TaskServer`). Only how a worker is
started, fed and watched differs, and the pool cannot tell: a `RayWorker` has the same
two pipes as a `WorkerProcess`, bridged to the actor by two daemon threads of the
driver::

    pool --task pipe--> task pump --handle.remote(seq, msgs)---> +------ actor ------+
                        (thread)   (not awaited; numbered)       | TaskServer, its   |
                                                                 | heartbeats, and a |
    pool <--result pipe-- result pump <--ray.get(poll.remote())--| mailbox (outbox)  |
    pool <--sentinel pipe closed when the actor finishes or dies +-------------------+

- **Task pump**: reads lists of messages (Task, BatchOptions, Cancel) from the task pipe
  and passes each to the actor without waiting, so a slow or dead actor never blocks
  the pipe. Ray does not keep calls to an async actor in order, so they are numbered
  and the actor applies them in that order. EOF (the pool stopping the worker) becomes
  a last call that closes the actor's clients.
- **Result pump**: starts the actor (`WorkerActor.start`: pid and node id), then polls
  its mailbox and writes what it gets (Ready, Heartbeat, Outcome) to the
  result pipe. When the actor finishes (exit code 0, or 3 after `StartupFailed`) or
  dies (`RayActorError`), the pump sets `exitcode` and closes the result and sentinel
  pipes: the pool's `multiprocessing.connection.wait` sees the exit as for any worker,
  replaces it and re-sends what it owed.

Actors are never restarted by Ray (``max_restarts=0``): the pool does that itself.
Ray is imported only by this module, and only for ``backend="ray"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import TYPE_CHECKING, Any

try:
    import ray
    from ray.exceptions import RayActorError, RayError
except ImportError as exc:
    raise ImportError("backend='ray' needs Ray: pip install 'batch-stream-openai[ray]'") from exc

from .._wire.protocol import EXIT_OK, EXIT_STARTUP_FAILED, Ready, StartupFailed
from .base import SignalledWorker

if TYPE_CHECKING:
    from .._worker.server import TaskServer

__all__ = ["ACTOR_NAME_PREFIX", "RayWorker", "WorkerActor"]

# Every worker actor is named this plus its slot and a random suffix (unique per cluster).
ACTOR_NAME_PREFIX = "batch-stream-openai-worker-"
# CPU each actor reserves: a fraction, so that several workers fit on a small node and
# none lands on a head node started with ``--num-cpus=0``.
_ACTOR_NUM_CPUS = 0.1
# Calls an actor may run at once (a few: start, poll, handle): Ray's default for async actors.
_ACTOR_MAX_CONCURRENCY = 1000
# Longest a poll waits in the actor for messages (heartbeats come far more often).
_POLL_TIMEOUT_S = 5.0


class _Mailbox:
    """The actor's `Outbox`: messages wait here for the driver's next poll.

    Used from the actor's event loop only, as `TaskServer` does.
    """

    def __init__(self) -> None:
        self._messages: list[Any] = []
        self._changed = asyncio.Event()

    def put(self, message: Any) -> None:
        self._messages.append(message)
        self._changed.set()

    def wake(self) -> None:
        """End the pending `take` now, even with nothing to take."""
        self._changed.set()

    async def take(self, timeout: float) -> list[Any]:
        """Every message so far, once there is one (or `wake`, or `timeout` s)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        self._changed.clear()
        messages, self._messages = self._messages, []
        return messages


class WorkerActor:
    """One worker inside a Ray actor: a `TaskServer` fed by calls instead of a pipe.

    Every method is a coroutine, so all run on the actor's one event loop, next to the
    tasks `TaskServer` starts there.

    Parameters:
        config_blob: the cloudpickled `WorkerConfig`.
    """

    def __init__(self, config_blob: bytes) -> None:
        self._config_blob = config_blob
        self._mailbox = _Mailbox()
        self._started = asyncio.Event()
        self._server: TaskServer | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._pending: dict[int, list[Any] | None] = {}  # calls that came early: {seq: msgs}
        self._next_seq = 0
        self._exitcode: int | None = None  # set once finished; nothing is sent after it

    async def start(self) -> tuple[int, str]:
        """Start serving (Ready, then heartbeats) or fail (StartupFailed, exit code 3).

        Returns this actor's process id and Ray node id.
        """
        # Here, in the actor: the driver never imports `openai`.
        from .._worker.server import TaskServer, open_runner

        try:
            runner = open_runner(self._config_blob)
        except Exception:  # report any start-up failure, then finish
            self._mailbox.put(StartupFailed(traceback.format_exc()))
            self._finish(EXIT_STARTUP_FAILED)
        else:
            self._server = TaskServer(runner, self._mailbox)
            self._mailbox.put(Ready(os.getpid()))
            self._heartbeat = asyncio.get_running_loop().create_task(self._server.beat())
        self._started.set()
        node_id: str = ray.get_runtime_context().get_node_id()
        return os.getpid(), node_id

    async def handle(self, seq: int, messages: list[Any] | None) -> None:
        """The `seq`-th list of messages from the pool; None: the pool stopped this worker.

        Lists are applied in `seq` order, whatever order Ray delivers them in.
        """
        self._pending[seq] = messages
        await self._started.wait()
        while self._next_seq in self._pending:
            batch = self._pending.pop(self._next_seq)
            self._next_seq += 1
            if batch is None:
                await self._close()
            elif self._server is not None and self._exitcode is None:
                self._server.handle(batch)

    async def poll(self, timeout: float) -> tuple[list[Any], int | None]:
        """The messages for the pool, once there are some (or after `timeout` s).

        Also returns the exit code once the worker has finished: no message follows it.
        """
        messages = await self._mailbox.take(timeout)
        return messages, self._exitcode

    async def _close(self) -> None:
        """Cancel what runs, close the clients, and finish with exit code 0."""
        if self._server is None or self._exitcode is not None:
            return
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        await self._server.aclose()
        self._finish(EXIT_OK)

    def _finish(self, exitcode: int) -> None:
        self._exitcode = exitcode
        self._mailbox.wake()


_RemoteWorkerActor = ray.remote(WorkerActor)


def _connect(address: str | None) -> None:
    """Join the cluster at `address` unless this process already has (None: `ray.init`'s pick).

    Ray ties the processes of a local start to the life of the *thread* that started them
    (``PR_SET_PDEATHSIG``): started from a short-lived thread (`BatchPool.astream` runs in
    asyncio's executor), Ray would die with it. So off the main thread, a thread that lives
    as long as this process calls `ray.init`.
    """
    if ray.is_initialized():
        return
    if threading.current_thread() is threading.main_thread():
        _init(address)
        return
    started: Future[None] = Future()
    _daemon(partial(_init_and_stay, address, started), "batch-stream-openai-ray-init")
    started.result()


def _init(address: str | None) -> None:
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)


def _init_and_stay(address: str | None, started: Future[None]) -> None:
    """`ray.init`, report how it went, then live as long as the process."""
    try:
        _init(address)
    except BaseException as error:
        started.set_exception(error)
        return
    started.set_result(None)
    threading.Event().wait()


def _exitcode_of(error: RayActorError) -> int:
    """What the pool needs of a death Ray reports without an exit code.

    Killed from outside (``ray.kill``, a preempted node): ``-SIGKILL``, as the pool treats
    an operator's ``kill -9``. Anything else (a crash, ``os._exit``, a lost node): 1.
    """
    if getattr(error, "preempted", False) or "ray.kill" in str(error):
        return -signal.SIGKILL
    return 1


def _daemon(target: Callable[[], None], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


class RayWorker(SignalledWorker):
    """A worker that is a Ray actor, seen by the pool through the usual pipes.

    Parameters:
        config_blob: the cloudpickled `WorkerConfig`.
        slot: a stable number for the actor's name.
        address: the Ray cluster to join if this process has not yet (``"auto"``,
            ``"ray://host:10001"``); None: the one `ray.init` picks (``RAY_ADDRESS``, a
            ``ray start`` cluster on this machine, else a new local one).
    """

    def __init__(self, config_blob: bytes, slot: int, *, address: str | None) -> None:
        _connect(address)
        self.name = f"{ACTOR_NAME_PREFIX}{slot}-{uuid.uuid4().hex[:8]}"
        super().__init__(self.name)
        self._pid: int | None = None
        self.node_id: str | None = None  # the Ray node the actor runs on, once started
        self._actor: Any = _RemoteWorkerActor.options(
            name=self.name,
            num_cpus=_ACTOR_NUM_CPUS,
            max_concurrency=_ACTOR_MAX_CONCURRENCY,
            max_restarts=0,
            scheduling_strategy="SPREAD",
        ).remote(config_blob)
        self._task_pump = _daemon(self._pump_tasks, f"{self.name}-tasks")
        self._result_pump = _daemon(self._pump_results, f"{self.name}-results")

    @property
    def pid(self) -> int | None:
        """The actor's process id (on its node), once started."""
        return self._pid

    def join(self, timeout: float) -> None:
        self._result_pump.join(timeout)

    def stop(self, deadline: float) -> None:
        """Close the task pipe, give the actor until `deadline` to finish, then kill it."""
        self.request_stop()
        self._result_pump.join(max(0.0, deadline - time.monotonic()))
        self._kill()
        self.close_parent_ends()
        self._exit.close()

    def abort(self) -> None:
        """An actor has no SIGTERM: the watchdog's first step kills it."""
        self._kill()

    def _kill(self) -> None:
        # Also after `ray.shutdown()` (interpreter exit), when there is nothing left to kill.
        with contextlib.suppress(Exception):
            ray.kill(self._actor, no_restart=True)

    def _pump_tasks(self) -> None:
        """Thread: pass each list of messages from the task pipe to the actor, numbered."""
        task_reader, _ = self.worker_ends
        for seq in itertools.count():
            try:
                messages: list[Any] | None = task_reader.recv()
            except (EOFError, OSError):
                messages = None  # the pool is stopping this worker
            with contextlib.suppress(Exception):  # Ray shut down: the result pump reports it
                self._actor.handle.remote(seq, messages)
            if messages is None:
                task_reader.close()
                return

    def _pump_results(self) -> None:
        """Thread: relay the actor's messages until it is gone, then show its exit."""
        exitcode = 1
        try:
            exitcode = self._relay_results()
        finally:
            _, result_writer = self.worker_ends
            with contextlib.suppress(OSError):
                result_writer.close()  # no more results: the pool reads EOF
            self._exit.set(exitcode)

    def _relay_results(self) -> int:
        """Start the actor and relay its messages; return its exit code."""
        _, result_writer = self.worker_ends
        try:
            self._pid, self.node_id = ray.get(self._actor.start.remote())
            while True:
                messages, exitcode = ray.get(self._actor.poll.remote(_POLL_TIMEOUT_S))
                if messages:
                    result_writer.send(messages)
                if exitcode is not None:
                    return int(exitcode)
        except RayError as error:  # dead, unreachable, or a failed call: never trust it again
            self._kill()
            if self._pid is None:  # say why, or the pool could only blame the start method
                with contextlib.suppress(OSError, ValueError):
                    result_writer.send([StartupFailed(f"the Ray actor could not start: {error}")])
            return _exitcode_of(error) if isinstance(error, RayActorError) else 1
        except (OSError, ValueError):  # the pool closed its end: `stop` kills the actor
            return -signal.SIGKILL
