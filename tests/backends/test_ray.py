"""``backend="ray"``: the same results as worker processes, exactly once, on one or more nodes.

Ray runs its own processes (GCS, raylet, its workers) as children of this test process, so
this module replaces conftest's per-test leak check: while Ray runs, no worker actor of
ours may outlive its test; once a fixture has shut Ray down, no process may be left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from typing import Any

import pytest

ray = pytest.importorskip("ray")

import cloudpickle  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from batch_stream_openai import (  # noqa: E402
    BatchPool,
    OpenAIRequest,
    WorkerCrashedError,
    WorkerStartupError,
    run_batch,
    stream_batch,
)
from batch_stream_openai._backends import ray as ray_backend  # noqa: E402
from batch_stream_openai._wire.config import ClientConfig, Secret, WorkerConfig  # noqa: E402
from batch_stream_openai._wire.protocol import Ready  # noqa: E402
from batch_stream_openai.pool import in_input_order  # noqa: E402
from batch_stream_openai.testing import FakeOpenAIServer, expected_answer  # noqa: E402

from ..helpers import wait_for_no_workers  # noqa: E402

SYSTEM = "You are terse."

LOOPBACK = "127.0.0.1"


def ask(user: str) -> OpenAIRequest:
    return OpenAIRequest(SYSTEM, user, model="gpt-4o-mini", api="chat")


def shout(text: str) -> str:
    if "refuse" in text:
        raise ValueError("refused to shout")
    return text.upper()


def die_on_poison(text: str) -> str:
    if "poison" in text:
        os._exit(7)
    return text


def broken_setup() -> None:
    raise RuntimeError("no tokenizer here")


def our_actors() -> list[str]:
    """Names of the live worker actors of any pool."""
    return [
        name
        for name in ray.util.list_named_actors()
        if name.startswith(ray_backend.ACTOR_NAME_PREFIX)
    ]


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def comparable(values: list[Any]) -> list[Any]:
    """Results with each Exception as (type, message): equal when the outcome is the same."""
    return [(type(v).__name__, str(v)) if isinstance(v, Exception) else v for v in values]


def assert_no_process_left(timeout: float) -> None:
    """No child process of this one (but the session's server) within `timeout` s."""
    leaked = wait_for_no_workers({os.getpid()}, timeout)
    assert not leaked, [(p.pid, " ".join(p.cmdline())[:200]) for p in leaked]


def shut_down_ray(cluster: Cluster | None = None) -> None:
    """Shut Ray down, then require that none of its processes (nor any other) is left."""
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()
    assert_no_process_left(timeout=15.0)


@pytest.fixture(autouse=True)
def no_leaked_workers() -> Iterator[None]:
    """Replaces conftest's check for this module (see the module docstring)."""
    yield
    if ray.is_initialized():
        assert eventually(lambda: not our_actors()), f"actors left behind: {our_actors()}"
    else:
        assert_no_process_left(timeout=3.0)


@pytest.fixture
def ray_workers(monkeypatch: pytest.MonkeyPatch) -> list[ray_backend.RayWorker]:
    """Every `RayWorker` the pools of this test start, in order (their node ids, names)."""
    started: list[ray_backend.RayWorker] = []

    class RecordedRayWorker(ray_backend.RayWorker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(ray_backend, "RayWorker", RecordedRayWorker)
    return started


@pytest.mark.timeout(60)
def test_ray_is_optional_and_its_absence_is_explained() -> None:
    code = (
        "import sys\n"
        "import batch_stream_openai\n"
        "assert 'ray' not in sys.modules, 'importing the package imported ray'\n"
        "sys.modules['ray'] = None  # as if it were not installed\n"
        "try:\n"
        "    batch_stream_openai.BatchPool(backend='ray')\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    assert "pip install 'batch-stream-openai[ray]'" in out.stdout


@pytest.fixture(scope="class")
def local_ray() -> Iterator[None]:
    """A new local Ray with 2 CPUs for one class of tests, shut down after them.

    ``address="local"``: never join a cluster that another run started on this machine.
    """
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address=LOOPBACK,
    )
    yield
    shut_down_ray()


@pytest.mark.usefixtures("local_ray")
class TestOnALocalRay:
    """Pools joining the Ray this process already started."""

    @pytest.mark.timeout(60)
    def test_a_worker_asked_to_stop_closes_its_actor_and_shows_its_exit(
        self, pool_options: dict[str, Any]
    ) -> None:
        client = ClientConfig(Secret(pool_options["api_key"]), pool_options["base_url"])
        config = WorkerConfig(client)
        worker = ray_backend.RayWorker(cloudpickle.dumps(config), 0, address=None)
        try:
            first = worker.receive()
            assert first is not None and first[0] == Ready(worker.pid or 0)
            assert worker.node_id == ray.get_runtime_context().get_node_id()
            worker.request_stop()
            worker.join(30)
            assert worker.exitcode == 0  # it closed its clients and finished
            assert wait([worker.sentinel], timeout=5) == [worker.sentinel]
        finally:
            worker.stop(time.monotonic())
        assert worker.name not in our_actors()

    @pytest.mark.timeout(120)
    def test_results_and_their_order_equal_the_local_backends(
        self, pool_options: dict[str, Any], ray_workers: list[ray_backend.RayWorker]
    ) -> None:
        users = [f"same {i}" for i in range(200)]
        users[7] = "[[status=400]] bad request"
        users[11] = "[[status=503 times=1]] retried once"
        users[13] = "please refuse"
        requests = [ask(u) for u in users]
        options: dict[str, Any] = {"workers": 2, "max_concurrency": 32, **pool_options}
        local = run_batch(requests, postprocess=shout, **options)
        with BatchPool(backend="ray", postprocess=shout, **options) as pool:
            pooled = pool.run(requests)
            again = pool.run(requests[:20])  # a second batch on the same actors
        pairs = list(stream_batch(requests, backend="ray", postprocess=shout, **options))

        assert sorted(index for index, _ in pairs) == list(range(len(users)))
        streamed = in_input_order(pairs)
        assert comparable(pooled) == comparable(streamed) == comparable(local)
        assert comparable(again) == comparable(local[:20])
        assert local[0] == expected_answer(SYSTEM, users[0]).upper()
        assert len(ray_workers) == 4  # two per pool, none replaced
        assert all(w.pid is not None and w.node_id for w in ray_workers)

    @pytest.mark.timeout(120)
    def test_a_killed_actor_is_replaced_and_every_index_comes_once(
        self,
        fake: FakeOpenAIServer,
        pool_options: dict[str, Any],
        ray_workers: list[ray_backend.RayWorker],
    ) -> None:
        fake.configure(latency=0.2)
        seen = Counter[int]()
        with BatchPool(backend="ray", workers=2, max_concurrency=16, **pool_options) as pool:
            for index, result in pool.stream([ask(f"k{i}") for i in range(200)]):
                seen[index] += 1
                assert result == expected_answer(SYSTEM, f"k{index}")
                if sum(seen.values()) == 20:
                    victim = ray_workers[0]
                    ray.kill(ray.get_actor(victim.name))
            assert len(our_actors()) == 2
        assert seen == Counter(range(200))
        assert victim.exitcode == -9
        assert victim.name not in our_actors()
        assert len(ray_workers) == 3  # the victim's replacement

    @pytest.mark.timeout(120)
    def test_a_request_that_crashes_its_actor_fails_alone(
        self, pool_options: dict[str, Any], ray_workers: list[ray_backend.RayWorker]
    ) -> None:
        users = [f"ok {i}" for i in range(30)]
        users[5] = "poison pill"
        results = run_batch(
            [ask(u) for u in users],
            backend="ray",
            workers=2,
            max_concurrency=8,
            postprocess=die_on_poison,
            **pool_options,
        )
        error = results[5]
        assert isinstance(error, WorkerCrashedError)
        assert error.attempts == 4  # the first try and three re-sends, each killing an actor
        assert all(results[i] == expected_answer(SYSTEM, u) for i, u in enumerate(users) if i != 5)
        # Each crash is replaced at once; a crash that beats its actor's Ready counts as a
        # failed start, not against the request, which then gets one more try.
        assert len(ray_workers) >= 6

    @pytest.mark.timeout(60)
    def test_an_initializer_that_raises_fails_the_batch_with_its_traceback(
        self, pool_options: dict[str, Any], ray_workers: list[ray_backend.RayWorker]
    ) -> None:
        pool = BatchPool(backend="ray", workers=1, initializer=broken_setup, **pool_options)
        with pool, pytest.raises(WorkerStartupError) as caught:
            pool.run([ask("never sent")])
        assert "RuntimeError: no tokenizer here" in caught.value.cause
        assert [w.exitcode for w in ray_workers] == [3, 3, 3]

    @pytest.mark.timeout(60)
    def test_an_early_break_releases_every_actor(
        self, pool_options: dict[str, Any], ray_workers: list[ray_backend.RayWorker]
    ) -> None:
        requests = [ask(f"[[latency=0.2]] b{i}") for i in range(100)]
        stream = stream_batch(
            requests, backend="ray", workers=2, max_concurrency=20, **pool_options
        )
        for _ in stream:
            break
        assert len(our_actors()) == 2
        started = time.monotonic()
        stream.close()
        assert eventually(lambda: not our_actors()), our_actors()
        assert time.monotonic() - started < 5  # stopping gives actors 1 s, then kills them
        assert all(w.exitcode is not None for w in ray_workers)


@pytest.fixture
def two_nodes() -> Iterator[Cluster]:
    """A simulated cluster: a head and one more node, 1 CPU each, on this machine."""
    # The simulated nodes talk over this machine's own interface address (bound to
    # 127.0.0.1, the head's GCS did not come up here); nothing leaves the machine.
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        shut_down_ray(cluster)


@pytest.mark.timeout(120)
def test_a_batch_completes_across_the_nodes_of_a_cluster(
    two_nodes: Cluster, pool_options: dict[str, Any], ray_workers: list[ray_backend.RayWorker]
) -> None:
    assert not ray.is_initialized()  # the pool joins the cluster itself, at ray_address
    users = [f"spread {i}" for i in range(300)]
    seen = Counter[int]()
    for index, result in stream_batch(
        [ask(u) for u in users],
        backend="ray",
        ray_address=two_nodes.address,
        workers=2,
        max_concurrency=32,
        **pool_options,
    ):
        seen[index] += 1
        assert result == expected_answer(SYSTEM, users[index])
    assert seen == Counter(range(len(users)))
    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(nodes) == 2
    assert {w.node_id for w in ray_workers} == nodes  # one actor on each node
