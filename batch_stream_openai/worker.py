"""Child side: one process, one asyncio loop, one long-lived client, many requests at once.

Two threads keep the loop free of blocking pipe I/O: a reader turns task messages into
loop callbacks (EOF means the parent closed the pool or died: the worker exits), and an
outbox thread pickles outcomes and writes them, many per pipe write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, Protocol

import cloudpickle

from .config import WorkerConfig
from .errors import PostprocessError, RequestError
from .protocol import (
    HEARTBEAT_INTERVAL_S,
    BatchOptions,
    Cancel,
    Heartbeat,
    Outcome,
    Ready,
    StartupFailed,
    Task,
    Throttled,
)
from .providers import Answer, Provider
from .request import AnyRequest
from .results import Result, Usage, usage_of
from .retry import build_retrying, retry_after_seconds, status_code_of, to_request_error

__all__ = [
    "Finished",
    "Outbox",
    "RequestRunner",
    "TaskServer",
    "apply_postprocess",
    "main",
    "open_runner",
    "report_throttling",
]

# Outcomes per pipe write: large enough to amortise the system call under load, small
# enough that one message stays well below a megabyte for ordinary answers.
_MAX_OUTCOMES_PER_MESSAGE = 256
_STARTUP_FAILED_EXIT_CODE = 3


@dataclass(frozen=True, slots=True)
class Finished:
    """How one request ended: its answer or its error, after how many attempts and when."""

    answer: Answer | None
    error: RequestError | None
    attempts: int
    latency_s: float


class RequestRunner:
    """Runs one request to its end: the provider call, retries, error conversion.

    Shared by every backend, so a request behaves the same wherever its worker runs.

    Parameters:
        config: the pool's worker configuration.
        sleep: the wait between attempts (injectable for tests).
        on_retry: called with each failure that will be retried, before the wait.
    """

    def __init__(
        self,
        config: WorkerConfig,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._provider = Provider(config.client)
        self._policy = config.retry
        self._secret = config.client.resolved_api_key
        self._sleep = sleep
        self._on_retry = on_retry

    def open(self) -> None:
        """Build the clients, so a broken setup fails at start-up, not per request."""
        self._provider.open()

    async def aclose(self) -> None:
        """Close the clients' connections."""
        await self._provider.aclose()

    async def run(self, index: int, request: AnyRequest) -> Finished:
        """Send the request, retrying what is worth retrying; never raises."""
        retrying = build_retrying(self._policy, self._sleep, self._on_retry)
        started = time.monotonic()
        try:
            answer: Answer = await retrying(self._provider.complete, request)
        except Exception as exc:  # every failure becomes this index's result
            attempts = int(retrying.statistics.get("attempt_number", 1))
            error = to_request_error(exc, index=index, attempts=attempts, secret=self._secret)
            return Finished(None, error, attempts, time.monotonic() - started)
        attempts = int(retrying.statistics.get("attempt_number", 1))
        return Finished(answer, None, attempts, time.monotonic() - started)


class _Outbox:
    """Writes messages to the parent from its own thread, batching what has piled up."""

    _CLOSE = object()

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def put(self, message: Any) -> None:
        self._queue.put(message)

    def close(self, timeout: float = 1.0) -> None:
        self._queue.put(self._CLOSE)
        self._thread.join(timeout)

    def _run(self) -> None:
        closing = False
        while not closing:
            batch = [self._queue.get()]
            while len(batch) < _MAX_OUTCOMES_PER_MESSAGE:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is self._CLOSE:
                batch.pop()
                closing = True
            if not batch:
                continue
            try:
                self._conn.send(batch)
            except (OSError, ValueError):  # the parent is gone: nobody to tell
                return


def _read_tasks(
    conn: Connection, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[Any]
) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            message = None  # the parent closed our pipe or died
        except Exception as exc:  # a task that cannot be unpickled here
            message = exc
        loop.call_soon_threadsafe(inbox.put_nowait, message)
        if message is None:
            return


Postprocess = Callable[[str], Any]


def apply_postprocess(postprocess: Postprocess, index: int, text: str) -> Any:
    """`postprocess(text)`, or a PostprocessError carrying the worker-side traceback."""
    try:
        return postprocess(text)
    except BaseException as exc:  # SystemExit from user code must not end the worker
        return PostprocessError(
            f"postprocess raised {type(exc).__name__}: {exc}",
            exception_type=type(exc).__name__,
            remote_traceback=traceback.format_exc(),
            index=index,
        )


def _load_postprocess(options: BatchOptions) -> Postprocess | None:
    if options.postprocess is None:
        return None
    try:
        loaded: Postprocess = cloudpickle.loads(options.postprocess)
    except Exception as exc:
        error = PostprocessError(
            f"postprocess could not be loaded in the worker: {exc!r}",
            exception_type=type(exc).__name__,
            remote_traceback=traceback.format_exc(),
        )

        def fail(_text: str) -> Any:
            raise error

        return fail
    return loaded


class Outbox(Protocol):
    """Where a worker puts the messages for the parent (a pipe here, a queue on Ray)."""

    def put(self, message: Any) -> None: ...


