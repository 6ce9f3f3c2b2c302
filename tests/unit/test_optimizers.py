"""SparseOptimizer: sparse (embedding-row) updates touch only the rows a batch holds, and
match the dense update on those rows."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from mstage.models.optimizers import SparseOptimizer  # noqa: E402


def _train(optimizer_for, table: np.ndarray, batches: list[np.ndarray]) -> np.ndarray:
    """Minimise sum((table[rows] - 1)^2) over `batches` of row ids; returns the table."""
    var = tf.Variable(table)
    optimizer = optimizer_for(var)

    @tf.function
    def step(rows):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(tf.gather(var, rows) - 1.0))
        grad = tape.gradient(loss, var)
        assert isinstance(grad, tf.IndexedSlices)  # what embedding lookups produce
        optimizer(grad, var)
        return loss

    for rows in batches:
        step(tf.constant(rows))
    return var.numpy()


def _sparse(name: str):
    def make(var):
        optimizer = SparseOptimizer(name, 0.05, [var])
        return lambda grad, _: optimizer.apply([grad])
    return make


def _keras_adam(var):
    optimizer = keras.optimizers.Adam(learning_rate=0.05)
    optimizer.build([var])
    return lambda grad, v: optimizer.apply_gradients(
        [(tf.convert_to_tensor(grad), v)])


@pytest.mark.parametrize("name", ["adam", "adagrad", "sgd"])
def test_sparse_updates_leave_untouched_rows_alone(name):
    table = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    batches = [np.array([1, 3, 3, 7]), np.array([3, 9])]
    trained = _train(_sparse(name), table, batches)
    touched = np.zeros(50, bool)
    touched[[1, 3, 7, 9]] = True
    np.testing.assert_array_equal(trained[~touched], table[~touched])
    # every touched row moved towards the target 1
    assert (np.abs(trained[touched] - 1).sum(1) < np.abs(table[touched] - 1).sum(1)).all()


def test_lazy_adam_matches_dense_adam_when_every_row_is_touched():
    table = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    batches = [np.array([0, 1, 2, 3, 4, 5, 5])] * 4
    lazy = _train(_sparse("adam"), table, batches)
    dense = _train(_keras_adam, table, batches)
    np.testing.assert_allclose(lazy, dense, rtol=1e-5, atol=1e-6)


def test_lazy_adam_keeps_the_moments_of_rows_a_batch_skips():
    """Dense Adam keeps moving a row after its last gradient (its momentum decays); lazy Adam
    does not, which is what makes a step cost the batch's rows, not the table's."""
    table = np.zeros((4, 2), np.float32)
    batches = [np.array([0, 1]), np.array([1]), np.array([1])]
    lazy = _train(_sparse("adam"), table, batches)
    dense = _train(_keras_adam, table, batches)
    after_first = _train(_sparse("adam"), table, batches[:1])
    np.testing.assert_array_equal(lazy[0], after_first[0])
    assert (dense[0] > lazy[0]).all()


def test_adam_on_dense_gradients_matches_keras_adam():
    weights = np.random.default_rng(2).normal(size=(3, 2)).astype(np.float32)
    x = tf.constant(np.random.default_rng(3).normal(size=(8, 3)).astype(np.float32))

    def train(optimizer_for):
        var = tf.Variable(weights)
        apply = optimizer_for(var)
        for _ in range(5):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(x @ var - 1.0))
            apply(tape.gradient(loss, var), var)
        return var.numpy()

    np.testing.assert_allclose(train(_sparse("adam")), train(_keras_adam), rtol=1e-5, atol=1e-6)
