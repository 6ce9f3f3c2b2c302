"""ColumnSpec validation, batch checks, and saving/loading operators through operator.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mstage.errors import ConfigError, InputError
from mstage.pipeline.operator import (
    ColumnSpec,
    Operator,
    check_batch,
    import_class,
    load_operator,
    save_operator,
)


class AddOffset:
    """out = x + offset, per row; the offset is its only parameter."""

    inputs = [ColumnSpec("x", "float32", (-1, 3))]
    outputs = [ColumnSpec("y", "float32", (-1, 3))]

    def __init__(self, offset: float):
        self.offset = offset

    @classmethod
    def load(cls, artifact_dir: Path) -> AddOffset:
        return cls(json.loads((artifact_dir / "params.json").read_text())["offset"])

    def save(self, artifact_dir: Path) -> None:
        (artifact_dir / "params.json").write_text(json.dumps({"offset": self.offset}))

    def __call__(self, batch):
        return {"y": batch["x"] + np.float32(self.offset)}


def test_column_spec_normalises_dtype_and_shape():
    spec = ColumnSpec("scores", np.float32, [-1, 5])
    assert (spec.dtype, spec.shape, spec.triton_dtype) == ("float32", (-1, 5), "FP32")
    assert ColumnSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "item ids", "dtype": "int64"}, "letters, digits and _"),
    ({"name": "names", "dtype": "str"}, "numeric dtype"),
    ({"name": "x", "dtype": "int64", "shape": (5,)}, r"shape \(-1, ...\).*found \(5,\)"),
    ({"name": "x", "dtype": "int64", "shape": (-1, 0)}, "found \\(-1, 0\\)"),
    ({"name": "x", "dtype": "int64", "shape": ()}, "found \\(\\)"),
])
def test_column_spec_rejects(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ColumnSpec(**kwargs)


def test_problem_names_expected_and_found():
    spec = ColumnSpec("x", "float32", (-1, 3))
    assert spec.problem(np.zeros((2, 3), np.float32)) is None
    assert spec.problem(np.zeros((2, 4), np.float32)) == \
        "expected 'x' (float32, shape [-1, 3]), found float32 [2, 4]"
    assert spec.problem(np.zeros((2, 3), np.float64)) == \
        "expected 'x' (float32, shape [-1, 3]), found float64 [2, 3]"
    assert spec.problem([1, 2, 3]) == "expected 'x' (float32, shape [-1, 3]), found list"


def test_check_batch():
    specs = [ColumnSpec("user_id", "int64"), ColumnSpec("top_k", "int64", optional=True)]
    check_batch(specs, {"user_id": np.array([1, 2])}, "here")  # optional may be absent
    with pytest.raises(InputError, match=r"here: expected column 'user_id' \(int64, shape \[-1\]\)"
                       r", found only \['top_k'\]"):
        check_batch(specs, {"top_k": np.array([1])}, "here")
    with pytest.raises(InputError, match="same number of rows"):
        check_batch(specs, {"user_id": np.array([1, 2]), "top_k": np.array([3])}, "here")


def test_save_and_load_round_trip(tmp_path):
    op = AddOffset(2.5)
    assert isinstance(op, Operator)
    save_operator(op, tmp_path / "op")
    meta = json.loads((tmp_path / "op" / "operator.json").read_text())
    assert meta["class"] == "test_operator:AddOffset"
    assert meta["inputs"] == [{"name": "x", "dtype": "float32", "shape": [-1, 3],
                               "optional": False}]
    loaded = load_operator(tmp_path / "op")
    out = loaded({"x": np.zeros((2, 3), np.float32)})["y"]
    np.testing.assert_array_equal(out, np.full((2, 3), 2.5, np.float32))  # 0 + 2.5


def test_load_errors_name_the_file_and_the_class(tmp_path):
    with pytest.raises(InputError, match=f"expected {tmp_path}/operator.json naming a saved "
                       "operator, found nothing; rebuild it with `mstage build-ensemble`"):
        load_operator(tmp_path)
    with pytest.raises(ConfigError, match="expected an importable operator class "
                       "'no_such_module:X'.*installed"):
        import_class("no_such_module:X")
    with pytest.raises(ConfigError, match="'test_operator:Missing'"):
        import_class("test_operator:Missing")
