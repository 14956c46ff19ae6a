"""What the pool needs of a worker, whatever runs it: the `Worker` contract.

Every backend's worker has its own two pipes, so a worker killed while writing can only
tear its own result pipe; no lock is shared between workers (unlike
`multiprocessing.Queue`, which a process killed while holding its lock can wedge for
everyone). Sends go through a feeder thread per worker, as in `multiprocessing.Queue`:
the dispatcher never blocks on the pipe of a worker that stopped reading.
"""

from __future__ import annotations

import abc
import contextlib
import queue
import threading
from multiprocessing.connection import Connection, Pipe
from typing import Any

__all__ = ["ExitSignal", "PipeWorker", "Worker"]


class Worker(abc.ABC):
    """One worker as the parent sees it: feed it, read it, watch it, stop it."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid} exitcode={self.exitcode}>"

    @property
    @abc.abstractmethod
    def pid(self) -> int | None:
        """The worker's process id (the parent's own for a thread), once known."""

    @property
    @abc.abstractmethod
    def exitcode(self) -> int | None:
        """None while running; the exit code (negative: killed by that signal) after."""

    @property
    @abc.abstractmethod
    def sentinel(self) -> Any:
        """Ready for `multiprocessing.connection.wait` once the worker has exited."""

    @property
    @abc.abstractmethod
    def result_channel(self) -> Any:
        """What `multiprocessing.connection.wait` watches for messages from the worker."""

    @abc.abstractmethod
    def send(self, messages: list[Any]) -> None:
        """Queue messages for the worker; never blocks. A dead worker's are dropped."""

    @abc.abstractmethod
    def receive(self) -> list[Any] | None:
        """One list of messages, or None at EOF (the worker exited or tore a frame)."""

    @abc.abstractmethod
    def drain(self) -> list[Any]:
        """Every complete message still readable from an exited worker."""

    @abc.abstractmethod
    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the worker to exit."""

    @abc.abstractmethod
    def request_stop(self) -> None:
        """Ask the worker to exit once it has what was sent before; returns at once."""

    @abc.abstractmethod
    def stop(self, deadline: float) -> None:
        """Ask the worker to exit; make sure it is gone by `deadline` (monotonic)."""

    @abc.abstractmethod
    def abort(self) -> None:
        """End a hung worker; called on every poll until its exit shows on `sentinel`."""


class PipeWorker(Worker):
    """A worker fed through a task pipe and read through a result pipe.

    Subclasses start the worker on `worker_ends` (the task reader and the result writer)
    and close the parent's copies of them once the worker holds its own.
    """

    _CLOSE = object()

    def __init__(self, name: str) -> None:
        self._task_reader, self._task_writer = Pipe(duplex=False)
        self._result_reader, self._result_writer = Pipe(duplex=False)
        self._outgoing: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._feeder = threading.Thread(target=self._feed, name=f"{name}-feeder", daemon=True)
        self._feeder.start()

    @property
    def worker_ends(self) -> tuple[Connection, Connection]:
        """The ends the worker itself uses: (task reader, result writer)."""
        return self._task_reader, self._result_writer

    @property
    def result_channel(self) -> Connection:
        return self._result_reader

    def send(self, messages: list[Any]) -> None:
        self._outgoing.put(messages)

    def receive(self) -> list[Any] | None:
        try:
            messages: list[Any] = self._result_reader.recv()
        except (EOFError, OSError):
            return None
        return messages

    def drain(self) -> list[Any]:
        drained: list[Any] = []
        with contextlib.suppress(EOFError, OSError):
            while self._result_reader.poll():
                messages = self.receive()
                if messages is None:
                    break
                drained.extend(messages)
        return drained

    def request_stop(self) -> None:
        """Close the task pipe (after what is queued): the worker sees EOF and exits."""
        self._outgoing.put(self._CLOSE)

    def close_parent_ends(self) -> None:
        """Stop reading: a worker blocked writing to us gets EPIPE; the task pipe closes."""
        self.request_stop()
        with contextlib.suppress(OSError):
            self._result_reader.close()

    def close_worker_ends(self) -> None:
        """Close the worker's ends here, once the worker holds its own (or is gone)."""
        for conn in self.worker_ends:
            with contextlib.suppress(OSError):
                conn.close()

    def _feed(self) -> None:
        """Thread: write queued messages to the task pipe, merging what has piled up."""
        writer = self._task_writer
        while True:
            messages = self._outgoing.get()
            closing = messages is self._CLOSE
            while not closing:
                try:
                    more = self._outgoing.get_nowait()
                except queue.Empty:
                    break
                if more is self._CLOSE:
                    closing = True
                else:
                    messages = messages + more
            try:
                if messages is not self._CLOSE:
                    writer.send(messages)
            except (OSError, ValueError):  # the worker is gone: its death is handled elsewhere
                closing = True
            if closing:
                with contextlib.suppress(OSError):
                    writer.close()
                return


class ExitSignal:
    """The end of a worker that is not a process of ours (a thread, a Ray actor).

    It shows as a pipe closed at exit, which `multiprocessing.connection.wait` watches
    like a process sentinel.
    """

    def __init__(self) -> None:
        self.reader, self._writer = Pipe(duplex=False)
        self.exitcode: int | None = None

    def set(self, exitcode: int) -> None:
        """Record the exit (the first one counts) and make `reader` readable."""
        if self.exitcode is None:
            self.exitcode = exitcode
        with contextlib.suppress(OSError):
            self._writer.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.close()
