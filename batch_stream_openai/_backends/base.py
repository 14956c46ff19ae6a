"""What the pool needs of a worker, whatever runs it: the `Worker` contract.

Every backend's worker has its own two pipes, so a worker killed while writing can only
tear its own result pipe; no lock is shared between workers (unlike
`multiprocessing.Queue`, which a process killed while holding its lock can wedge for
everyone). The dispatcher writes task pipes without ever blocking: what a full pipe does
not take waits in the worker's own buffer until the pipe can take more (`flush`), so a
worker that stopped reading cannot freeze the parent or its watchdog.
"""

from __future__ import annotations

import abc
import contextlib
import os
import pickle
import struct
from multiprocessing.connection import Connection, Pipe
from typing import Any

__all__ = ["ExitSignal", "PipeWorker", "SignalledWorker", "Worker"]


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
        """Send messages to the worker; never blocks. A dead worker's are dropped."""

    @property
    @abc.abstractmethod
    def unsent(self) -> int:
        """Bytes sent but not yet taken by the task pipe (0: all delivered)."""

    @property
    @abc.abstractmethod
    def task_channel(self) -> Any:
        """What a selector watches for room in the task pipe, while `unsent` is not 0."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Write what the task pipe can take now of the unsent bytes; never blocks."""

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
    and close the parent's copies of them once the worker holds its own. Task messages
    are framed as `Connection.send_bytes` frames them (what the worker's
    `Connection.recv` reads), and written to the non-blocking pipe as far as it takes them.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._task_reader, self._task_writer = Pipe(duplex=False)
        self._result_reader, self._result_writer = Pipe(duplex=False)
        os.set_blocking(self._task_writer.fileno(), False)
        self._unsent = bytearray()
        self._stopping = False

    @property
    def worker_ends(self) -> tuple[Connection, Connection]:
        """The ends the worker itself uses: (task reader, result writer)."""
        return self._task_reader, self._result_writer

    @property
    def result_channel(self) -> Connection:
        return self._result_reader

    @property
    def task_channel(self) -> int:
        return self._task_writer.fileno()

    @property
    def unsent(self) -> int:
        return len(self._unsent)

    def send(self, messages: list[Any]) -> None:
        if self._stopping:
            return
        payload = pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
        if len(payload) > 0x7FFFFFFF:
            self._unsent += struct.pack("!iQ", -1, len(payload))
        else:
            self._unsent += struct.pack("!i", len(payload))
        self._unsent += payload
        self.flush()

    def flush(self) -> None:
        while self._unsent:
            try:
                written = os.write(self._task_writer.fileno(), self._unsent)
            except BlockingIOError:
                return  # the pipe is full: the rest goes when it has room again
            except OSError:  # the worker is gone: its death is handled elsewhere
                self._unsent.clear()
                return
            del self._unsent[:written]

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
        """Close the task pipe: the worker sees EOF and exits (what was unsent is dropped)."""
        self._stopping = True
        self._unsent.clear()
        with contextlib.suppress(OSError):
            self._task_writer.close()

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


class SignalledWorker(PipeWorker):
    """A `PipeWorker` that is not a process of ours (a thread, a Ray actor): its exit
    code and sentinel come from an `ExitSignal`, which the subclass sets when it ends."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._exit = ExitSignal()

    @property
    def exitcode(self) -> int | None:
        return self._exit.exitcode

    @property
    def sentinel(self) -> Any:
        return self._exit.reader
