"""The model-repository writer: golden config.pbtxt files, wiring checks, and the files written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mstage.columns import ColumnSpec
from mstage.errors import ConfigError, UsageError
from mstage.pipeline.plan import Plan
from mstage.pipeline.stage import Stage
from mstage.serving.repository import stage_config, write_repository


class _Declared(Stage):
    """A stage that only declares columns, from its params (the writer never calls it)."""

    @property
    def inputs(self):
        return [ColumnSpec.from_json(c) for c in self.params["inputs"]]

    @property
    def outputs(self):
        return [ColumnSpec.from_json(c) for c in self.params["outputs"]]


def declared(inputs, outputs) -> _Declared:
    return _Declared({"inputs": [c.to_json() for c in inputs],
                      "outputs": [c.to_json() for c in outputs]}, {"w": np.arange(3)})


def plan_ensemble(stages) -> Plan:
    return Plan(stages, response=("item_ids", "scores"))


ITEMS = ColumnSpec("item_ids", "int64", (-1, -1))
SCORES = ColumnSpec("scores", "float32", (-1, -1))
USER_FEATURES = ColumnSpec("user_features", "float32", (-1, 4))
USER_ID = ColumnSpec("user_id", "int64")
TOP_K = ColumnSpec("top_k", "int64", optional=True)


def three_stages() -> Plan:
    """retrieve (user_id -> items, scores, user_features) -> filter -> order (uses features)."""
    return plan_ensemble([
        ("retrieve", declared([USER_ID], [ITEMS, SCORES, USER_FEATURES])),
        ("filter", declared([ITEMS, SCORES], [ITEMS, SCORES])),
        ("order", declared([ITEMS, SCORES, USER_FEATURES, TOP_K], [ITEMS, SCORES])),
    ])


GOLDEN_STAGE = '''\
name: "order"
backend: "python"
max_batch_size: 32
input [
  {
    name: "item_ids"
    data_type: TYPE_INT64
    dims: [ -1 ]
  },
  {
    name: "scores"
    data_type: TYPE_FP32
    dims: [ -1 ]
  },
  {
    name: "user_features"
    data_type: TYPE_FP32
    dims: [ 4 ]
  },
  {
    name: "top_k"
    data_type: TYPE_INT64
    dims: [ 1 ]
    reshape: { shape: [ ] }
    optional: true
  }
]
output [
  {
    name: "item_ids"
    data_type: TYPE_INT64
    dims: [ -1 ]
  },
  {
    name: "scores"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }
]
instance_group [
  {
    count: 2
    kind: KIND_GPU
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 500
}
'''

GOLDEN_ENSEMBLE = '''\
name: "mstage_recommender"
platform: "ensemble"
max_batch_size: 32
input [
  {
    name: "user_id"
    data_type: TYPE_INT64
    dims: [ 1 ]
  },
  {
    name: "top_k"
    data_type: TYPE_INT64
    dims: [ 1 ]
    optional: true
  }
]
output [
  {
    name: "item_ids"
    data_type: TYPE_INT64
    dims: [ -1 ]
  },
  {
    name: "scores"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }
]
ensemble_scheduling {
  step [
    {
      model_name: "retrieve"
      model_version: -1
      input_map { key: "user_id" value: "user_id" }
      output_map { key: "item_ids" value: "retrieve.item_ids" }
      output_map { key: "scores" value: "retrieve.scores" }
      output_map { key: "user_features" value: "retrieve.user_features" }
    },
    {
      model_name: "filter"
      model_version: -1
      input_map { key: "item_ids" value: "retrieve.item_ids" }
      input_map { key: "scores" value: "retrieve.scores" }
      output_map { key: "item_ids" value: "filter.item_ids" }
      output_map { key: "scores" value: "filter.scores" }
    },
    {
      model_name: "order"
      model_version: -1
      input_map { key: "item_ids" value: "filter.item_ids" }
      input_map { key: "scores" value: "filter.scores" }
      input_map { key: "user_features" value: "retrieve.user_features" }
      input_map { key: "top_k" value: "top_k" }
      output_map { key: "item_ids" value: "item_ids" }
      output_map { key: "scores" value: "scores" }
    }
  ]
}
'''


def test_stage_config_golden():
    order = three_stages().stage("order")
    text = stage_config("order", order.inputs, order.outputs, device="gpu", instances=2,
                        max_batch_size=32, max_queue_delay_us=500)
    assert text == GOLDEN_STAGE


def test_ensemble_config_golden(tmp_path):
    write_repository(tmp_path / "repo", three_stages(), max_batch_size=32, pack=False)
    assert (tmp_path / "repo" / "mstage_recommender" / "config.pbtxt").read_text() == \
        GOLDEN_ENSEMBLE


def test_without_batching_dims_keep_the_batch_dimension_and_no_dynamic_batching():
    order = three_stages().stage("order")
    text = stage_config("order", order.inputs, order.outputs, max_batch_size=0)
    assert "max_batch_size: 0" in text
    assert "dims: [ -1, 4 ]" in text and "dims: [ -1, -1 ]" in text
    assert "reshape" not in text and "dynamic_batching" not in text
    assert "kind: KIND_CPU" in text


def test_write_repository_is_self_contained(tmp_path):
    repo = tmp_path / "repo"
    code = tmp_path / "my_ops.py"
    code.write_text("X = 1\n")
    write_repository(repo, three_stages(), code=[code])
    version = repo / "filter" / "1"
    meta = json.loads((version / "artifacts" / "stage.json").read_text())
    assert meta["class"] == "test_repository:_Declared"
    assert [c["name"] for c in meta["outputs"]] == ["item_ids", "scores"]
    assert (version / "artifacts" / "arrays.npz").is_file()
    assert "make_model()" in (version / "model.py").read_text()
    assert (version / "python" / "my_ops.py").read_text() == "X = 1\n"
    assert (repo / "mstage_recommender" / "1").is_dir()
    every_file = "".join(p.read_text(errors="ignore") for p in repo.rglob("*") if p.is_file())
    assert str(tmp_path) not in every_file


def test_unused_request_input_is_left_out_and_required_when_a_reader_requires_it():
    stages = [("only", declared([USER_ID, ColumnSpec("top_k", "int64")], [ITEMS, SCORES]))]
    plan = plan_ensemble(stages)
    assert [(c.name, c.optional) for c in plan.inputs] == [("user_id", False), ("top_k", False)]
    plan = plan_ensemble([("only", declared([USER_ID], [ITEMS, SCORES]))])
    assert [c.name for c in plan.inputs] == ["user_id"]


def test_missing_column_names_stage_and_what_is_available():
    stages = [("retrieve", declared([USER_ID], [ITEMS, SCORES])),
              ("order", declared([ITEMS, USER_FEATURES], [ITEMS, SCORES]))]
    with pytest.raises(ConfigError, match=r"stage 'order' expects column 'user_features' "
                       r"\(float32, shape \[-1, 4\]\), found no earlier stage .*available: "
                       r"\['item_ids', 'scores', 'top_k', 'user_id'\]"):
        plan_ensemble(stages)


def test_incompatible_column_names_both_sides():
    stages = [("retrieve", declared([USER_ID], [ColumnSpec("item_ids", "int32", (-1, -1)),
                                                  SCORES])),
              ("order", declared([ITEMS, SCORES], [ITEMS, SCORES]))]
    with pytest.raises(ConfigError, match=r"expects column 'item_ids' \(int64.*found 'item_ids' "
                       r"\(int32"):
        plan_ensemble(stages)


def test_response_output_that_no_stage_writes_is_an_error():
    with pytest.raises(ConfigError, match=r"response output 'scores'.*only \['item_ids'\]"):
        plan_ensemble([("retrieve", declared([USER_ID], [ITEMS]))])


def test_bad_model_names(tmp_path):
    with pytest.raises(ConfigError, match="distinct stage names"):
        plan_ensemble([(n, declared([USER_ID], [ITEMS, SCORES])) for n in ("a", "a")])
    plan = plan_ensemble([("bad name", declared([USER_ID], [ITEMS, SCORES]))])
    with pytest.raises(ConfigError, match="model name of letters"):
        write_repository(tmp_path / "repo", plan)
    with pytest.raises(ConfigError, match="distinct model names"):
        write_repository(tmp_path / "repo", plan_ensemble(
            [("mstage_recommender", declared([USER_ID], [ITEMS, SCORES]))]))


def test_refuses_a_non_empty_directory_and_bad_options(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "old").write_text("x")
    with pytest.raises(UsageError, match="expected an empty directory .*found files in"):
        write_repository(tmp_path / "repo", three_stages())
    with pytest.raises(ConfigError, match="expected device cpu or gpu, found 'tpu'"):
        write_repository(tmp_path / "other", three_stages(), device="tpu")
    with pytest.raises(ConfigError, match="instances >= 1"):
        write_repository(tmp_path / "other", three_stages(), instances=0)


def test_outputs_nothing_reads_are_not_declared(tmp_path):
    unread = ColumnSpec("debug_flags", "int8")
    plan = plan_ensemble([
        ("retrieve", declared([USER_ID], [ITEMS, SCORES, unread])),
        ("order", declared([ITEMS, SCORES], [ITEMS, SCORES])),
    ])
    write_repository(tmp_path / "repo", plan)
    retrieve = (tmp_path / "repo" / "retrieve" / "config.pbtxt").read_text()
    assert '"item_ids"' in retrieve and '"scores"' in retrieve
    assert "debug_flags" not in retrieve  # the stub would pay for writing it
    assert "debug_flags" not in (tmp_path / "repo" / "mstage_recommender" / "config.pbtxt"
                                 ).read_text()


def test_fixed_width_columns_travel_packed_and_the_rest_as_themselves(tmp_path):
    write_repository(tmp_path / "repo", three_stages())
    ensemble = (tmp_path / "repo" / "mstage_recommender" / "config.pbtxt").read_text()
    # user_features (fixed width, read by order) leaves retrieve packed; item_ids and scores
    # have variable width and stay tensors of their own.
    assert 'output_map { key: "packed" value: "retrieve.packed" }' in ensemble
    assert 'input_map { key: "packed_retrieve" value: "retrieve.packed" }' in ensemble
    assert "user_features" not in ensemble
    assert 'output_map { key: "item_ids" value: "retrieve.item_ids" }' in ensemble
    order = (tmp_path / "repo" / "order" / "config.pbtxt").read_text()
    assert 'name: "packed_retrieve"\n    data_type: TYPE_UINT8\n    dims: [ 16 ]' in order
    wire = json.loads(json.loads(order.split("string_value: ")[1].split(" }")[0]))
    assert wire["unpacks"]["packed_retrieve"][0]["name"] == "user_features"
    assert wire["outputs"] == ["item_ids", "scores"] and wire["packing"] is None


def test_column_names_that_packing_uses_are_refused(tmp_path):
    plan = plan_ensemble([("retrieve", declared([USER_ID], [ITEMS, SCORES,
                                                            ColumnSpec("packed", "int8")]))])
    with pytest.raises(ConfigError, match="expected no column named 'packed' or packed_\\*.*"
                                          "found 'packed'; rename it"):
        write_repository(tmp_path / "repo", plan)
    write_repository(tmp_path / "unpacked", plan, pack=False)  # nothing is packed: allowed
