"""The columns stages exchange: names, the padding id, declared specs and the one batch check.

Every stage, the in-process pipeline and the Triton runner import these, so a column name or
the padding value is written once. A batch is `{name: array}` whose first dimension is the
B requests; candidate lists are padded to a fixed width with `PAD` (score -inf).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mstage.errors import ConfigError, InputError

PAD = -1
"""Item id of an empty slot in a candidate list (Faiss pads its results with it too)."""

USER_ID = "user_id"
TOP_K = "top_k"
CANDIDATE_IDS, RETRIEVAL_SCORES = "candidate_ids", "retrieval_scores"
RECENT_ITEMS, COLD_START = "recent_items", "cold_start"
HISTORY_ONLY = "history_only"
"""Retrieval: 1 where a user the model never saw got personalised candidates from the history
the store holds (pushed by `mstage push-events`), not the popularity fallback."""
HISTORY = "history"
"""Optional: item ids [B, L] the query tower reads instead of the store's recent items
(offline evaluation passes each user's train history: the store also holds test items)."""
QUERY_HISTORY = "query_history"
"""Retrieval -> scoring: the item ids [B, L] the query read (the `history` given, else the
store's recent items), most recent first, PAD-padded; the ranker reads them too."""
FILTERED_IDS, FILTERED_SCORES, REFILLED = "filtered_ids", "filtered_scores", "refilled"
RANKING_SCORES = "ranking_scores"
ITEM_IDS, SCORES, FALLBACK = "item_ids", "scores", "fallback"
USER_CODES, USER_NUMBERS = "user_codes", "user_numbers"
"""Retrieval -> scoring: the user's features encoded for the ranker, by dtype (int64 codes
[B, C], float32 numbers [B, M]): two fixed-width columns whatever the schema, so the stages'
columns, and the Triton configs written from them, do not depend on the features."""

# numpy dtype name -> Triton data type (without the TYPE_ prefix used in config.pbtxt).
TRITON_DTYPES = {
    "bool": "BOOL",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}


@dataclass(frozen=True)
class ColumnSpec:
    """A named tensor a stage reads or writes.

    `dtype` is a numpy dtype name ("int64", "float32"); numeric only, because Triton's python
    backend exchanges tensors through DLPack, which has no strings. `shape` gives -1 for a
    variable dimension; its first dimension is always the request batch (-1), so `(-1,)` is
    one value per row and `(-1, 100)` is 100 values per row. `optional` inputs may be absent
    from a batch (the stage then uses its default).
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
        # checked on every call of every stage: a dtype's scalar type is a C attribute, its
        # name is built in Python each time
        object.__setattr__(self, "_scalar_type", np.dtype(dtype).type)

    @property
    def triton_dtype(self) -> str:
        """"INT64", "FP32", ...: the name tritonclient and the inference protocol use."""
        return TRITON_DTYPES[self.dtype]

    def problem(self, array: Any) -> str | None:
        """Why `array` does not fit this column, or None when it does."""
        if not isinstance(array, np.ndarray):
            return f"expected {self.describe()}, found {type(array).__name__}"
        if array.dtype.type is not self._scalar_type or array.ndim != len(self.shape) or any(
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


REQUEST = (ColumnSpec(USER_ID, "int64"), ColumnSpec(TOP_K, "int64", optional=True))
"""What a recommendation request carries, in-process and in the Triton ensemble."""
RESPONSE = (ITEM_IDS, SCORES, FALLBACK)
"""What a recommendation response carries: best-first ids [B, k], their scores, a flag [B]."""


def in_rows(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """bool [b, n]: whether ids[r, j] is among rows[r] ([b, m], PAD-padded; PAD never
    matches). How retrieval and filtering tell a user's seen items among candidates."""
    return (ids[:, :, None] == np.where(rows == PAD, -2, rows)[:, None, :]).any(axis=2)


def check_batch(specs: Sequence[ColumnSpec], batch: Mapping[str, Any], where: str,
                rows: int | None = None) -> None:
    """Raise InputError naming the first column of `specs` that `batch` lacks or misshapes.

    Every column must have the same number of rows (`rows`, when given).
    """
    counts: dict[str, int] = {}
    for spec in specs:
        if spec.name not in batch:
            if spec.optional:
                continue
            raise InputError(f"{where}: expected column {spec.describe()}, found only "
                             f"{sorted(batch) or 'no columns'}")
        problem = spec.problem(batch[spec.name])
        if problem:
            raise InputError(f"{where}: {problem}")
        counts[spec.name] = batch[spec.name].shape[0]
    if len(set(counts.values())) > 1:
        raise InputError(f"{where}: expected every column to have the same number of rows, "
                         f"found {counts}")
    if rows is not None and counts and set(counts.values()) != {rows}:
        raise InputError(f"{where}: expected {rows} rows, found {sorted(set(counts.values()))}")
