"""The closed-loop bench: percentile and throughput math against hand-computed numbers.

Most tests use a fake clock that only moves when a fake request is "served", so latencies
and wall times are exact; the threaded tests use short sleeps and check counts and a loose
ordering, never real speed.
"""

import threading
import time

import numpy as np
import pytest

from mstage.errors import ServerError, UsageError
from mstage.evaluation.bench import LevelResult, parse_concurrency, run_bench, run_level


class FakeClock:
    """Time advances only through `advance`; thread-safe."""

    def __init__(self):
        self.now = 100.0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            return self.now

    def advance(self, seconds):
        with self.lock:
            self.now += seconds


def test_percentiles_and_throughput_of_known_latencies():
    # 1, 2, ..., 100 ms in 4 s: linear interpolation between ranks gives
    # p50 = (50 + 51) / 2 = 50.5, p90 = 90 + 0.1 * 1 = 90.1, p99 = 99 + 0.01 * 1 = 99.01;
    # throughput = 100 / 4 = 25 req/s; mean = 50.5.
    level = LevelResult(1, np.arange(1, 101) / 1000.0, 4.0, "requests")
    summary = level.summary()
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p90_ms"] == pytest.approx(90.1)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["mean_ms"] == pytest.approx(50.5)
    assert summary["max_ms"] == pytest.approx(100.0)
    assert summary["throughput_rps"] == pytest.approx(25.0)
    assert summary["requests"] == 100


def test_fake_clock_gives_exact_latencies_users_in_order_and_wall_time():
    # Users 1..4 cost 1..4 ms each; 8 timed requests cycle 1,2,3,4,1,2,3,4.
    # Sorted latencies [1,1,2,2,3,3,4,4] ms: p50 = 2.5, p90 = rank 6.3 -> 4, mean 2.5.
    # Wall = first timed send to last answer = 20 ms (warm-up excluded) -> 400 req/s.
    clock = FakeClock()
    timed_users = []

    def make_sender():
        def send(user_id):
            clock.advance(user_id / 1000.0)
            timed_users.append(user_id)

        return send

    level = run_level(make_sender, np.array([1, 2, 3, 4]), concurrency=1, requests=8,
                      duration_limit_s=60, warmup=2, clock=clock)
    assert timed_users[:2] == [1, 2]  # warm-up requests, untimed
    assert timed_users[2:] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert level.latencies_s * 1000 == pytest.approx([1, 2, 3, 4, 1, 2, 3, 4])
    assert level.percentile_ms(50) == pytest.approx(2.5)
    assert level.percentile_ms(90) == pytest.approx(4.0)
    assert level.wall_s == pytest.approx(0.020)
    assert level.throughput == pytest.approx(400.0)
    assert level.stopped_by == "requests"


def test_each_client_gets_its_own_sender_and_all_requests_are_counted():
    senders = []

    def make_sender():
        me = threading.get_ident()
        senders.append(me)

        def send(user_id):
            assert threading.get_ident() == me  # never shared across threads
            time.sleep(0.001)

        return send

    result = run_bench(make_sender, np.arange(5), levels=[1, 3], requests=30,
                       duration_limit_s=60, warmup=1)
    assert [lv.concurrency for lv in result.levels] == [1, 3]
    assert [lv.requests for lv in result.levels] == [30, 30]
    assert len(senders) == 1 + 3 and len(set(senders[1:])) == 3
    assert result.as_dict()["levels"][1]["requests"] == 30


def test_concurrent_clients_overlap_their_waits():
    # 20 ms per request: one client manages ~50 req/s, four ~200 req/s; checked loosely.
    def make_sender():
        return lambda user_id: time.sleep(0.02)

    one = run_level(make_sender, np.arange(3), 1, 12, 60, warmup=0)
    four = run_level(make_sender, np.arange(3), 4, 24, 60, warmup=0)
    assert four.throughput > 1.5 * one.throughput
    assert np.all(four.latencies_s >= 0.019)


def test_duration_limit_ends_a_level_early():
    def make_sender():
        return lambda user_id: time.sleep(0.05)

    level = run_level(make_sender, np.arange(3), 2, 100_000, duration_limit_s=0.3, warmup=0)
    assert level.stopped_by == "time"
    assert 0 < level.requests < 100_000


@pytest.mark.parametrize("fail_in", ["make", "warmup", "timed"])
def test_first_client_error_is_raised_to_the_caller(fail_in):
    error = ServerError("expected a Triton server at grpc://127.0.0.1:1, found none answering")

    def make_sender():
        if fail_in == "make":
            raise error
        calls = []

        def send(user_id):
            calls.append(user_id)
            if fail_in == "warmup" or len(calls) > 3:
                raise error

        return send

    with pytest.raises(ServerError, match="grpc://127.0.0.1:1"):
        run_level(make_sender, np.arange(3), 3, 50, 60, warmup=2)


@pytest.mark.parametrize("kwargs,message", [
    ({"requests": 0}, "expected requests >= 1"),
    ({"duration_limit_s": 0}, "a positive duration limit"),
    ({"user_ids": np.array([], dtype=np.int64)}, "at least one user id"),
])
def test_bad_level_arguments_are_usage_errors(kwargs, message):
    args = {"make_sender": lambda: (lambda u: None), "user_ids": np.arange(2),
            "concurrency": 1, "requests": 5, "duration_limit_s": 1.0, **kwargs}
    with pytest.raises(UsageError, match=message):
        run_level(**args)


def test_concurrency_levels_must_be_positive():
    assert parse_concurrency([1, 4, 16]) == [1, 4, 16]
    with pytest.raises(UsageError, match="expected concurrency levels >= 1, found \\[1, 0\\]"):
        parse_concurrency([1, 0])
