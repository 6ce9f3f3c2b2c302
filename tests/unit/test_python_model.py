"""The generic python-backend model, driven by a stand-in for triton_python_backend_utils."""

from __future__ import annotations

import json
import sys

import numpy as np

from mstage.columns import ColumnSpec
from mstage.pipeline.plan import Plan
from mstage.pipeline.stage import Stage
from mstage.serving.python_model import StageRunner, make_model
from mstage.serving.repository import write_repository
from mstage.serving.wire import ModelWire, Packing


class FakePb:
    """Just enough of triton_python_backend_utils: requests are dicts of arrays."""

    class TritonError:
        def __init__(self, message):
            self.message = message

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        @classmethod
        def from_dlpack(cls, name, owner):
            if not owner.flags.writeable or not owner.flags.c_contiguous:
                raise BufferError("Cannot export readonly array")  # as the real stub does
            return cls(name, np.from_dlpack(owner).copy())

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.outputs = {t.name: t.array for t in output_tensors}
            self.error = error

    @staticmethod
    def get_input_tensor_by_name(request, name):
        if name not in request:
            return None
        view = request[name].view()
        view.flags.writeable = False  # inputs read through DLPack are read-only
        return view


class RowSum(Stage):
    """total[b] = sum(values[b]) + bonus[b] (bonus defaults to 0); counts its calls."""

    inputs = [ColumnSpec("values", "int64", (-1, -1)),
              ColumnSpec("bonus", "int64", optional=True)]
    outputs = [ColumnSpec("total", "int64")]
    calls = 0

    def run(self, batch):
        self.calls += 1
        values = batch["values"]
        if values.min(initial=0) < 0:
            raise ValueError("negative values")
        return {"total": values.sum(axis=1) + batch.get("bonus", 0)}


def test_requests_are_run_together_and_split_back():
    op = RowSum()
    requests = [{"values": np.array([[1, 2]])},
                {"values": np.array([[3, 4], [5, 6]]), "bonus": np.array([10, 20])},
                {"values": np.array([[7, 8]]), "bonus": np.array([1])}]
    responses = StageRunner(op, "sum").execute(requests, FakePb)
    assert [r.error for r in responses] == [None] * 3
    # Request 0 lacks the optional bonus: a different input set, so it runs on its own;
    # requests 1 and 2 share one call: [3+4+10, 5+6+20] and [7+8+1].
    assert [r.outputs["total"].tolist() for r in responses] == [[3], [17, 31], [16]]
    assert op.calls == 2


def test_different_widths_are_separate_groups():
    op = RowSum()
    responses = StageRunner(op, "sum").execute(
        [{"values": np.array([[1, 2]])}, {"values": np.array([[1, 2, 3]])}], FakePb)
    assert [r.outputs["total"].tolist() for r in responses] == [[3], [6]]
    assert op.calls == 2


def test_bad_request_gets_an_error_naming_the_input_and_others_are_answered():
    responses = StageRunner(RowSum(), "sum").execute(
        [{"bonus": np.array([1])}, {"values": np.array([[1.0]])}, {"values": np.array([[2]])}],
        FakePb)
    assert responses[0].error.message == ("model sum: expected column 'values' (int64, shape "
                                          "[-1, -1]), found only ['bonus']")
    assert responses[1].error.message == ("model sum: expected 'values' (int64, shape [-1, -1]), "
                                          "found float64 [1, 1]")
    assert responses[2].outputs["total"].tolist() == [2]


def test_operator_failure_becomes_error_responses_for_its_group_only():
    responses = StageRunner(RowSum(), "sum").execute(
        [{"values": np.array([[-1, 0]])}, {"values": np.array([[1, 1]])},
         {"values": np.array([[5]])}], FakePb)
    # Requests 0 and 1 (width 2) run together and fail together; request 2 (width 1) is fine.
    failed = ["model sum: ValueError: negative values"] * 2
    assert [r.error.message for r in responses[:2]] == failed
    assert responses[2].outputs["total"].tolist() == [5]


