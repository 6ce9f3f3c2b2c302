"""Pipeline wiring checks and in-process runs with small hand-checkable operators."""

import numpy as np
import pytest

from mstage.columns import ColumnSpec
from mstage.errors import ConfigError, InputError
from mstage.pipeline.pipeline import Pipeline
from mstage.pipeline.plan import Plan
from mstage.pipeline.stage import Stage

REQUEST = [ColumnSpec("user_id", "int64")]


def pipeline(stages) -> Pipeline:
    return Pipeline(Plan(stages, REQUEST, response=[stages[-1][1].outputs[0].name]))


class Candidates(Stage):
    """user u -> candidates [u*10, u*10+1, u*10+2] with scores [3, 2, 1]."""

    inputs = [ColumnSpec("user_id", "int64")]
    outputs = [ColumnSpec("candidate_ids", "int64", (-1, 3)),
               ColumnSpec("retrieval_scores", "float32", (-1, 3))]

    def run(self, batch):
        u = batch["user_id"][:, None]
        ids = u * 10 + np.arange(3)
        return {"candidate_ids": ids, "retrieval_scores": np.tile([3.0, 2.0, 1.0], (len(u), 1))
                .astype(np.float32)}


class DropOdd(Stage):
    inputs = [ColumnSpec("candidate_ids", "int64", (-1, 3))]
    outputs = [ColumnSpec("filtered_ids", "int64", (-1, 3))]

    def run(self, batch):
        ids = batch["candidate_ids"]
        return {"filtered_ids": np.where(ids % 2 == 1, -1, ids)}


def test_runs_stages_in_order_and_counts_candidates():
    pipe = pipeline([("retrieval", Candidates()), ("filtering", DropOdd())])
    columns, timings = pipe.run({"user_id": np.array([1, 2], dtype=np.int64)})
    # user 1 -> 10, 11, 12 -> 10, 12 survive; user 2 -> 20, 21, 22 -> 20, 22
    assert columns["filtered_ids"].tolist() == [[10, -1, 12], [20, -1, 22]]
    assert [(t.name, t.items_in, t.items_out) for t in timings] == [
        ("retrieval", 0, 6), ("filtering", 6, 4)]
    assert all(t.seconds >= 0 for t in timings)


def test_wiring_error_names_the_missing_column():
    with pytest.raises(ConfigError, match="stage 'filtering' expects column 'candidate_ids'"):
        pipeline([("filtering", DropOdd()), ("retrieval", Candidates())])


def test_bad_request_is_an_input_error():
    pipe = pipeline([("retrieval", Candidates())])
    with pytest.raises(InputError, match="expected column 'user_id'"):
        pipe.run({"user": np.array([1])})


def test_user_features_travel_packed_by_dtype_and_unpack_exactly():
    from mstage.pipeline.retrieval import pack_user, unpack_user, user_columns

    specs = [{"name": "user_id", "dtype": "int64", "shape": []},
             {"name": "age", "dtype": "float32", "shape": []},
             {"name": "tags", "dtype": "int64", "shape": [3]},
             {"name": "region", "dtype": "int64", "shape": []}]
    encoded = {"user_id": np.array([7, 9]), "age": np.array([0.5, -1.0], np.float32),
               "tags": np.array([[1, 2, 0], [3, 0, 0]]), "region": np.array([4, 5])}
    packed = pack_user(encoded, specs)
    # two tensors, not four: ids, tags and region as int64 codes; age as a float32 number
    assert [(c.name, c.dtype, c.shape) for c in user_columns(specs)] == [
        ("user_codes", "int64", (-1, 5)), ("user_numbers", "float32", (-1, 1))]
    assert packed["user_codes"].tolist() == [[7, 1, 2, 0, 4], [9, 3, 0, 0, 5]]
    unpacked = unpack_user(packed, specs)
    assert set(unpacked) == set(encoded)
    for name, values in encoded.items():
        np.testing.assert_array_equal(unpacked[name], values)
        assert unpacked[name].dtype == values.dtype
