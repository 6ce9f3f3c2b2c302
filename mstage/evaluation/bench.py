"""`bench`: a closed-loop load generator measuring latency percentiles and throughput.

Closed loop: each of `concurrency` clients sends one request, waits for the answer, then
sends the next, so the offered load adapts to the server and throughput is what the system
sustains at that concurrency. Every client first runs `warmup` untimed requests (caches,
connections, lazy loads); timing starts when all are warm. A level ends after `requests`
timed requests in all or after `duration_limit_s`, whichever comes first.

Each client gets its own `send` function from `make_sender()`, because tritonclient's HTTP
client is not thread-safe. Latency is measured around `send(user_id)` with a monotonic clock.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mstage.errors import UsageError
from mstage.progress import SILENT, Reporter

Send = Callable[[int], Any]
PERCENTILES = (50, 90, 99)


@dataclass
class LevelResult:
    """One concurrency level. latencies_s float64 [n] in completion order."""

    concurrency: int
    latencies_s: np.ndarray
    wall_s: float
    stopped_by: str  # "requests" or "time"

    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        """Completed requests per second of wall time (first timed send to last answer)."""
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """The q-th percentile latency in ms (numpy's linear interpolation between ranks)."""
        return float(np.percentile(self.latencies_s, q) * 1000) if self.requests else float("nan")

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_s
        out: dict[str, Any] = {"concurrency": self.concurrency, "requests": self.requests,
                               "wall_s": round(self.wall_s, 4),
                               "throughput_rps": round(self.throughput, 2),
                               "stopped_by": self.stopped_by}
        for q in PERCENTILES:
            out[f"p{q}_ms"] = round(self.percentile_ms(q), 3)
        out["mean_ms"] = round(float(lat.mean() * 1000), 3) if len(lat) else float("nan")
        out["max_ms"] = round(float(lat.max() * 1000), 3) if len(lat) else float("nan")
        return out


@dataclass
class BenchResult:
    mode: str  # "in-process" or "grpc://HOST:PORT" / "http://HOST:PORT"
    top_k: int
    levels: list[LevelResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "top_k": self.top_k,
                "levels": [level.summary() for level in self.levels]}


def parse_concurrency(values: Sequence[int]) -> list[int]:
    levels = [int(v) for v in values]
    if not levels or min(levels) < 1:
        raise UsageError(f"expected concurrency levels >= 1, found {levels}; pass e.g. "
                         "--concurrency 1,4,16")
    return levels


class _Shared:
    """State the clients of one level share: the next user, the timings, the first error."""

    def __init__(self, user_ids: np.ndarray, requests: int):
        self.users = itertools.cycle(user_ids.tolist())
        self.lock = threading.Lock()
        self.remaining = requests
        self.latencies: list[float] = []
        self.first_sent = float("inf")
        self.last_done = float("-inf")
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def next_user(self) -> int | None:
        """A user id for the next timed request, or None when the level is done."""
        with self.lock:
            if self.remaining <= 0 or self.stop.is_set():
                return None
            self.remaining -= 1
            return next(self.users)

    def record(self, sent: float, done: float, task) -> None:
        with self.lock:
            self.latencies.append(done - sent)
            self.first_sent = min(self.first_sent, sent)
            self.last_done = max(self.last_done, done)
        task.advance(1)

    def fail(self, error: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = error
        self.stop.set()


def run_level(make_sender: Callable[[], Send], user_ids: np.ndarray, concurrency: int,
              requests: int, duration_limit_s: float, warmup: int = 10,
              clock: Callable[[], float] = time.perf_counter,
              reporter: Reporter = SILENT) -> LevelResult:
    """Run one closed-loop level; re-raise the first error any client hit.

    Wall time runs from the first timed send to the last answer, so thread start-up and
    warm-up never count toward throughput."""
    if requests < 1 or duration_limit_s <= 0 or warmup < 0:
        raise UsageError(f"expected requests >= 1, a positive duration limit and warmup >= 0, "
                         f"found {requests}, {duration_limit_s}, {warmup}")
    user_ids = np.asarray(user_ids, dtype=np.int64)
    if len(user_ids) == 0:
        raise UsageError("expected at least one user id to send, found none")
    shared = _Shared(user_ids, requests)
    ready = threading.Barrier(concurrency + 1)

    def client(index: int, task) -> None:
        try:
            send = make_sender()
            for j in range(warmup):
                send(int(user_ids[(index * warmup + j) % len(user_ids)]))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            shared.fail(e)
            ready.abort()
            return
        try:
            ready.wait()
            while (user := shared.next_user()) is not None:
                sent = clock()
                send(user)
                shared.record(sent, clock(), task)
        except threading.BrokenBarrierError:
            return
        except BaseException as e:  # noqa: BLE001
            shared.fail(e)

    with reporter.task(f"concurrency {concurrency}", total=requests) as task:
        threads = [threading.Thread(target=client, args=(i, task), daemon=True)
                   for i in range(concurrency)]
        for t in threads:
            t.start()
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            pass
        deadline = time.monotonic() + duration_limit_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        timed_out = any(t.is_alive() for t in threads)
        shared.stop.set()  # clients finish the request in flight, then stop
        for t in threads:
            t.join()
    if shared.error is not None:
        raise shared.error
    wall = max(0.0, shared.last_done - shared.first_sent) if shared.latencies else 0.0
    return LevelResult(concurrency, np.asarray(shared.latencies, dtype=np.float64), wall,
                       "time" if timed_out else "requests")


def run_bench(make_sender: Callable[[], Send], user_ids: np.ndarray, levels: Sequence[int],
              requests: int, duration_limit_s: float, warmup: int = 10, top_k: int = 10,
              mode: str = "in-process", reporter: Reporter = SILENT) -> BenchResult:
    """One level per concurrency, in the order given."""
    result = BenchResult(mode, top_k)
    for concurrency in parse_concurrency(levels):
        result.levels.append(run_level(make_sender, user_ids, concurrency, requests,
                                       duration_limit_s, warmup, reporter=reporter))
    return result


def recommend_sender(open_recommender: Callable[[], Any], top_k: int, *,
                     per_thread: bool) -> Callable[[], Send]:
    """Senders asking a `Recommends` for one user per request, like online traffic.

    `per_thread`: each client thread opens its own (tritonclient HTTP clients are not
    thread-safe), else all share one (the in-process recommender). `close_all()` on the
    returned factory closes what was opened."""
    opened: list[Any] = []
    lock = threading.Lock()

    def make() -> Send:
        with lock:
            if per_thread or not opened:
                opened.append(open_recommender())
            recommender = opened[-1]

        def send(user_id: int) -> Any:
            return recommender.recommend(np.array([user_id], dtype=np.int64), top_k)

        return send

    def close_all() -> None:
        with lock:
            for recommender in opened:
                recommender.close()
            opened.clear()

    make.close_all = close_all  # type: ignore[attr-defined]
    return make
