"""ColumnSpec validation, batch checks, saving/restoring stages, and the one checked call."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mstage.columns import ColumnSpec, check_batch
from mstage.errors import ConfigError, InputError, MstageError
from mstage.pipeline.stage import Stage, import_class, run_stage


class AddOffset(Stage):
    """y = x + offset + bias[column]; the offset is a param, the bias an array, and the
    scale a file `model/scale.txt` of source `model` read at load (counted in `opened`)."""

    READS = {"model": ("scale.txt",)}
    inputs = [ColumnSpec("x", "float32", (-1, 3))]
    outputs = [ColumnSpec("y", "float32", (-1, 3))]
    opened = 0

    def _open(self):
        type(self).opened += 1
        self.scale = float((self.sources["model"] / "scale.txt").read_text())

    def run(self, batch):
        return {"y": (batch["x"] * self.scale + self.params["offset"]
                      + self.arrays["bias"]).astype(np.float32)}


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


def _add_offset(tmp_path: Path) -> AddOffset:
    model = tmp_path / "model"
    model.mkdir()
    (model / "scale.txt").write_text("2")
    (model / "unused.bin").write_bytes(b"x" * 1000)  # not in READS: never copied
    return AddOffset({"offset": 0.5}, {"bias": np.array([0, 1, 2], np.float32)},
                     {"model": model})


def test_columns_are_known_without_loading_and_loading_happens_once(tmp_path):
    AddOffset.opened = 0
    stage = _add_offset(tmp_path)
    assert [c.name for c in stage.outputs] == ["y"] and AddOffset.opened == 0
    out = stage({"x": np.ones((2, 3), np.float32)})["y"]
    stage({"x": np.ones((1, 3), np.float32)})
    # 1 * 2 + 0.5 + [0, 1, 2]
    np.testing.assert_array_equal(out, [[2.5, 3.5, 4.5]] * 2)
    assert AddOffset.opened == 1


def test_save_and_restore_round_trip_copies_only_what_it_reads(tmp_path):
    stage = _add_offset(tmp_path)
    stage.save(tmp_path / "saved")
    meta = json.loads((tmp_path / "saved" / "stage.json").read_text())
    assert meta["class"] == "test_stage:AddOffset"
    assert meta["params"] == {"offset": 0.5}
    assert meta["inputs"] == [{"name": "x", "dtype": "float32", "shape": [-1, 3],
                               "optional": False}]
    assert sorted(p.name for p in (tmp_path / "saved" / "model").iterdir()) == ["scale.txt"]
    restored = Stage.restore(tmp_path / "saved")
    assert isinstance(restored, AddOffset)
    out = restored({"x": np.zeros((2, 3), np.float32)})["y"]
    np.testing.assert_array_equal(out, [[0.5, 1.5, 2.5]] * 2)  # 0 * 2 + 0.5 + bias


def test_a_stage_needs_the_sources_it_reads():
    with pytest.raises(ConfigError, match="expected sources model for stage AddOffset"):
        AddOffset({"offset": 1.0})


def test_restore_errors_name_the_file_and_the_class(tmp_path):
    with pytest.raises(InputError, match=f"expected {tmp_path}/stage.json naming a saved "
                       "stage, found nothing; rebuild it with `mstage build-ensemble`"):
        Stage.restore(tmp_path)
    with pytest.raises(ConfigError, match="expected an importable stage class "
                       "'no_such_module:X'.*installed"):
        import_class("no_such_module:X")
    with pytest.raises(ConfigError, match="'test_stage:Missing'"):
        import_class("test_stage:Missing")


class WrongDtype(Stage):
    """Declares float32 scores and returns float64: a bug run_stage must catch."""

    inputs = [ColumnSpec("user_id", "int64")]
    outputs = [ColumnSpec("scores", "float32", (-1, 2))]

    def run(self, batch):
        return {"scores": np.zeros((len(batch["user_id"]), 2))}


def test_run_stage_checks_outputs_dtype_and_rows_and_names_the_stage():
    with pytest.raises(InputError, match=r"^stage bad output: expected 'scores' \(float32, "
                       r"shape \[-1, 2\]\), found float64 \[3, 2\]$"):
        run_stage(WrongDtype(), {"user_id": np.arange(3)}, "stage bad")

    class WrongRows(WrongDtype):
        def run(self, batch):
            return {"scores": np.zeros((1, 2), np.float32)}

    with pytest.raises(InputError, match=r"stage bad output: expected 3 rows, found \[1\]"):
        run_stage(WrongRows(), {"user_id": np.arange(3)}, "stage bad")

    class Raises(WrongDtype):
        def run(self, batch):
            raise ValueError("boom")

    with pytest.raises(MstageError, match="^stage bad: ValueError: boom$"):
        run_stage(Raises(), {"user_id": np.arange(3)}, "stage bad")
