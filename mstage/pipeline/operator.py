"""The Operator protocol: one class per stage that runs in-process and inside Triton alike.

An operator declares the columns it reads and writes (`ColumnSpec`), is vectorised over the
first (request) dimension, and saves itself as JSON params plus native files, never pickle.
`save_operator`/`load_operator` add an `operator.json` naming the class, so a directory is
enough to bring an operator back (this is what the Triton python model does).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

from mstage.errors import ConfigError, InputError

OPERATOR_FILE = "operator.json"

# numpy dtype name -> Triton data type (without the TYPE_ prefix used in config.pbtxt).
TRITON_DTYPES = {
    "bool": "BOOL",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}


@dataclass(frozen=True)
class ColumnSpec:
    """A named tensor an operator reads or writes.

    `dtype` is a numpy dtype name ("int64", "float32"); numeric only, because Triton's python
    backend exchanges tensors through DLPack, which has no strings. `shape` gives -1 for a
    variable dimension; its first dimension is always the request batch (-1), so `(-1,)` is
    one value per row and `(-1, 100)` is 100 values per row. `optional` inputs may be absent
    from a batch (the operator then uses its default).
    """

    name: str
    dtype: str
    shape: tuple[int, ...] = (-1,)
    optional: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"expected a column name made of letters, digits and _, "
                              f"found {self.name!r}")
        try:
            dtype = np.dtype(self.dtype).name
        except TypeError:
            dtype = str(self.dtype)
        if dtype not in TRITON_DTYPES:
            raise ConfigError(f"expected column {self.name!r} to have a numeric dtype "
                              f"({', '.join(TRITON_DTYPES)}), found {self.dtype!r}")
        shape = tuple(int(d) for d in self.shape)
        if not shape or shape[0] != -1 or any(d == 0 or d < -1 for d in shape[1:]):
            raise ConfigError(f"expected column {self.name!r} to have shape (-1, ...) with the "
                              f"batch first and -1 or positive sizes after, found {self.shape!r}")
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "shape", shape)

    @property
    def triton_dtype(self) -> str:
        """"INT64", "FP32", ...: the name tritonclient and the inference protocol use."""
        return TRITON_DTYPES[self.dtype]

    def problem(self, array: Any) -> str | None:
        """Why `array` does not fit this column, or None when it does."""
        if not isinstance(array, np.ndarray):
            return f"expected {self.describe()}, found {type(array).__name__}"
        if array.dtype.name != self.dtype or array.ndim != len(self.shape) or any(
            want not in (-1, got) for want, got in zip(self.shape, array.shape, strict=True)
        ):
            return (f"expected {self.describe()}, found {array.dtype.name} "
                    f"{list(array.shape)}")
        return None

    def describe(self) -> str:
        return f"{self.name!r} ({self.dtype}, shape {list(self.shape)})"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "optional": self.optional}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ColumnSpec:
        return cls(raw["name"], raw["dtype"], tuple(raw["shape"]), raw.get("optional", False))


@runtime_checkable
class Operator(Protocol):
    """One stage of the recommender, the same object in-process and inside Triton.

    `inputs`/`outputs` may be class attributes or properties (a retrieval operator's output
    width depends on its configured candidate count). `__call__` takes and returns
    `{name: array}` whose first dimension is the batch of B requests: every output has B rows.
    Candidate lists of varying length are padded to a fixed width with id -1.
    """

    inputs: Sequence[ColumnSpec]
    outputs: Sequence[ColumnSpec]

    @classmethod
    def load(cls, artifact_dir: Path) -> Self: ...

    def save(self, artifact_dir: Path) -> None: ...

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def class_path(operator: Operator) -> str:
    """'package.module:QualName' of an operator's class, importable by `import_class`."""
    cls = type(operator)
    return f"{cls.__module__}:{cls.__qualname__}"


def import_class(path: str) -> type:
    """The class named by 'package.module:QualName'."""
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"expected an importable operator class {path!r}, found an error: "
                          f"{e}; is the package that defines it installed?") from None
    return obj


def save_operator(operator: Operator, artifact_dir: Path) -> None:
    """Write `operator.json` (class path and declared columns) and the operator's own files."""
    artifact_dir = Path(artifact_dir)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    operator.save(artifact_dir)
    meta = {
        "class": class_path(operator),
        "inputs": [c.to_json() for c in operator.inputs],
        "outputs": [c.to_json() for c in operator.outputs],
    }
    (artifact_dir / OPERATOR_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_operator(artifact_dir: Path) -> Operator:
    """The operator saved in `artifact_dir` by `save_operator`."""
    meta_path = Path(artifact_dir) / OPERATOR_FILE
    if not meta_path.is_file():
        raise InputError(f"expected {meta_path} naming a saved operator, found nothing; "
                         "rebuild it with `mstage build-ensemble`")
    meta = json.loads(meta_path.read_text())
    return import_class(meta["class"]).load(Path(artifact_dir))


def check_batch(specs: Sequence[ColumnSpec], batch: Mapping[str, Any], where: str) -> None:
    """Raise InputError naming the first column of `specs` that `batch` lacks or misshapes.

    Also checks that every column has the same number of rows.
    """
    rows: dict[str, int] = {}
    for spec in specs:
        if spec.name not in batch:
            if spec.optional:
                continue
            raise InputError(f"{where}: expected column {spec.describe()}, found only "
                             f"{sorted(batch) or 'no columns'}")
        problem = spec.problem(batch[spec.name])
        if problem:
            raise InputError(f"{where}: {problem}")
        rows[spec.name] = batch[spec.name].shape[0]
    if len(set(rows.values())) > 1:
        raise InputError(f"{where}: expected every column to have the same number of rows, "
                         f"found {rows}")
