"""Sparse-aware optimizers for embedding tables: only the rows a batch touches are updated.

Keras' optimizers densify or union sparse gradients in ways whose cost grows with the table
(its Adam updates both dense slots of every row on every step: at 1M rows that is most of an
epoch), and its sparse Adagrad path fails with a gather error, instead of a NaN loss, when
updates overflow. These apply TensorFlow's fused training kernels directly: on the touched
rows of an embedding table (duplicate rows summed first) `ResourceSparseApplyAdagradV2`, or
for Adam a lazy update of those rows' moments (the rows a batch does not touch keep theirs,
as in LazyAdam); the dense kernels elsewhere.
"""

from __future__ import annotations

from mstage.models.tensorflow_runtime import import_tensorflow

OPTIMIZERS = ("adagrad", "sgd", "adam")


def _averaged_over_workers(grads: list) -> list:
    """The gradients averaged over all replicas when training is distributed
    (`mstage.models.distribute`); as given otherwise."""
    tf = import_tensorflow()

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return grads
    present = [i for i, g in enumerate(grads) if g is not None]
    reduced = context.all_reduce(tf.distribute.ReduceOp.MEAN, [grads[i] for i in present])
    out = list(grads)
    for i, g in zip(present, reduced, strict=True):
        out[i] = g
    return out


class SparseOptimizer:
    """`apply(grads)` inside a tf.function; slots are created at construction. Build it with
    `mstage.training.core.make_optimizer`, which checks the name a user gave.

    adagrad: accumulator starts at 0.1 (Keras' default), epsilon 1e-7. sgd: plain steps.
    adam: Keras' defaults (beta 0.9 / 0.999, epsilon 1e-7), lazy on embedding rows; the
    ranker's default.
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
            self.accumulators = [tf.Variable(tf.fill(v.shape, 0.1), trainable=False)
                                 for v in self.variables]
        if name == "adam":
            self.moments = [(tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False),
                             tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False))
                            for v in self.variables]
            self.beta1, self.beta2 = tf.constant(0.9), tf.constant(0.999)
            self.steps = tf.Variable(0.0, trainable=False)

    def apply(self, grads: list) -> None:
        tf = import_tensorflow()

        grads = _averaged_over_workers(grads)
        if self.name == "adam":
            self.steps.assign_add(1.0)
        for i, (g, v) in enumerate(zip(grads, self.variables, strict=True)):
            if g is None:
                continue
            if isinstance(g, tf.IndexedSlices):
                rows, position = tf.unique(g.indices)
                values = tf.math.unsorted_segment_sum(g.values, position, tf.shape(rows)[0])
                if self.name == "adam":
                    self._lazy_adam(v, *self.moments[i], rows, values)
                elif self.name == "adagrad":
                    tf.raw_ops.ResourceSparseApplyAdagradV2(
                        var=v.handle, accum=self.accumulators[i].handle, lr=self.lr,
                        epsilon=self.eps, grad=values, indices=rows)
                else:
                    tf.raw_ops.ResourceScatterSub(resource=v.handle, indices=rows,
                                                  updates=self.lr * values)
            elif self.name == "adam":
                m, s = self.moments[i]
                tf.raw_ops.ResourceApplyAdam(
                    var=v.handle, m=m.handle, v=s.handle, beta1_power=self.beta1 ** self.steps,
                    beta2_power=self.beta2 ** self.steps, lr=self.lr, beta1=self.beta1,
                    beta2=self.beta2, epsilon=self.eps, grad=g)
            elif self.name == "adagrad":
                tf.raw_ops.ResourceApplyAdagradV2(var=v.handle, accum=self.accumulators[i].handle,
                                                  lr=self.lr, epsilon=self.eps, grad=g)
            else:
                v.assign_sub(self.lr * g)

    def _lazy_adam(self, var, m, s, rows, grad) -> None:
        """Adam on `rows` only: their first and second moments and values, bias-corrected by
        the global step as the dense kernel is."""
        tf = import_tensorflow()

        first = self.beta1 * tf.gather(m, rows) + (1.0 - self.beta1) * grad
        second = self.beta2 * tf.gather(s, rows) + (1.0 - self.beta2) * tf.square(grad)
        tf.raw_ops.ResourceScatterUpdate(resource=m.handle, indices=rows, updates=first)
        tf.raw_ops.ResourceScatterUpdate(resource=s.handle, indices=rows, updates=second)
        rate = (self.lr * tf.sqrt(1.0 - self.beta2 ** self.steps)
                / (1.0 - self.beta1 ** self.steps))
        tf.raw_ops.ResourceScatterSub(resource=var.handle, indices=rows,
                                      updates=rate * first / (tf.sqrt(second) + self.eps))
