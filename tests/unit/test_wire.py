"""Packed columns between Triton models: layout, round trip, and what is never packed."""

from __future__ import annotations

import numpy as np

from mstage.columns import ColumnSpec
from mstage.serving.wire import ModelWire, Packing, packable, packed_input

IDS = ColumnSpec("candidate_ids", "int64", (-1, 3))
SCORES = ColumnSpec("retrieval_scores", "float32", (-1, 3))
FLAG = ColumnSpec("cold_start", "int8")
GRID = ColumnSpec("grid", "int32", (-1, 2, 2))


def test_round_trip_keeps_values_dtypes_and_shapes():
    packing = Packing.of([FLAG, SCORES, IDS, GRID])
    batch = {"candidate_ids": np.array([[1, 2, -1], [4, 5, 6]]),
             "retrieval_scores": np.array([[0.5, -np.inf, 2.0], [1, 2, 3]], np.float32),
             "cold_start": np.array([0, 1], np.int8),
             "grid": np.arange(8, dtype=np.int32).reshape(2, 2, 2)}
    packed = packing.pack(batch)
    assert packed.dtype == np.uint8 and packed.shape == (2, packing.width)
    out = packing.unpack(packed)
    assert sorted(out) == sorted(batch)
    for name, values in batch.items():
        assert out[name].dtype == values.dtype and out[name].shape == values.shape
        np.testing.assert_array_equal(out[name], values)


def test_widest_dtype_first_so_every_column_is_aligned_and_rows_pad_to_eight_bytes():
    packing = Packing.of([FLAG, SCORES, IDS])
    assert [c.name for c in packing.columns] == ["candidate_ids", "retrieval_scores",
                                                 "cold_start"]
    assert [(start, size) for _, start, size in packing.offsets] == [(0, 24), (24, 12), (36, 1)]
    assert packing.width == 40
    views = packing.unpack(packing.pack({"candidate_ids": np.zeros((4, 3), np.int64),
                                         "retrieval_scores": np.zeros((4, 3), np.float32),
                                         "cold_start": np.zeros(4, np.int8)}))
    assert all(v.flags.aligned for v in views.values())


def test_unpack_takes_only_the_columns_asked_for():
    packing = Packing.of([IDS, FLAG])
    packed = packing.pack({"candidate_ids": np.ones((1, 3), np.int64),
                           "cold_start": np.ones(1, np.int8)})
    assert list(packing.unpack(packed, ["cold_start", "other"])) == ["cold_start"]


def test_variable_width_is_not_packable_and_names_are_model_inputs():
    assert packable(IDS) and packable(FLAG)
    assert not packable(ColumnSpec("item_ids", "int64", (-1, -1)))
    assert packed_input("my-retrieval") == "packed_my_retrieval"


def test_model_wire_json_round_trip():
    wire = ModelWire(("item_ids",), Packing.of([IDS]), {"packed_a": Packing.of([FLAG])})
    assert ModelWire.from_json(wire.to_json()) == wire
    assert ModelWire.from_json(ModelWire().to_json()) == ModelWire()
