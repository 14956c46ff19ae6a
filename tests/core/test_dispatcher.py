"""The dispatcher's ledger and policy, in-process: workers are plain names, time is fake."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch_stream_openai import APIError, OpenAIRequest, WorkerCrashedError
from batch_stream_openai._core.delivery import Delivery
from batch_stream_openai._core.dispatcher import MAX_CRASHES_PER_REQUEST, Dispatcher, Policies
from batch_stream_openai._core.intake import Intake
from batch_stream_openai._policy.fleet import Fleet
from batch_stream_openai._policy.hedging import Hedging
from batch_stream_openai._policy.limits import Budget
from batch_stream_openai._policy.retry import Retries, RetryPolicy, RetrySchedule
from batch_stream_openai._spending.admission import Admission
from batch_stream_openai._spending.cache import ResponseCache
from batch_stream_openai._spending.cap import Spending
from batch_stream_openai._spending.prices import PriceTable
from batch_stream_openai._wire.protocol import Cancel, Exit, Outcome, Task
from batch_stream_openai.errors import APIConnectionError
from batch_stream_openai.results import Result, Usage

from ..helpers import FakeClock

pytestmark = [pytest.mark.fast, pytest.mark.timeout(10)]

CRASHED = Exit(exitcode=-9, was_ready=True)


def ask(i: int) -> OpenAIRequest:
    return OpenAIRequest("s", f"q{i}", model="gpt-4o-mini", api="chat")


def make(
    requests: object,
    concurrency: int = 4,
    *,
    rich: bool = False,
    clock: FakeClock | None = None,
    policy: RetryPolicy | None = None,
    rpm: float | None = None,
    fleet: Fleet | None = None,
    hedging: Hedging | None = None,
) -> Dispatcher[str]:
    clock = clock or FakeClock()
    fleet = fleet or Fleet([""])
    schedule = RetrySchedule(policy or RetryPolicy(max_attempts=3, initial_backoff=0.1))
    policies = Policies(
        Budget(concurrency, rpm=rpm, tpm=None, adaptive=False, clock=clock),
        Retries(schedule, len(fleet.urls), flex_fallback=False),
        fleet=fleet,
        hedging=hedging,
    )
    delivery = Delivery(rich=rich, urls=fleet.urls, clock=clock)
    return Dispatcher(1, Intake(requests), policies, delivery, clock=clock)  # type: ignore[arg-type]


def answer(task: Task, text: str | None = None) -> Outcome:
    text = text if text is not None else f"answer {task.index}"
    result = Result(task.index, text=text, output=text, usage=Usage(3, 4), status_code=200)
    return Outcome.of(task, result)


def failure(task: Task, status: int, retryable: bool) -> Outcome:
    error = APIError("nope", status_code=status, index=task.index, retryable=retryable)
    return Outcome.of(task, Result(task.index, status_code=status, error=error))


def tasks_of(sends: dict[str, list[Task | Cancel]]) -> Iterator[tuple[str, Task]]:
    for worker, messages in sends.items():
        for task in messages:
            if isinstance(task, Task):
                yield worker, task


def test_at_most_the_concurrency_is_sent_and_the_load_is_spread() -> None:
    dispatcher = make([ask(i) for i in range(10)], concurrency=4)
    sends = dispatcher.fill(["a", "b"])
    assert {worker: len(tasks) for worker, tasks in sends.items()} == {"a": 2, "b": 2}
    assert dispatcher.fill(["a", "b"]) == {}  # the ledger is full
    for worker, task in tasks_of(sends):
        dispatcher.settle(worker, answer(task))
    assert sorted(i for i, _ in dispatcher.take_results()) == [0, 1, 2, 3]
    assert sum(len(t) for t in dispatcher.fill(["a", "b"]).values()) == 4


def test_nothing_is_sent_without_a_ready_worker() -> None:
    dispatcher = make([ask(0)])
    assert dispatcher.fill([]) == {}
    assert dispatcher.unfinished == 0


def test_every_index_once_and_stale_outcomes_are_ignored() -> None:
    dispatcher = make([ask(i) for i in range(3)])
    sends = dispatcher.fill(["a"])
    (task, *_rest) = sends["a"]
    dispatcher.settle("a", answer(task))
    dispatcher.settle("a", answer(task))  # a duplicate outcome
    dispatcher.settle("b", answer(sends["a"][1]))  # from a worker it was never sent to
    other_batch = Task(2, task.index, 1, task.payload)
    dispatcher.settle("a", answer(other_batch))
    assert dispatcher.take_results() == [(0, "answer 0")]


def test_a_retryable_failure_is_retried_after_its_wait_and_every_attempt_is_paced() -> None:
    clock = FakeClock()
    dispatcher = make([ask(0)], clock=clock, rpm=60)  # one attempt per second
    (task,) = dispatcher.fill(["a"])["a"]
    dispatcher.settle("a", failure(task, 503, retryable=True))
    assert dispatcher.take_results() == []
    assert dispatcher.fill(["a"]) == {}  # waiting for its backoff and the rate budget
    clock.now += 1.0
    (retry,) = dispatcher.fill(["a"])["a"]
    assert (retry.index, retry.attempt) == (0, 2)
    dispatcher.settle("a", answer(retry))
    assert dispatcher.take_results() == [(0, "answer 0")]
    assert dispatcher.summary.retries == 1


def test_a_final_failure_yields_its_error_and_429s_are_counted() -> None:
    clock = FakeClock()
    dispatcher = make([ask(0), ask(1)], clock=clock, policy=RetryPolicy(max_attempts=2))
    sends = dispatcher.fill(["a"])["a"]
    dispatcher.settle("a", failure(sends[0], 400, retryable=False))
    dispatcher.settle("a", failure(sends[1], 429, retryable=True))
    clock.now += 100
    (retry,) = dispatcher.fill(["a"])["a"]
    dispatcher.settle("a", failure(retry, 429, retryable=True))
    results = dict(dispatcher.take_results())
    assert isinstance(results[0], APIError) and results[0].status_code == 400
    assert isinstance(results[1], APIError) and results[1].status_code == 429
    assert dispatcher.summary.rate_limited == 2
    assert dispatcher.summary.failed == 2


def test_a_dead_workers_requests_are_resent_elsewhere() -> None:
    dispatcher = make([ask(i) for i in range(4)])
    sends = dispatcher.fill(["a", "b"])
    dispatcher.reclaim("a", CRASHED)
    resent = dispatcher.fill(["b", "c"])
    assert sorted(t.index for _, t in tasks_of(resent)) == sorted(t.index for t in sends["a"])
    for worker, task in [*tasks_of(resent), ("b", sends["b"][0]), ("b", sends["b"][1])]:
        dispatcher.settle(worker, answer(task))
    assert Counter(i for i, _ in dispatcher.take_results()) == Counter(range(4))


def test_a_worker_that_dies_before_it_is_ready_costs_no_crash() -> None:
    dispatcher = make([ask(0)])
    dispatcher.fill(["a"])
    for _ in range(MAX_CRASHES_PER_REQUEST + 2):
        dispatcher.reclaim("a", Exit(1, was_ready=False))
        dispatcher.fill(["a"])
    assert dispatcher.take_results() == []


def test_quarantine_runs_a_suspect_alone_then_fails_the_poison() -> None:
    # Index 0 kills every worker it runs on; the others answer when their worker lives.
    dispatcher = make([ask(i) for i in range(30)], concurrency=6)
    workers, spawned, deaths = ["a", "b"], 0, 0
    results: dict[int, object] = {}
    crashes: Counter[int] = Counter()  # of each index: the workers it was on that died
    while not dispatcher.finished:
        sends = dispatcher.fill(workers)
        holder = next((w for w, t in tasks_of(sends) if t.index == 0), None)
        for worker, task in tasks_of(sends):
            if worker != holder:
                dispatcher.settle(worker, answer(task))
        if holder is not None:
            held = {task.index for worker, task in tasks_of(sends) if worker == holder}
            if crashes[0] >= 2:  # a suspect runs alone
                assert held == {0}
            crashes.update(held)
            dispatcher.reclaim(holder, CRASHED)
            deaths += 1
            spawned += 1
            workers = [w for w in workers if w != holder] + [f"new{spawned}"]
        results.update(dispatcher.take_results())
        assert deaths <= 10
    assert sorted(results) == list(range(30))
    error = results.pop(0)
    assert isinstance(error, WorkerCrashedError)
    assert error.attempts == MAX_CRASHES_PER_REQUEST + 1 == deaths
    assert results == {i: f"answer {i}" for i in range(1, 30)}


def test_a_suspect_runs_alone_so_poisons_around_it_never_fail_an_innocent_request() -> None:
    # Every fifth request kills its worker. Workers answer one request a round, oldest
    # first, so each keeps several in flight: a suspect placed beside running requests
    # would die with the next poison among them, again and again, and an innocent one
    # would end as WorkerCrashedError.
    poisons = set(range(0, 60, 5))
    dispatcher = make([ask(i) for i in range(60)], concurrency=8)
    running: dict[str, list[Task]] = {"w0": [], "w1": []}
    results: dict[int, object] = {}
    crashes: Counter[int] = Counter()  # of each index: the workers it was on that died
    spawned = 0
    while not dispatcher.finished:
        for worker, task in tasks_of(dispatcher.fill(list(running))):
            if crashes[task.index] >= 2:
                assert not running[worker], f"suspect {task.index} sent beside others"
            running[worker].append(task)
        for worker in list(running):
            if not running[worker]:
                continue
            task = running[worker].pop(0)
            if task.index in poisons:
                crashes.update(t.index for t in [task, *running[worker]])
                dispatcher.reclaim(worker, CRASHED)
                del running[worker]
                spawned += 1
                running[f"new{spawned}"] = []
            else:
                dispatcher.settle(worker, answer(task))
        results.update(dispatcher.take_results())
        assert spawned <= 100
    assert sorted(results) == list(range(60))
    assert all(isinstance(results[i], WorkerCrashedError) for i in poisons)
    assert {i: results[i] for i in results if i not in poisons} == {
        i: f"answer {i}" for i in range(60) if i not in poisons
    }


def test_an_input_error_is_raised_only_after_what_was_read() -> None:
    def requests() -> Iterator[OpenAIRequest]:
        yield ask(0)
        yield ask(1)
        raise KeyError("broken input")

    dispatcher = make(requests(), concurrency=8)
    sends = dispatcher.fill(["a"])
    assert len(sends["a"]) == 2
    assert isinstance(dispatcher.input_error, KeyError)
    assert not dispatcher.finished  # two are still owed
    for task in sends["a"]:
        dispatcher.settle("a", answer(task))
    assert sorted(i for i, _ in dispatcher.take_results()) == [0, 1]
    assert dispatcher.finished


def test_fail_everything_yields_each_owed_index_once() -> None:
    dispatcher = make([ask(i) for i in range(6)], concurrency=4)
    dispatcher.fill(["a"])
    dispatcher.fail_everything(lambda i: WorkerCrashedError("gone", exitcode=None, index=i))
    results = dict(dispatcher.take_results())
    assert sorted(results) == [0, 1, 2, 3]
    assert all(isinstance(v, WorkerCrashedError) for v in results.values())
    assert dispatcher.finished


def test_rich_results_carry_attempts_and_latency_from_the_first_send() -> None:
    clock = FakeClock()
    dispatcher = make([ask(0)], clock=clock, rich=True)
    (task,) = dispatcher.fill(["a"])["a"]
    dispatcher.settle("a", failure(task, 500, retryable=True))
    clock.now += 5
    (retry,) = dispatcher.fill(["a"])["a"]
    clock.now += 1
    dispatcher.settle("a", answer(retry))
    ((index, result),) = dispatcher.take_results()
    assert (index, result.attempts, result.latency_s, result.text) == (0, 2, 6.0, "answer 0")


def hedged_batch(count: int, fraction: float) -> tuple[Dispatcher[str], str, Task]:
    """`count` requests sent at once; all but index 0 answered after 0.1 s; 0.3 s later,
    the tail (the input is exhausted, slots idle): the fill that may hedge index 0."""
    clock = FakeClock()
    dispatcher = make(
        [ask(i) for i in range(count)],
        concurrency=count,
        rich=True,
        clock=clock,
        hedging=Hedging(fraction),
    )
    first = list(tasks_of(dispatcher.fill(["a", "b"])))
    clock.now += 0.1
    for worker, task in first:
        if task.index != 0:
            dispatcher.settle(worker, answer(task))
    assert len(dispatcher.take_results()) == count - 1
    clock.now += 0.3
    ((owner, original),) = [(worker, task) for worker, task in first if task.index == 0]
    return dispatcher, owner, original


def test_a_straggler_gets_a_duplicate_elsewhere_and_the_first_answer_wins() -> None:
    dispatcher, owner, original = hedged_batch(30, fraction=0.1)
    ((worker, hedge),) = tasks_of(dispatcher.fill(["a", "b"]))
    assert hedge.index == 0 and hedge.attempt == 2 and worker != owner
    state = dispatcher.state()  # two copies on two workers: one request in flight
    assert (state.in_flight, state.waiting) == (1, 0)
    dispatcher.settle(worker, answer(hedge))
    ((index, result),) = dispatcher.take_results()
    assert index == 0 and isinstance(result, Result) and result.hedged and result.attempts == 2
    assert dispatcher.summary.hedges == 1
    assert dispatcher.fill(["a", "b"]) == {owner: [Cancel(1, 0, original.attempt)]}
    dispatcher.settle(owner, answer(original))  # too late: owed to nobody
    assert dispatcher.take_results() == [] and dispatcher.finished


def test_when_a_duplicate_fails_the_original_still_answers_once() -> None:
    dispatcher, owner, original = hedged_batch(30, fraction=0.1)
    ((worker, hedge),) = tasks_of(dispatcher.fill(["a", "b"]))
    dispatcher.settle(worker, failure(hedge, 500, retryable=True))
    assert dispatcher.take_results() == []
    dispatcher.settle(owner, answer(original))
    ((index, result),) = dispatcher.take_results()
    assert index == 0 and isinstance(result, Result) and result.ok and result.hedged


def test_hedges_stay_within_their_fraction_of_the_batch() -> None:
    clock = FakeClock()
    dispatcher = make(
        [ask(i) for i in range(100)], concurrency=200, clock=clock, hedging=Hedging(0.02)
    )
    first = list(tasks_of(dispatcher.fill(["a", "b"])))
    clock.now += 0.1
    for worker, task in first[:20]:
        dispatcher.settle(worker, answer(task))
    clock.now += 10.0  # the other 80 all run far too long
    hedges = list(tasks_of(dispatcher.fill(["a", "b"])))
    assert len(hedges) == 2 == dispatcher.summary.hedges


def test_a_worker_dying_with_one_copy_leaves_the_other_to_answer() -> None:
    dispatcher, owner, original = hedged_batch(30, fraction=0.1)
    ((worker, _),) = tasks_of(dispatcher.fill(["a", "b"]))
    dispatcher.reclaim(worker, CRASHED)
    assert list(tasks_of(dispatcher.fill([owner, "new"]))) == []  # nothing to re-send
    dispatcher.settle(owner, answer(original))
    assert [i for i, _ in dispatcher.take_results()] == [0]


def test_a_request_whose_endpoint_failed_goes_at_once_to_another_not_as_a_retry() -> None:
    fleet = Fleet(["http://a:8000/v1", "http://b:8000/v1"])
    dispatcher = make([ask(0)], rich=True, fleet=fleet, policy=RetryPolicy(max_attempts=1))
    ((worker, task),) = tasks_of(dispatcher.fill(["a"]))
    refused = APIConnectionError("Connection refused", index=0, retryable=True)
    dispatcher.settle(worker, Outcome.of(task, Result(0, error=refused)))
    ((worker, again),) = tasks_of(dispatcher.fill(["a"]))
    assert again.endpoint != task.endpoint and again.attempt == 2
    dispatcher.settle(worker, answer(again))
    ((_, result),) = dispatcher.take_results()
    assert isinstance(result, Result) and result.ok
    assert result.base_url == fleet.urls[again.endpoint]
    assert dispatcher.summary.endpoints[fleet.urls[task.endpoint]].failed == 1


def test_a_straggler_the_hedge_budget_cannot_take_does_not_spin_the_loop() -> None:
    dispatcher, _, _ = hedged_batch(30, fraction=0.02)  # 2% of 30: no hedge at all
    assert list(tasks_of(dispatcher.fill(["a", "b"]))) == []
    assert dispatcher.next_wake() > 0.5  # not 0: nothing could be sent


def test_a_hedge_a_rate_budget_holds_back_is_sent_once_the_budget_allows() -> None:
    clock = FakeClock()
    dispatcher = make(
        [ask(i) for i in range(30)], concurrency=30, clock=clock, hedging=Hedging(0.1), rpm=60
    )
    for _ in range(21):  # one request a second; all but index 0 answered in 50 ms
        sent = list(tasks_of(dispatcher.fill(["a", "b"])))
        clock.now += 0.05
        for worker, task in sent:
            if task.index != 0:
                dispatcher.settle(worker, answer(task))
        clock.now += 0.95
    clock.now -= 0.5  # index 0 is due a hedge, but the rate budget has no room yet
    assert list(tasks_of(dispatcher.fill(["a", "b"]))) == []
    clock.now += 0.5
    ((_, hedge),) = tasks_of(dispatcher.fill(["a", "b"]))
    assert (hedge.index, hedge.attempt) == (0, 2)


def test_a_new_dispatcher_leaves_the_fleet_counts_of_the_batch_running_alone() -> None:
    fleet = Fleet(["http://a:8000/v1", "http://b:8000/v1"], endpoint_concurrency=1)
    running = make([ask(i) for i in range(4)], fleet=fleet)
    assert len(list(tasks_of(running.fill(["a"])))) == 2
    make([ask(9)], fleet=fleet)  # a second stream opened (it will be refused when run)
    assert fleet.pick() is None  # both endpoints are still full


def test_a_worker_dying_with_a_cache_replay_settles_no_reservation() -> None:
    clock = FakeClock()
    with tempfile.TemporaryDirectory() as folder:
        spending = Spending(1.0, PriceTable())
        cache = ResponseCache(Path(folder) / "cache.sqlite")
        policies = Policies(
            Budget(1, rpm=None, tpm=None, adaptive=False, clock=clock),
            Retries(RetrySchedule(RetryPolicy(max_attempts=3)), 1, flex_fallback=False),
            Admission(cache, spending=spending, replays=True),
        )
        intake = Intake([ask(0), ask(0), ask(1)])
        dispatcher: Dispatcher[str] = Dispatcher(1, intake, policies, Delivery(), clock=clock)
        ((worker, task),) = tasks_of(dispatcher.fill(["a"]))
        dispatcher.settle(worker, answer(task))
        done = [index for index, _ in dispatcher.take_results()]
        for _ in range(5):
            list(tasks_of(dispatcher.fill(["a"])))
            dispatcher.reclaim("a", CRASHED)  # it held the replay of index 1
            for worker, task in tasks_of(dispatcher.fill(["b"])):
                dispatcher.settle(worker, answer(task))
            done += [index for index, _ in dispatcher.take_results()]
            clock.now += 1
        assert sorted(done) == [0, 1, 2] and dispatcher.finished
        assert spending.open_reservations == 0
        cache.close()


def test_a_failover_goes_to_an_endpoint_the_request_has_not_failed_on() -> None:
    fleet = Fleet(["http://e0/v1", "http://e1/v1", "http://e2/v1"])
    dispatcher = make([ask(i) for i in range(3)], concurrency=3, fleet=fleet, rich=True)
    sent = list(tasks_of(dispatcher.fill(["w"])))
    worker, task = next((w, t) for w, t in sent if t.endpoint == 0)
    tried = [task.endpoint]
    for _ in range(2):  # refused fast: the refusing endpoints have the fewest in flight
        refused = APIConnectionError("refused", index=task.index, retryable=True)
        dispatcher.settle(worker, Outcome.of(task, Result(task.index, error=refused)))
        ((worker, task),) = tasks_of(dispatcher.fill(["w"]))
        tried.append(task.endpoint)
    assert sorted(tried) == [0, 1, 2]
