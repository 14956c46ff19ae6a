"""The worker side, whatever runs it: attempts, postprocess, and the messages back.

Every backend (process, thread, Ray actor) runs the same `TaskServer` on one asyncio
loop, fed the parent's messages and answering into an `Outbox`:

- a `Task` starts one asyncio task: one attempt of one request (`RequestRunner`), then,
  if it succeeded, the batch's `postprocess` in a thread (the loop keeps serving);
- each attempt ends in one `Outcome` holding a `Result`, success or failure alike: the
  parent decides about retries, so that every attempt passes through its rate budget;
- `Heartbeat`s go out while tasks run, so the parent can tell a hung worker.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Any, Protocol

import cloudpickle

from .._wire.answers import answer_result, reading_of
from .._wire.bodies import http_call
from .._wire.config import WorkerConfig
from .._wire.failures import to_request_error
from .._wire.prefixes import stable_cache_key
from .._wire.protocol import (
    HEARTBEAT_INTERVAL_S,
    BatchOptions,
    Cancel,
    Heartbeat,
    Outcome,
    Postprocess,
    Task,
)
from ..errors import PostprocessError, RequestError
from ..request import EMBEDDINGS_ENDPOINT, AnyRequest
from ..results import Result
from .providers import Provider

__all__ = [
    "Outbox",
    "RequestRunner",
    "TaskServer",
    "apply_postprocess",
    "load_postprocess",
    "open_runner",
]


class Outbox(Protocol):
    """Where a worker puts the messages for the parent (a pipe here, a queue on Ray)."""

    def put(self, message: Any) -> None: ...


class RequestRunner:
    """Makes one attempt of one request, bounded as a whole by the pool's `timeout`.

    Parameters:
        config: the pool's worker configuration.
    """

    def __init__(self, config: WorkerConfig) -> None:
        self._provider = Provider(config.client)
        self._timeout = config.client.timeout

    def open(self) -> None:
        """Build the clients, so a broken setup fails at start-up, not per request."""
        self._provider.open()

    async def aclose(self) -> None:
        """Close the clients' connections."""
        await self._provider.aclose()

    async def attempt(
        self,
        index: int,
        attempt: int,
        request: AnyRequest,
        with_body: bool = True,
        service_tier: str | None = None,
        timeout: float | None = None,
        target: int = 0,
        prompt_cache_key: bool = False,
    ) -> tuple[Result, float]:
        """The attempt's `Result` (never raises), and the pause its answer's headers ask.

        `with_body` False leaves a successful answer's body out (only rich results and
        the cache need it, and it is the costliest part to send to the parent).
        `service_tier` goes into the body; `timeout` replaces the pool's; `target` is the
        number of the base URL to send it to; `prompt_cache_key`: give the body its
        prefix's key, unless it has a key of its own.
        """
        started = time.monotonic()
        try:
            endpoint, body = http_call(request)
            if service_tier is not None:
                body = {**body, "service_tier": service_tier}
            if prompt_cache_key:
                body = _with_prompt_cache_key(request, endpoint, body)
            # The whole attempt is bounded, a server trickling its body byte by byte included.
            async with asyncio.timeout(timeout or self._timeout):
                data, request_id, pause_s = await self._provider.complete(endpoint, body, target)
        except Exception as exc:  # every failure becomes this attempt's result
            error = to_request_error(
                exc, index=index, attempts=attempt, secret=self._provider.secret
            )
            return Result(
                index,
                attempts=attempt,
                latency_s=time.monotonic() - started,
                status_code=getattr(error, "status_code", 0),
                request_id=getattr(error, "request_id", None),
                body=getattr(error, "body", None),
                error=error,
            ), 0.0
        result = answer_result(
            index,
            reading_of(request, endpoint, body),
            data,
            request_id,
            attempts=attempt,
            latency_s=time.monotonic() - started,
            with_body=with_body,
        )
        if result.error is not None:
            to_request_error(result.error, index=index, attempts=attempt, secret=None)
        return result, pause_s


def _with_prompt_cache_key(
    request: AnyRequest, endpoint: str, body: dict[str, Any]
) -> dict[str, Any]:
    """`body` with OpenAI's ``prompt_cache_key`` set to its prefix's stable key: not for
    an embedding, a LiteLLM-routed model, or a body that names a key already."""
    if endpoint == EMBEDDINGS_ENDPOINT or "prompt_cache_key" in body:
        return body
    key = stable_cache_key(request) if request.uses_openai_sdk else None
    return body if key is None else {**body, "prompt_cache_key": key}


