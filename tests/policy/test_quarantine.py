"""The quarantine: a suspect runs alone, on a worker drained for it, and only then."""

from __future__ import annotations

import pytest

from batch_stream_openai._policy.quarantine import Quarantine

pytestmark = [pytest.mark.fast, pytest.mark.timeout(10)]


def test_a_busy_pool_drains_its_least_loaded_worker_for_a_suspect_then_takes_it_back() -> None:
    quarantine: Quarantine[str] = Quarantine()
    load = {"a": 3, "b": 1}
    sent: list[tuple[int, list[str]]] = []

    def send(index: int, among: list[str]) -> str:
        sent.append((index, among))
        return among[0]

    quarantine.add(7)
    quarantine.release(["a", "b"], load.__getitem__, send)
    assert sent == [] and quarantine.innocent(["a", "b"]) == ["a"]  # b drains
    load["b"] = 0
    quarantine.release(["a", "b"], load.__getitem__, send)
    assert sent == [(7, ["b"])] and quarantine.innocent(["a", "b"]) == ["a"]  # 7 runs alone
    quarantine.settled("b", 7)
    quarantine.release(["a", "b"], load.__getitem__, send)
    assert quarantine.innocent(["a", "b"]) == ["a", "b"]  # nothing waits: b takes work again


def test_a_drained_worker_that_exits_is_forgotten() -> None:
    quarantine: Quarantine[str] = Quarantine()
    quarantine.add(3)
    quarantine.release(["a"], lambda worker: 1, lambda index, among: among[0])
    assert quarantine.innocent(["a"]) == []
    quarantine.forget("a")
    assert quarantine.innocent(["a2"]) == ["a2"]
    quarantine.keep_only(set())  # 3 finished otherwise: nothing waits any more
    assert len(quarantine) == 0
