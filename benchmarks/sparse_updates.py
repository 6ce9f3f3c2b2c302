"""What sparse embedding updates save: DLRM and two-tower train steps at growing id-table
sizes, Keras' dense path beside mstage's row-only one.

usage: .venv/bin/python benchmarks/sparse_updates.py [--rows 10000,200000,1000000]
           [--batch 1024] [--steps 100]

For each table size (user and item ids both that many rows), builds the ranker's DLRM
(embedding dim 16) and the two-tower model's id tables (dim 64) and times `--steps` train
steps of random batches, three ways: Keras' `Embedding` with Keras' optimizer (Adam for the
DLRM, Adagrad for the towers: every row's slots updated every step); Keras' `Embedding`
with mstage's row-only optimizer; and mstage's `RowEmbedding` (lookups read only their rows)
with the row-only optimizer, what training runs now. The steps run one after another in
this process; nothing else should run beside it. Prints a Markdown table of ms per step
(median of three blocks) and the speed-up over the first way.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np


def _step_fn(tf, model, variables, apply, loss_fn):
    @tf.function
    def step(features, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(model(features, training=True), labels)
        apply(tape.gradient(loss, variables))
        return loss
    return step


def time_steps(step, batches, blocks: int = 3) -> float:
    """Median over `blocks` of the mean ms per step over `batches` (after one warm-up)."""
    step(*batches[0])
    per_block = []
    for _ in range(blocks):
        started = time.perf_counter()
        for features, labels in batches:
            float(step(features, labels))
        per_block.append((time.perf_counter() - started) * 1000 / len(batches))
    return float(np.median(per_block))


def optimizer(keras, variables, name: str, rate: float, rows_only: bool):
    """apply(grads): Keras' optimizer `name`, or mstage's row-only one."""
    from mstage.models.optimizers import SparseOptimizer

    if rows_only:
        return SparseOptimizer(name, rate, variables).apply
    dense = {"adam": keras.optimizers.Adam, "adagrad": keras.optimizers.Adagrad}[name](
        learning_rate=rate)
    dense.build(variables)
    return lambda grads: dense.apply_gradients(zip(grads, variables, strict=True))


def id_towers(keras, table, n: int, dim: int = 64):
    """The two-tower model's id tables (`table` layers) and normalisation, what dominates its
    update cost: features -> (queries [b, d], candidates [b, d], item ids [b])."""
    from keras import ops

    users = keras.Input(shape=(), dtype="int64", name="user_id")
    items = keras.Input(shape=(), dtype="int64", name="item_id")
    unit = lambda x: x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-6)  # noqa: E731
    query = unit(table(n, dim)(users))
    candidate = unit(table(n, dim)(items))
    return keras.Model({"user_id": users, "item_id": items}, [query, candidate, items])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,200000,1000000")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()

    import mstage.models.dlrm as dlrm
    from mstage.models.embedding import RowEmbedding
    from mstage.models.encoders import FeatureSpec
    from mstage.models.tensorflow_runtime import import_keras, import_tensorflow
    from mstage.models.two_tower import in_batch_softmax_loss

    tf, keras = import_tensorflow(), import_keras()
    rng = np.random.default_rng(0)
    print(f"{platform.machine()}, batch {args.batch}, {args.steps} steps per block\n")
    print("| model | id rows | lookup | optimizer | ms / step | speed-up |")
    print("|---|---|---|---|---|---|")
    click_loss = lambda logits, labels: tf.reduce_mean(  # noqa: E731
        tf.nn.sigmoid_cross_entropy_with_logits(labels, logits))
    softmax_loss = lambda out, labels: in_batch_softmax_loss(  # noqa: E731
        out[0], out[1], out[2], tf.zeros_like(labels), 0.2)
    ways = ((keras.layers.Embedding, False), (keras.layers.Embedding, True), (RowEmbedding, True))
    for n in (int(r) for r in args.rows.split(",")):
        batches = [({"user_id": tf.constant(rng.integers(1, n, args.batch)),
                     "item_id": tf.constant(rng.integers(1, n, args.batch))},
                    tf.constant(rng.integers(0, 2, args.batch).astype(np.float32)))
                   for _ in range(args.steps)]
        specs = [FeatureSpec("user_id", "id", "int64", (), n),
                 FeatureSpec("item_id", "id", "int64", (), n)]
        for name, loss_fn, opt, rate in (("DLRM", click_loss, "adam", 0.003),
                                         ("two-tower ids", softmax_loss, "adagrad", 0.5)):
            first = None
            for table, rows_only in ways:
                keras.utils.set_random_seed(0)
                if name == "DLRM":
                    dlrm.RowEmbedding = table  # the layer build_dlrm uses, for this way
                    model = dlrm.build_dlrm(specs, 16)
                else:
                    model = id_towers(keras, table, n)
                variables = model.trainable_variables
                apply = optimizer(keras, variables, opt, rate, rows_only)
                ms = time_steps(_step_fn(tf, model, variables, apply, loss_fn), batches)
                first = first or ms
                lookup = "Keras Embedding" if table is keras.layers.Embedding else "RowEmbedding"
                how = f"mstage {opt}, rows only" if rows_only else f"Keras {opt}"
                print(f"| {name} | {n:,} | {lookup} | {how} | {ms:.2f} | {first / ms:.1f}x |",
                      flush=True)
    dlrm.RowEmbedding = RowEmbedding

if __name__ == "__main__":
    main()