def test_an_input_passed_through_as_output_is_exported():
    class Echo(RowSum):
        outputs = [ColumnSpec("values", "int64", (-1, -1))]

        def run(self, batch):
            return {"values": batch["values"]}

    (response,) = StageRunner(Echo(), "echo").execute([{"values": np.array([[1, 2]])}], FakePb)
    assert response.error is None
    assert response.outputs["values"].tolist() == [[1, 2]]


def test_operator_returning_wrong_rows_is_reported():
    class Broken(RowSum):
        def run(self, batch):
            return {"total": np.array([1, 2, 3])}

    (response,) = StageRunner(Broken(), "broken").execute([{"values": np.array([[1]])}], FakePb)
    assert response.error.message == "model broken output: expected 1 rows, found [3]"


def test_make_model_loads_the_operator_from_the_repository(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    code = tmp_path / "scale_ops.py"
    code.write_text(
        "import numpy as np\n"
        "from mstage.columns import ColumnSpec\n"
        "from mstage.pipeline.stage import Stage\n"
        "class Scale(Stage):\n"
        "    inputs = [ColumnSpec('user_id', 'int64')]\n"
        "    outputs = [ColumnSpec('item_ids', 'int64', (-1, 1)),\n"
        "               ColumnSpec('scores', 'float32', (-1, 1))]\n"
        "    def run(self, b):\n"
        "        ids = b['user_id'][:, None] * self.params['factor']\n"
        "        return {'item_ids': ids, 'scores': ids.astype(np.float32)}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import scale_ops

    plan = Plan([("scale", scale_ops.Scale({"factor": 3}))], response=("item_ids", "scores"))
    write_repository(tmp_path / "repo", plan, code=[code])
    sys.modules.pop("scale_ops")
    sys.path.remove(str(tmp_path))  # the model must find the module in its own python/ dir
    model = make_model()()
    # Triton passes the model's config as JSON: the runner writes only its declared outputs
    model.initialize({"model_repository": str(tmp_path / "repo" / "scale"),
                      "model_version": "1", "model_name": "scale",
                      "model_config": json.dumps({"output": [{"name": "item_ids"}]})})
    (response,) = model.runner.execute([{"user_id": np.array([2, 5])}], FakePb)
    assert response.outputs["item_ids"].tolist() == [[6], [15]]  # 2*3, 5*3
    assert "scores" not in response.outputs
    assert str(tmp_path / "repo" / "scale" / "1" / "python") in sys.path


def test_columns_later_models_read_travel_packed_and_come_back_equal():
    class Split(Stage):
        """values [B, 2] -> first [B] int64, half [B, 2] float32, label (variable width)."""

        inputs = [ColumnSpec("values", "int64", (-1, 2))]
        outputs = [ColumnSpec("first", "int64"), ColumnSpec("half", "float32", (-1, 2)),
                   ColumnSpec("label", "int64", (-1, -1))]

        def run(self, batch):
            v = batch["values"]
            return {"first": v[:, 0], "half": v.astype(np.float32) / 2, "label": v[:, :1]}

    class Join(Stage):
        inputs = [ColumnSpec("first", "int64"), ColumnSpec("half", "float32", (-1, 2)),
                  ColumnSpec("label", "int64", (-1, -1))]
        outputs = [ColumnSpec("total", "float32")]

        def run(self, batch):
            total = batch["first"] + batch["half"].sum(axis=1) + batch["label"][:, 0]
            return {"total": total.astype(np.float32)}

    packing = Packing.of([Split.outputs[0], Split.outputs[1]])
    split = StageRunner(Split(), "split", ModelWire(("label",), packing))
    join = StageRunner(Join(), "join", ModelWire(None, None, {"packed_split": packing}))
    requests = [{"values": np.array([[2, 4]])}, {"values": np.array([[6, 8], [1, 3]])}]
    sent = split.execute(requests, FakePb)
    assert [sorted(r.outputs) for r in sent] == [["label", "packed"]] * 2
    assert sent[1].outputs["packed"].dtype == np.uint8
    received = join.execute([{"packed_split": r.outputs["packed"], "label": r.outputs["label"]}
                             for r in sent], FakePb)
    # first + (a + b) / 2 + label: 2 + 3 + 2, 6 + 7 + 6, 1 + 2 + 1
    assert [r.outputs["total"].tolist() for r in received] == [[7.0], [19.0, 4.0]]
