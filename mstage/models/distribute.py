"""Training on several workers: TensorFlow's MultiWorkerMirroredStrategy, set up by TF_CONFIG.

With a TF_CONFIG naming two or more workers, every worker runs the same `mstage
train-retrieval` / `train-ranking` command on its own copy of the workspace. The models and
optimizer state are created in the strategy's scope (the chief's initial values are copied
to all), each worker trains on its own share of every batch, and the optimizer averages the
gradients across workers before it updates (`SparseOptimizer.apply`), so every worker holds
the same model after every step and each publishes it. Without TF_CONFIG, or with one
worker, training runs in this process as before. docs/scaling.md says how to launch it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import dataclass

from mstage.errors import ConfigError
from mstage.models.tensorflow_runtime import import_tensorflow


@dataclass(frozen=True)
class Workers:
    """This process's place among the training workers: `index` of `count`."""

    index: int = 0
    count: int = 1

    def share(self, batch):
        """This worker's rows of a global batch (every count-th, from index)."""
        return batch[self.index::self.count]

    def shares(self, order, batch_size: int):
        """This worker's share of each global batch of `order` in turn; a ragged tail with
        fewer rows than workers is dropped, as some worker would get none."""
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            if len(batch) >= self.count:
                yield self.share(batch)


def workers_from_env() -> Workers:
    """The workers TF_CONFIG describes (one, this process, when it is unset)."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return Workers()
    try:
        config = json.loads(raw)
        count = len(config["cluster"]["worker"]) + len(config["cluster"].get("chief", []))
        task = config["task"]
        index = int(task["index"]) + (len(config["cluster"].get("chief", []))
                                      if task["type"] == "worker" else 0)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            "expected TF_CONFIG as JSON with cluster.worker (a list of host:port) and task "
            f"(type, index), found {raw[:80]!r} ({type(e).__name__}); fix or unset it"
        ) from None
    return Workers(index, count)


@functools.cache
def _strategy():
    return import_tensorflow().distribute.MultiWorkerMirroredStrategy()


def start() -> Workers:
    """This process's workers; with several, the strategy is created now, before any other
    TensorFlow op, as it must be (it connects to the other workers and waits for them)."""
    workers = workers_from_env()
    if workers.count > 1:
        _strategy()
    return workers


def scope():
    """A context in which variables are created mirrored across the workers."""
    return _strategy().scope() if workers_from_env().count > 1 else contextlib.nullcontext()


def run(step, *args):
    """`step(*args)` on this worker's replica (inside a tf.function); its local result."""
    if workers_from_env().count == 1:
        return step(*args)
    return _strategy().run(step, args=args)