class TaskServer:
    """The worker's event-loop side: start, cancel and finish tasks; every backend's core.

    Parameters:
        runner: sends each request (provider call, retries).
        outbox: receives Outcome, Heartbeat and Throttled messages for the parent.
    """

    def __init__(self, runner: RequestRunner, outbox: Outbox) -> None:
        self._runner = runner
        self._outbox = outbox
        self._running: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._options = BatchOptions(0, None)
        self._postprocess: Postprocess | None = None
        self._postprocess_started: float | None = None  # monotonic; None when idle
        # One thread: postprocess is CPU-bound Python, so more threads would only contend
        # for the GIL; its job is to keep the event loop free while it runs.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="postprocess")

    def handle(self, messages: list[Any]) -> None:
        """Act on messages from the parent: Task, BatchOptions, Cancel. Call in the loop."""
        for message in messages:
            if isinstance(message, Task):
                key = (message.batch, message.index)
                self._running[key] = job = asyncio.get_running_loop().create_task(
                    self._run(message)
                )
                job.add_done_callback(partial(_forget, self._running, key))
            elif isinstance(message, BatchOptions):
                self._options = message
                self._postprocess = _load_postprocess(message)
            elif isinstance(message, Cancel):
                for key in [key for key in self._running if key[0] == message.batch]:
                    self._running.pop(key).cancel()

    async def _run(self, task: Task) -> None:
        try:
            request = task.request()
        except RequestError as error:
            self._outbox.put(Outcome.of(task.batch, task.index, error, attempts=0))
            return
        finished = await self._runner.run(task.index, request)
        answer = finished.answer
        output: Any = finished.error if answer is None else answer.text
        if answer is not None and self._postprocess is not None:
            output = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._timed_postprocess, self._postprocess, task.index, answer.text
            )
        usage = usage_of(answer.body) if answer is not None else None
        value = _rich_result(task.index, finished, output, usage) if self._options.rich else output
        rate_limits = answer.rate_limits if answer is not None else None
        self._outbox.put(
            Outcome.of(task.batch, task.index, value, finished.attempts, usage, rate_limits)
        )

    def _timed_postprocess(self, postprocess: Postprocess, index: int, text: str) -> Any:
        self._postprocess_started = time.monotonic()
        try:
            return apply_postprocess(postprocess, index, text)
        finally:
            self._postprocess_started = None

    async def beat(self) -> None:
        """Tell the parent every `HEARTBEAT_INTERVAL_S` that this loop is alive.

        Sent from the loop itself, so a blocked loop falls silent; a stuck postprocess
        (in its thread) shows as a growing `postprocess_busy_s`.
        """
        while True:
            started = self._postprocess_started
            busy = time.monotonic() - started if started is not None else 0.0
            self._outbox.put(Heartbeat(busy))
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def aclose(self) -> None:
        """Cancel every running task and close the clients."""
        jobs = list(self._running.values())
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        await self._runner.aclose()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _rich_result(index: int, finished: Finished, output: Any, usage: Usage | None) -> Result:
    answer = finished.answer
    error = output if isinstance(output, RequestError) else finished.error
    if answer is None:
        return Result(
            index,
            usage=usage,
            latency_s=finished.latency_s,
            attempts=finished.attempts,
            request_id=getattr(error, "request_id", None),
            status_code=getattr(error, "status_code", 0),
            body=getattr(error, "body", None),
            error=error,
        )
    parsed = None
    if answer.json_requested:
        with contextlib.suppress(ValueError):
            parsed = json.loads(answer.text)
    return Result(
        index,
        text=answer.text,
        parsed=parsed,
        output=None if error is not None else output,
        usage=usage,
        latency_s=finished.latency_s,
        attempts=finished.attempts,
        model=answer.body.get("model"),
        response_id=answer.body.get("id"),
        request_id=answer.request_id,
        status_code=200,
        body=answer.body,
        error=error,
    )


def _forget(running: dict[tuple[int, int], Any], key: tuple[int, int], _job: object) -> None:
    running.pop(key, None)


async def _serve(task_conn: Connection, outbox: _Outbox, runner: RequestRunner) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    reader = threading.Thread(target=_read_tasks, args=(task_conn, loop, inbox), daemon=True)
    reader.start()
    server = TaskServer(runner, outbox)
    outbox.put(Ready(os.getpid()))
    heartbeat = loop.create_task(server.beat())
    try:
        while (messages := await inbox.get()) is not None:
            if isinstance(messages, Exception):
                raise messages
            server.handle(messages)
    finally:
        heartbeat.cancel()
        await server.aclose()


def report_throttling(outbox: Outbox, exc: BaseException) -> None:
    """`RequestRunner`'s `on_retry` hook: tell the parent about each 429 as it happens."""
    if status_code_of(exc) == 429:
        outbox.put(Throttled(retry_after_seconds(exc)))


def open_runner(config_blob: bytes, outbox: Outbox) -> RequestRunner:
    """A worker's start-up, the same on every backend: config, initializer, clients.

    Raises whatever went wrong; the caller reports it to the parent as `StartupFailed`.
    """
    config: WorkerConfig = cloudpickle.loads(config_blob)
    if config.initializer is not None:
        config.initializer()
    runner = RequestRunner(config, on_retry=partial(report_throttling, outbox))
    runner.open()
    return runner


def main(task_conn: Connection, result_conn: Connection, config_blob: bytes) -> None:
    """Worker entry point: serve tasks until the parent closes the task pipe.

    Runs in a worker process, or in a thread of the parent for ``workers=0``.
    """
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C and a scheduler's SIGTERM reach the whole process group; the parent
        # decides when workers stop (closing their pipe), so in-flight work can drain.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    outbox = _Outbox(result_conn)
    try:
        runner = open_runner(config_blob, outbox)
    except Exception:  # report any start-up failure, then exit
        outbox.put(StartupFailed(traceback.format_exc()))
        outbox.close()
        sys.exit(_STARTUP_FAILED_EXIT_CODE)
    try:
        asyncio.run(_serve(task_conn, outbox, runner))
    finally:
        outbox.close()
