"""The worker's task server, through a real pool: what keeps its loop free."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from batch_stream_openai import run_batch
from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

from ..helpers import SYSTEM, ask


@pytest.mark.timeout(60)
def test_a_postprocess_slow_to_load_does_not_get_its_worker_taken_for_hung(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    # Unpickling the postprocess imports its module in the worker (4 s here, beyond
    # hang_timeout and its kill grace): that runs beside the loop, which goes on beating.
    slow = importlib.import_module("tests.worker.slow_to_import")
    fake.configure(latency=0.2)
    users = [f"q{i}" for i in range(4)]
    results = run_batch(
        [ask(user) for user in users],
        workers=1,
        max_concurrency=4,
        hang_timeout=1.0,
        postprocess=slow.with_pid,
        **pool_options,
    )
    assert [text for text, _ in results] == [expected_answer(SYSTEM, u) for u in users]
    assert len({pid for _, pid in results}) == 1  # never ended and replaced
