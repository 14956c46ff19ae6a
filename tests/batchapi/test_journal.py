"""The journal of mode="batch": a re-run after a kill, Ctrl-C or a stopped consumer
re-attaches to the jobs it left, pays for nothing twice and yields every index once."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batch_stream_openai import BatchPool, BudgetExceededError, Result, run_batch, stream_batch
from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import (
    FAST,
    SYSTEM,
    TEST_API_KEY,
    answered_by_jobs,
    answers,
    ask,
    creates,
    each_once,
    jobs_of,
    rerun_script,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

KILLED_RUN = """
from batch_stream_openai import OpenAIRequest, stream_batch
if __name__ == "__main__":
    requests = [OpenAIRequest({system!r}, user, model="gpt-4o-mini", api="chat")
                for user in {users!r}]
    stream = stream_batch(requests, max_concurrency=4, workers=1, base_url={base_url!r},
                          api_key={api_key!r}, mode="batch", batch_size=10,
                          poll_interval=0.05, journal={journal!r}{extra})
    for index, value in stream:
        print(index, flush=True)
"""


def start_run(fake: FakeOpenAIServer, users: list[str], journal: Path, extra: str = "") -> Any:
    """A run of `users` in batch mode in a process of its own (to be killed)."""
    script = KILLED_RUN.format(
        system=SYSTEM,
        users=users,
        base_url=fake.base_url,
        api_key=TEST_API_KEY,
        journal=str(journal),
        extra=extra,
    )
    code = textwrap.dedent(script)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def stream_once(requests: list[Any], **options: Any) -> dict[int, Result]:
    with stream_batch(requests, return_results=True, **options) as stream:
        return each_once(stream)


def kill_once_created(child: Any, fake: FakeOpenAIServer, jobs: int) -> None:
    """SIGKILL `child` once the server has `jobs` jobs (before any finished)."""
    try:
        wait_until(lambda: len(jobs_of(fake)) == jobs, timeout=30, what=f"{jobs} jobs created")
        child.send_signal(signal.SIGKILL)
        printed, _ = child.communicate(timeout=10)
    finally:
        child.kill()
    assert printed == ""  # killed before any job finished


def paid_twice(fake: FakeOpenAIServer) -> list[str]:
    paid = Counter(cid for job in jobs_of(fake) for cid in job["paid"])
    return [cid for cid, count in paid.items() if count > 1]


def test_a_rerun_with_the_journal_reattaches_after_a_kill(
    jobs_fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    jobs_fake.configure(batch_seconds=4.0)
    journal = tmp_path / "jobs.journal"
    users = [f"k{i}" for i in range(30)]
    kill_once_created(start_run(jobs_fake, users, journal), jobs_fake, 3)
    created = creates(jobs_fake)
    with BatchPool(
        max_concurrency=4, workers=1, base_url=jobs_fake.base_url, api_key=TEST_API_KEY
    ) as pool:
        values = dict(pool.stream([ask(u) for u in users], **FAST, journal=journal))
        assert [values[i] for i in range(30)] == answers(users)
        assert creates(jobs_fake) == created
        # A third run has nothing left to yield, and sends nothing.
        assert list(pool.stream([ask(u) for u in users], **FAST, journal=journal)) == []
    assert creates(jobs_fake) == created


def test_run_batch_with_a_journal_returns_everything_on_every_rerun(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any], tmp_path: Path
) -> None:
    journal = tmp_path / "j"
    users = [f"rr{i}" for i in range(5)]
    options = {**pool_options, **FAST, "journal": journal}
    assert run_batch([ask(u) for u in users], **options) == answers(users)
    assert run_batch([ask(u) for u in users], **options) == answers(users)  # pays nothing
    assert creates(jobs_fake) == 1
    more = [*users, "rr5"]  # one appended: only it is sent
    results = run_batch([ask(u) for u in more], return_results=True, **options)
    assert [r.text for r in results] == answers(more)
    assert [r.replayed for r in results] == [True] * 5 + [False]
    assert creates(jobs_fake) == 2 and jobs_of(jobs_fake)[1]["custom_ids"] == ["5"]
    # stream_batch with the journal yields only what no earlier run yielded: nothing.
    assert list(stream_batch([ask(u) for u in more], **options)) == []


def test_ctrl_c_without_a_journal_never_pays_twice(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any], own_cache_dir: Path
) -> None:
    jobs_fake.configure(batch_seconds=3.0)
    child = subprocess.Popen(
        [sys.executable, "-c", rerun_script(jobs_fake, "cc", 20)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: len(jobs_of(jobs_fake)) == 2, timeout=30, what="2 jobs created")
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=30)
    finally:
        child.kill()
    assert "KeyboardInterrupt" in stderr and "run the same batch again" in stderr
    assert len(list(own_cache_dir.glob("*.lock"))) == 1  # the journal was kept
    users = [f"cc{i}" for i in range(20)]
    results = run_batch([ask(u) for u in users], **pool_options, **FAST, batch_size=10)
    assert results == answers(users)
    assert creates(jobs_fake) == 2  # re-attached: nothing submitted again
    assert max(answered_by_jobs(jobs_fake).values()) == 1
    assert not list(own_cache_dir.iterdir())  # nothing owed any more: the journal is gone


def test_a_killed_consumer_gets_exactly_the_rest_on_a_rerun(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any], tmp_path: Path
) -> None:
    journal = tmp_path / "j"
    script = rerun_script(jobs_fake, "kc", 300, journal=journal, batch_size=300)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    printed: list[int] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            printed.append(int(line))
            if len(printed) == 100:
                child.send_signal(signal.SIGKILL)
                break
        rest = child.stdout.read()  # what it printed before it died (buffered here too)
        child.wait(timeout=30)
    finally:
        child.kill()
    printed += [int(line) for line in rest.split()]
    stream = stream_batch(
        [ask(f"kc{i}") for i in range(300)],
        return_results=True,
        **pool_options,
        **FAST,
        journal=journal,
    )
    again = dict(stream)
    twice = set(printed) & set(again)
    assert set(printed) | set(again) == set(range(300))
    assert len(twice) <= 1 and all(again[i].replayed for i in twice)
    # The one it was on when it died, printed or not, is flagged; none other is.
    assert sum(result.replayed for result in again.values()) <= 1
    assert creates(jobs_fake) == 1 and max(answered_by_jobs(jobs_fake).values()) == 1


def test_a_journal_refuses_other_requests_at_the_same_indices(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any], tmp_path: Path
) -> None:
    journal = tmp_path / "j"
    with BatchPool(max_concurrency=2, workers=1, **pool_options) as pool:
        assert pool.run([ask("same 0"), ask("same 1")], **FAST, journal=journal) == answers(
            ["same 0", "same 1"]
        )
        with pytest.raises(ValueError, match="request 1 is not the one the journal"):
            list(pool.stream([ask("same 0"), ask("other 1")], **FAST, journal=journal))
    assert len(jobs_of(jobs_fake)) == 1  # nothing more was sent


def test_a_failure_the_caller_was_handed_comes_back_flagged_on_a_rerun(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any], tmp_path: Path
) -> None:
    journal = tmp_path / "j"
    requests = [ask(f"b{i}") for i in range(6)]
    options = {**pool_options, **FAST, "journal": journal, "max_cost": 0.0006}
    with stream_batch(requests, return_results=True, **options) as stream:
        index, first = next(stream)  # a refusal comes first; the caller stops on it
    assert isinstance(first.error, BudgetExceededError) and not first.replayed
    again = dict(stream_batch(requests, return_results=True, **options))
    assert again[index].replayed  # it may have been handled: it says so


def test_jobs_of_a_killed_run_that_answer_before_the_input_reaches_them_give_each_index_once(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any], tmp_path: Path
) -> None:
    # The killed run left two jobs, which finish before the re-run starts. The re-run
    # looks at them once it has read one request, so they answer indices its input has
    # not reached yet (and their 503 line goes into a later job meanwhile): reaching
    # those indices must neither yield them again nor send them again.
    jobs_fake.configure(batch_seconds=1.0)
    journal = tmp_path / "j"
    users = [f"ahead{i}" for i in range(19)] + ["ahead19 [[status=503 times=1]]"]
    kill_once_created(start_run(jobs_fake, users, journal), jobs_fake, 2)
    finished = lambda: all(job["status"] == "completed" for job in jobs_of(jobs_fake))  # noqa: E731
    wait_until(finished, timeout=30, what="the killed run's jobs finished")
    results = stream_once([ask(u) for u in users], **pool_options, **FAST, journal=journal)
    assert [results[i].text for i in range(20)] == answers(users)
    assert creates(jobs_fake) == 3  # the two, and one for the line that failed
    assert jobs_of(jobs_fake)[2]["custom_ids"] == ["19"]
    assert not paid_twice(jobs_fake)


def test_answers_a_killed_run_had_in_its_journal_only_reach_the_cache_on_the_rerun(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any], tmp_path: Path
) -> None:
    # The journal keeps a job's answers at once, the cache commits within a second: a run
    # killed on its first result had most of them in the journal only.
    journal, cache = tmp_path / "j", tmp_path / "cache.sqlite"
    users = [f"kept{i}" for i in range(10)]
    child = start_run(jobs_fake, users, journal, extra=f", cache={str(cache)!r}")
    try:
        assert child.stdout is not None
        first = child.stdout.readline()
        child.send_signal(signal.SIGKILL)
        # What readline buffered past the first line is in the text wrapper, not the pipe
        # (communicate with a timeout reads the pipe only, and would lose it).
        printed = {int(line) for line in (first + child.stdout.read()).split()}
        child.wait(timeout=10)
    finally:
        child.kill()
    options = {**pool_options, **FAST, "cache": cache}
    rest = stream_once([ask(u) for u in users], **options, journal=journal)
    assert printed and printed | set(rest) == set(range(10))
    assert all(result.text for result in rest.values())
    again = stream_once([ask(u) for u in users], **options, journal=tmp_path / "j2")
    assert [again[i].text for i in range(10)] == answers(users)
    assert all(result.cached for result in again.values())
    assert creates(jobs_fake) == 1  # nothing was sent after the first run's job
