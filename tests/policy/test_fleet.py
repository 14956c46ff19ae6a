"""The fleet: its choice of endpoint in-process (least in flight, caps, set aside,
probes), then real pools against two and three bundled servers, one of them killed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator

import pytest

from batch_stream_openai import BatchPool, OpenAIRequest, run_batch, stream_batch
from batch_stream_openai._policy.fleet import COOL_DOWN_S, FAILURES_TO_SET_ASIDE, Fleet
from batch_stream_openai.errors import APIConnectionError, APIError
from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import TEST_API_KEY, FakeClock, answers, ask, closed_port, servers

pytestmark = pytest.mark.timeout(10)

URLS = ["http://a:8000/v1", "http://b:8000/v1", "http://c:8000/v1"]
REFUSED = APIConnectionError("Connection refused (http://b:8000)", retryable=True)


def send(fleet: Fleet, avoid: Collection[int] = ()) -> int:
    target = fleet.pick(avoid)
    assert target is not None
    fleet.sent(target)
    return target


@pytest.mark.fast
def test_the_endpoint_with_the_fewest_in_flight_goes_first_ties_in_turn() -> None:
    fleet = Fleet(URLS)
    assert [send(fleet) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    fleet.ended(1, 0.1, None)
    fleet.ended(1, 0.1, None)
    assert send(fleet) == 1  # the least busy now
    assert send(fleet, avoid={1}) != 1


@pytest.mark.fast
def test_no_endpoint_takes_more_than_its_cap() -> None:
    fleet = Fleet(URLS[:2], endpoint_concurrency=2)
    assert sorted(send(fleet) for _ in range(4)) == [0, 0, 1, 1]
    assert fleet.pick() is None and fleet.capacity() == 4
    fleet.ended(0, 0.1, None)
    assert fleet.pick() == 0


@pytest.mark.fast
def test_an_endpoint_failing_in_a_row_is_set_aside_then_probed_then_rejoins() -> None:
    clock = FakeClock()
    fleet = Fleet(URLS, clock=clock)
    for _ in range(FAILURES_TO_SET_ASIDE):
        fleet.sent(1)
        assert fleet.ended(1, 0.001, REFUSED) is True  # to blame: retry elsewhere
    assert {send(fleet) for _ in range(10)} == {0, 2}
    clock.now += COOL_DOWN_S
    assert 1 in {send(fleet) for _ in range(3)}  # its probe
    assert {send(fleet) for _ in range(10)} == {0, 2}  # one probe at a time
    fleet.ended(1, 0.1, None)
    assert [send(fleet) for _ in range(3)] == [1, 1, 1]  # back, and the least busy


@pytest.mark.fast
def test_a_failed_probe_sets_it_aside_for_longer() -> None:
    clock = FakeClock()
    fleet = Fleet(URLS[:2], clock=clock)
    for _ in range(FAILURES_TO_SET_ASIDE):
        fleet.sent(1)
        fleet.ended(1, 0.001, REFUSED)
    clock.now += COOL_DOWN_S
    assert send(fleet, avoid={0}) == 1
    fleet.ended(1, 0.001, APIError("Error code: 502", status_code=502, retryable=True))
    clock.now += COOL_DOWN_S  # the second cool-down is twice as long
    assert {send(fleet) for _ in range(5)} == {0}
    clock.now += COOL_DOWN_S
    assert send(fleet, avoid={0}) == 1


@pytest.mark.fast
def test_answers_with_a_4xx_do_not_set_an_endpoint_aside() -> None:
    fleet = Fleet(URLS[:2])
    for _ in range(10):
        fleet.sent(0)
        assert fleet.ended(0, 0.1, APIError("Error code: 400", status_code=400)) is False
    assert {send(fleet) for _ in range(4)} == {0, 1}


@pytest.mark.fast
def test_with_every_endpoint_set_aside_all_are_used() -> None:
    fleet = Fleet(URLS[:2])
    for target in (0, 1):
        for _ in range(FAILURES_TO_SET_ASIDE):
            fleet.sent(target)
            fleet.ended(target, 0.001, REFUSED)
    assert {send(fleet) for _ in range(4)} == {0, 1}


@pytest.mark.fast
def test_one_endpoint_is_never_set_aside() -> None:
    fleet = Fleet(URLS[:1])
    for _ in range(10):
        fleet.sent(0)
        assert fleet.ended(0, 0.001, REFUSED) is False
    assert fleet.pick() == 0


@pytest.mark.fast
def test_a_new_batch_starts_with_nothing_in_flight() -> None:
    fleet = Fleet(URLS[:2], endpoint_concurrency=1)
    send(fleet), send(fleet)
    assert fleet.pick() is None
    fleet.begin()
    assert fleet.pick() is not None


@pytest.mark.timeout(60)
def test_requests_spread_over_the_endpoints_and_say_which_one_answered() -> None:
    with servers(2, latency=0.02) as (a, b):
        requests = [ask(f"q{i}") for i in range(60)]
        stream = stream_batch(
            requests,
            base_url=[a.base_url, b.base_url],
            api_key=TEST_API_KEY,
            max_concurrency=10,
            workers=1,
            return_results=True,
        )
        results = dict(stream)
        served = {a.base_url: a.stats().requests, b.base_url: b.stats().requests}
    assert [results[i].text for i in range(60)] == answers([r.user_prompt for r in requests])
    assert Counter(result.base_url for result in results.values()) == served
    assert min(served.values()) >= 20
    assert {url: e.ok for url, e in stream.summary.endpoints.items()} == served
    assert "endpoints:" in str(stream.summary)


@pytest.mark.timeout(60)
def test_no_endpoint_gets_more_than_endpoint_concurrency() -> None:
    with servers(2, latency=0.05) as (a, b):
        results = run_batch(
            [ask(f"q{i}") for i in range(60)],
            base_url=[a.base_url, b.base_url],
            api_key=TEST_API_KEY,
            max_concurrency=20,
            endpoint_concurrency=3,
            workers=2,
        )
        assert [a.stats().max_in_flight, b.stats().max_in_flight] == [3, 3]
    assert not [r for r in results if isinstance(r, Exception)]


@pytest.mark.timeout(90)
def test_an_endpoint_killed_mid_batch_loses_nothing_and_rejoins_when_restarted() -> None:
    with servers(3, latency=0.02) as fleet:
        urls = [server.base_url for server in fleet]
        port = fleet[1].port
        restarted: list[FakeOpenAIServer] = []

        def requests() -> Iterator[OpenAIRequest]:
            # Until the restarted endpoint has served its share again (or 6,000).
            for i in range(6000):
                if i % 100 == 0 and restarted and restarted[0].stats().requests >= 30:
                    return
                yield ask(f"q{i}")

        seen: Counter[int] = Counter()
        with BatchPool(base_url=urls, api_key=TEST_API_KEY, max_concurrency=30) as pool:
            stream = pool.stream(requests(), return_results=True)
            for done, (index, result) in enumerate(stream):
                seen[index] += 1
                assert result.ok, result.error
                if done == 300:
                    fleet[1].kill()
                killed = stream.summary.endpoints.get(urls[1])
                if not restarted and killed is not None and killed.failed:
                    restarted.append(FakeOpenAIServer(latency=0.02, port=port).start())
                    fleet[1] = restarted[0]
        assert set(seen.values()) == {1} and sorted(seen) == list(range(len(seen)))
        assert restarted[0].stats().requests >= 30  # it rejoined
        summary = stream.summary.endpoints
        assert summary[urls[1]].failed <= 40  # what was in flight, and a probe or two
        assert summary[urls[0]].ok + summary[urls[2]].ok > 2 * summary[urls[1]].ok


@pytest.mark.timeout(60)
def test_with_one_base_url_every_result_names_it(fake: FakeOpenAIServer) -> None:
    stream = stream_batch(
        [ask(f"q{i}") for i in range(10)] + [ask("down [[status=503]]")],
        base_url=fake.base_url,
        api_key=TEST_API_KEY,
        workers=1,
        max_retries=1,
        return_results=True,
    )
    results = dict(stream)
    assert {result.base_url for result in results.values()} == {fake.base_url}
    assert [index for index, result in results.items() if not result.ok] == [10]
    endpoint = stream.summary.endpoints[fake.base_url]
    assert (endpoint.ok, endpoint.failed) == (10, 2)  # the 503, tried twice
    assert "endpoints:" not in str(stream.summary)


@pytest.mark.timeout(60)
def test_a_failover_is_not_counted_as_a_retry(fake: FakeOpenAIServer) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    stream = stream_batch(
        [ask(f"f{i}") for i in range(20)],
        base_url=[dead, fake.base_url],
        api_key=TEST_API_KEY,
        workers=1,
        max_concurrency=4,
    )
    assert all(isinstance(value, str) for _, value in stream)
    assert stream.summary.endpoints[dead].failed >= 1  # some went there first
    assert stream.summary.retries == 0


@pytest.mark.timeout(60)
def test_a_request_that_failed_on_every_endpoint_still_gets_to_the_live_one(
    fake: FakeOpenAIServer,
) -> None:
    # Every request meets a 503 once on the live endpoint, which is set aside for it, and
    # a refused connection on the dead one: its retries must not all go to the dead one.
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    users = [f"flaky {i} [[status=503 times=1]]" for i in range(40)]
    results = run_batch(
        [ask(user) for user in users],
        base_url=[fake.base_url, dead],
        api_key=TEST_API_KEY,
        workers=1,
        max_concurrency=8,
        max_retries=2,
    )
    assert results == answers(users)
