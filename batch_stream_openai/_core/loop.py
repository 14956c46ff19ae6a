"""The batch loop: one batch's dispatcher driven against the pool's workers.

Each turn: `Dispatcher.fill` says what to send to which ready worker; what is done is
yielded to the caller; `Supervisor.wait` returns the outcomes that arrived and the
workers that exited, which `Dispatcher.settle` and `Dispatcher.reclaim` take in. The
loop ends when everything read from the input has been yielded (then the input's own
error, if it raised, is raised), or when the caller stops listening (then what is still
in flight is cancelled in the workers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

from .._backends import Worker
from .._observe.telemetry import Telemetry
from .._spending.admission import Admission
from .._wire.protocol import BatchOptions, Cancel
from ..errors import WorkerCrashedError
from ..results import ResultPair
from .dispatcher import Dispatcher
from .progress import ProgressBar
from .supervisor import Supervisor

__all__ = ["BatchLoop", "Interrupted", "PoolHooks"]


class Interrupted(BaseException):
    """The loop was interrupted from another thread (an async caller was cancelled)."""


@dataclass(frozen=True)
class PoolHooks:
    """What the pool does around each batch it runs (one at a time)."""

    started: Callable[[BatchLoop], None]  # refuses a second batch at once; resets
    needs_workers: Callable[[], None]  # the batch has requests: workers must run
    ended: Callable[[BatchLoop], None]


class BatchLoop:
    """Runs one batch on a pool's workers; `run()` is the generator of result groups.

    Parameters:
        dispatcher: the batch's ledger and policy.
        supervisor: the pool's workers.
        options: the batch's options message for the workers.
        admission: the batch's cache and cost cap (its writes are committed as it goes).
        progress: the progress bar, or None.
        telemetry: the batch's OpenTelemetry metrics and spans, or None.
    """

    def __init__(
        self,
        dispatcher: Dispatcher[Worker],
        supervisor: Supervisor,
        options: BatchOptions,
        admission: Admission,
        progress: ProgressBar | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self._supervisor = supervisor
        self._options = options
        self._admission = admission
        self._progress = progress
        self._telemetry = telemetry
        self._interrupted = False

    def interrupt(self) -> None:
        """Stop the loop at its next turn (from any thread): it raises `Interrupted`."""
        self._interrupted = True
        self._supervisor.wake()

    def run(self, hooks: PoolHooks) -> Generator[list[ResultPair], None, None]:
        """Send, yield, wait, settle, until everything read has been yielded; `hooks`
        tell the pool when the batch starts, needs its workers, and ends."""
        dispatcher, supervisor = self.dispatcher, self._supervisor
        hooks.started(self)
        error: BaseException | None = None
        try:
            dispatcher.peek()  # an empty input needs no worker
            if not dispatcher.finished:
                hooks.needs_workers()
            supervisor.begin([self._options])
            while True:
                for worker, tasks in dispatcher.fill(supervisor.ready()).items():
                    worker.send(tasks)
                self._admission.tick()
                if self._telemetry is not None:
                    self._telemetry.refresh(time.monotonic())
                if self._progress is not None:
                    self._progress.update(dispatcher.state())
                if done := dispatcher.take_results():
                    yield done
                if dispatcher.finished:
                    break
                self._turn()
            if dispatcher.input_error is not None:
                raise dispatcher.input_error
        except BaseException as raised:
            error = None if isinstance(raised, GeneratorExit) else raised  # not: a `break`
            raise
        finally:
            self._end(error)
            hooks.ended(self)

    def _turn(self) -> None:
        """Wait for what comes back, and take it in."""
        dispatcher, supervisor = self.dispatcher, self._supervisor
        heard, exits = supervisor.wait(dispatcher.next_wake(), dispatcher.owing_since)
        if self._interrupted:
            raise Interrupted
        for worker, outcomes in heard:
            for outcome in outcomes:
                dispatcher.settle(worker, outcome)
        for worker, exit_ in exits:
            dispatcher.reclaim(worker, exit_)
        if (broken := supervisor.broken) is not None:
            # Workers cannot start: finish with the live ones, fail what none can run.
            dispatcher.stop_reading(broken)
            if not supervisor.workers:
                dispatcher.fail_everything(
                    lambda index: WorkerCrashedError(
                        f"the request could not run: {broken.args[0]}", exitcode=None, index=index
                    )
                )

    def _end(self, error: BaseException | None) -> None:
        self.dispatcher.summary.finish()
        if self._progress is not None:
            self._progress.close()
        if self._telemetry is not None:
            self._telemetry.close(self.dispatcher.summary, error)
        self._admission.commit()
        self._supervisor.begin([])
        if self.dispatcher.unfinished or self.dispatcher.abandoned:
            self._supervisor.broadcast([Cancel(self._options.batch_id)])