def apply_postprocess(postprocess: Postprocess, index: int, answer: Any) -> Any:
    """`postprocess(answer)`, or a PostprocessError carrying the worker-side traceback."""
    try:
        return postprocess(answer)
    except BaseException as exc:  # SystemExit from user code must not end the worker
        return PostprocessError(
            f"postprocess raised {type(exc).__name__}: {exc}",
            exception_type=type(exc).__name__,
            remote_traceback=traceback.format_exc(),
            index=index,
        )


def load_postprocess(blob: bytes) -> Postprocess:
    """The batch's postprocess, cloudpickled; one that cannot be loaded fails every answer,
    saying why."""
    try:
        loaded: Postprocess = cloudpickle.loads(blob)
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


class TaskServer:
    """The worker's event-loop side: start, cancel and finish tasks; every backend's core.

    Parameters:
        runner: makes each attempt.
        outbox: receives Outcome and Heartbeat messages for the parent.
    """

    def __init__(self, runner: RequestRunner, outbox: Outbox) -> None:
        self._runner = runner
        self._outbox = outbox
        # {(batch, index, attempt): its asyncio task}
        self._running: dict[tuple[int, int, int], asyncio.Task[None]] = {}
        self._options = BatchOptions(0, None)
        self._postprocess: Future[Postprocess] | None = None
        self._postprocess_started: float | None = None  # monotonic; None when idle
        # One thread: postprocess is CPU-bound Python, so more threads would only contend
        # for the GIL; its job is to keep the event loop free while it runs.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="postprocess")

    def handle(self, messages: list[Any]) -> None:
        """Act on messages from the parent: Task, BatchOptions, Cancel. Call in the loop."""
        for message in messages:
            if isinstance(message, Task):
                key = (message.batch_id, message.index, message.attempt)
                self._running[key] = job = asyncio.get_running_loop().create_task(
                    self._run(message)
                )
                job.add_done_callback(partial(_forget, self._running, key))
            elif isinstance(message, BatchOptions):
                self._options = message
                # Loaded in the postprocess thread, ahead of any answer it runs on:
                # unpickling it may import the caller's modules (seconds), and this loop
                # must go on beating meanwhile, or the worker is taken for hung.
                self._postprocess = (
                    None
                    if message.postprocess is None
                    else self._executor.submit(load_postprocess, message.postprocess)
                )
            elif isinstance(message, Cancel) and message.index is not None:
                key = (message.batch_id, message.index, message.attempt or 0)
                if key in self._running:
                    self._running.pop(key).cancel()
            elif isinstance(message, Cancel):
                for key in [key for key in self._running if key[0] == message.batch_id]:
                    self._running.pop(key).cancel()

    async def _run(self, task: Task) -> None:
        try:
            request = task.request()
        except RequestError as error:
            self._outbox.put(
                Outcome.of(task, Result(task.index, attempts=task.attempt, error=error))
            )
            return
        if task.replay:  # an answer from the response cache: only the postprocess to run
            result, pause_s = request, 0.0
        else:
            options = self._options
            result, pause_s = await self._runner.attempt(
                task.index,
                task.attempt,
                request,
                options.with_body,
                None if task.standard else options.service_tier,
                options.timeout,
                task.endpoint,
                options.prompt_cache_key,
            )
        if result.error is None and self._postprocess is not None:
            postprocess = await asyncio.wrap_future(self._postprocess)
            output = await asyncio.get_running_loop().run_in_executor(
                self._executor,
                self._timed_postprocess,
                postprocess,
                task.index,
                result.output,  # the text (an embedding's vector), as the plain stream has it
            )
            if isinstance(output, PostprocessError):
                result = replace(result, output=None, error=output)
            else:
                result = replace(result, output=output)
        self._outbox.put(Outcome.of(task, result, pause_s, self._postprocess is not None))

    def _timed_postprocess(self, postprocess: Postprocess, index: int, answer: Any) -> Any:
        self._postprocess_started = time.monotonic()
        try:
            return apply_postprocess(postprocess, index, answer)
        finally:
            self._postprocess_started = None

    async def beat(self) -> None:
        """Tell the parent every `HEARTBEAT_INTERVAL_S` that this loop is alive.

        Sent from the loop itself, so a blocked loop falls silent; a stuck postprocess
        (in its thread) shows as a growing `postprocess_busy_s`. Only while tasks run:
        between batches nobody reads them, and they would pile up.
        """
        while True:
            if self._running:
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


def _forget(
    running: dict[tuple[int, int, int], Any], key: tuple[int, int, int], _job: object
) -> None:
    running.pop(key, None)


def open_runner(config_blob: bytes) -> RequestRunner:
    """A worker's start-up, the same on every backend: config, initializer, clients.

    Raises whatever went wrong; the caller reports it to the parent as `StartupFailed`.
    """
    config: WorkerConfig = cloudpickle.loads(config_blob)
    if config.initializer is not None:
        config.initializer()
    runner = RequestRunner(config)
    runner.open()
    return runner
