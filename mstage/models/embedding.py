"""An embedding table whose lookups read only the rows they need.

Keras' `Embedding` converts its whole table to a tensor and then gathers from it. In
training, the optimizer then writes some rows of the table while that full read is still
referenced, so TensorFlow copies the whole table on every step: at 1M rows, most of a DLRM
step (benchmarks/sparse_updates.py). Gathering from the variable itself (ResourceGather)
reads the batch's rows only; its gradient is the same IndexedSlices over those rows.
"""

from __future__ import annotations

import functools

from mstage.models.tensorflow_runtime import import_keras, import_tensorflow


@functools.cache
def _layer_class():
    keras = import_keras()
    tf = import_tensorflow()

    class _RowEmbedding(keras.layers.Embedding):
        def call(self, inputs):
            # Keras' TensorFlow variable keeps its tf.Variable (or, under a distribution
            # strategy, the mirrored one) as `_value`; gather from that, not from a read.
            table = getattr(self.embeddings, "_value", self.embeddings)
            return tf.gather(table, tf.cast(inputs, tf.int64))

    return _RowEmbedding


def RowEmbedding(cardinality: int, dim: int, **kw):  # noqa: N802 - behaves like a layer class
    """`keras.layers.Embedding(cardinality, dim, **kw)` that reads only the looked-up rows."""
    return _layer_class()(cardinality, dim, **kw)
