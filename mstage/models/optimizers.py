"""Sparse-aware optimizers for embedding tables: only the rows a batch touches are updated.

Keras' optimizers densify or union sparse gradients in ways whose cost grows with the table
(Adam keeps two dense slots it updates every step), and its sparse Adagrad path fails with a
gather error, instead of a NaN loss, when updates overflow. These apply TensorFlow's fused
training kernels directly: `ResourceSparseApplyAdagradV2` on the touched rows of an
embedding table (duplicate rows summed first), the dense kernel elsewhere.
"""

from __future__ import annotations

from mstage.models.tensorflow_runtime import import_keras, import_tensorflow

OPTIMIZERS = ("adagrad", "sgd", "adam")


class SparseOptimizer:
    """`apply(grads)` inside a tf.function; slots are created at construction. Build it with
    `mstage.training.core.make_optimizer`, which checks the name a user gave.

    adagrad: accumulator starts at 0.1 (Keras' default), epsilon 1e-7. sgd: plain steps.
    adam: Keras Adam (dense slots), the ranker's default.
    """

    def __init__(self, name: str, learning_rate: float, variables: list):
        tf = import_tensorflow()

        if name not in OPTIMIZERS:  # user-facing names are checked by make_optimizer
            raise ValueError(f"expected an optimizer in {OPTIMIZERS}, found {name!r}")
        self.name, self.variables = name, list(variables)
        self.lr = tf.constant(learning_rate, tf.float32)
        self.eps = tf.constant(1e-7, tf.float32)
        self.accumulators = []
        if name == "adagrad":
            self.accumulators = [tf.Variable(tf.fill(tf.shape(v.value), 0.1), trainable=False)
                                 for v in self.variables]
        self._keras = None
        if name == "adam":
            keras = import_keras()

            self._keras = keras.optimizers.Adam(learning_rate=learning_rate)
            self._keras.build(self.variables)

    def apply(self, grads: list) -> None:
        tf = import_tensorflow()

        if self._keras is not None:
            self._keras.apply_gradients(zip(grads, self.variables, strict=True))
            return
        for i, (g, v) in enumerate(zip(grads, self.variables, strict=True)):
            if g is None:
                continue
            if isinstance(g, tf.IndexedSlices):
                rows, position = tf.unique(g.indices)
                values = tf.math.unsorted_segment_sum(g.values, position, tf.shape(rows)[0])
                if self.name == "adagrad":
                    tf.raw_ops.ResourceSparseApplyAdagradV2(
                        var=v.handle, accum=self.accumulators[i].handle, lr=self.lr,
                        epsilon=self.eps, grad=values, indices=rows)
                else:
                    tf.raw_ops.ResourceScatterSub(resource=v.handle, indices=rows,
                                                  updates=self.lr * values)
            elif self.name == "adagrad":
                tf.raw_ops.ResourceApplyAdagradV2(var=v.handle, accum=self.accumulators[i].handle,
                                                  lr=self.lr, epsilon=self.eps, grad=g)
            else:
                v.assign_sub(self.lr * g)
