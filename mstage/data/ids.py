"""The id contract: the user's own ids at every boundary, int64 inside; one module translates.

Integer ids stay exact integers, inside and out: an integral float (`101387.0`, which pandas
writes as soon as a column held a NaN) or canonical integer text ("42", not "042") is that
integer. When any id of a kind (users or items, across interactions and the feature table)
is text, every id of that kind is text; the sorted distinct strings are numbered 1..n
inside (0 is never used: it stands for a text id never seen), and `IdMap` translates both
ways. Refused, naming the column, the row and the value: missing or empty ids, non-integral
numbers, numbers beyond int64, and the id -1 (the padding of candidate lists). A column of
digits with a value beyond int64 is text ids (it is text in the file, and stays exact).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mstage.columns import PAD
from mstage.errors import InputError, UsageError

UNKNOWN = 0
"""Internal id of a text id that prepare-data never saw: unknown to every model and store."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INTEGRAL_TEXT = re.compile(r"[+-]?(0|[1-9][0-9]*)(\.0*)?")
_NUMBER_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _refuse(kind: str, where: str, row: int, value: Any, expected: str) -> InputError:
    return InputError(f"expected {expected} {kind} ids in {where}, found {value!r} in data row "
                      f"{row + 1} (first data row = 1); fix that row or drop it")


def integer_ids(series: Any, kind: str, where: str) -> np.ndarray | None:
    """int64 ids when the column holds integer ids, None when it holds text ids.

    Raises InputError for values that are neither: non-integral or out-of-range numbers.
    """
    values = series.to_numpy()
    dtype = series.dtype.kind
    if dtype in "ib":
        return values.astype(np.int64, copy=False)
    if dtype == "u":
        beyond = np.flatnonzero(values > INT64_MAX)
        if beyond.size:
            raise _refuse(kind, where, beyond[0], int(values[beyond[0]]), "integer (int64)")
        return values.astype(np.int64)
    if dtype == "f":
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.floor(values))
                             | (np.abs(values) >= 2**53))
        if bad.size:
            raise _refuse(kind, where, bad[0], float(values[bad[0]]),
                          "integer (integral, exactly representable)")
        return values.astype(np.int64)
    sample = [str(v).strip() for v in values[:1000]]
    if not all(_NUMBER_TEXT.fullmatch(t) for t in sample):
        return None  # text ids, decided without looking at every row
    text = np.asarray([str(v).strip() for v in values], dtype=object)
    integral = np.fromiter((bool(_INTEGRAL_TEXT.fullmatch(t)) for t in text), bool, len(text))
    if integral.all():
        whole = [int(t.split(".")[0]) for t in text]
        if all(INT64_MIN <= v <= INT64_MAX for v in whole):
            return np.asarray(whole, dtype=np.int64)
        return None  # digits beyond int64: exact only as text
    numeric = np.fromiter((bool(_NUMBER_TEXT.fullmatch(t)) for t in text), bool, len(text))
    if numeric.all():
        row = int(np.flatnonzero(~integral)[0])
        if not text[row].startswith("0") or "." in text[row] or "e" in text[row].lower():
            raise _refuse(kind, where, row, values[row], "integer or text")
        return None  # zero-padded digits ("007") are text ids
    return None


def _text(series: Any) -> np.ndarray:
    """The ids as an object array of str; integral floats print without '.0'."""
    values = series.to_numpy()
    if series.dtype.kind == "f":
        values = values.astype(np.int64)
    return np.asarray([str(v) for v in values], dtype=object)


@dataclass
class IdMap:
    """How one kind of id (users or items) becomes int64 and back; `raw` is None for integer
    ids (the same number inside and out), else the sorted distinct text ids, raw[k] -> k + 1."""

    kind: str
    raw: np.ndarray | None

    @property
    def is_string(self) -> bool:
        return self.raw is not None

    # ingest: every id was seen when the map was built ---------------------------------------
    def encode(self, series: Any) -> np.ndarray:
        """int64 [len(series)] ids for the raw ids of a column the map was built from."""
        if self.raw is None:
            ints = integer_ids(series, self.kind, "ids")
            assert ints is not None, "an integer IdMap only encodes integer ids"
            return ints
        import pandas as pd

        positions = pd.Index(self.raw).get_indexer(_text(series))
        assert (positions >= 0).all(), "every raw id was seen when the map was built"
        return positions.astype(np.int64) + 1

    def table(self):
        """The kept map: a DataFrame with `raw_id` (str) and `id` (int64)."""
        import pandas as pd

        assert self.raw is not None
        return pd.DataFrame({"raw_id": self.raw,
                             "id": np.arange(1, len(self.raw) + 1, dtype=np.int64)})

    # boundaries: the CLI, JSON, Triton clients ------------------------------------------------
    @classmethod
    def load(cls, data_dir: Path, kind: str) -> IdMap:
        """The map prepare-data kept in `data_dir` for "users" or "items"."""
        from mstage.data.schema import PreparedData

        table = PreparedData(Path(data_dir)).id_map(kind)
        return cls(kind[:-1], None if table is None else table["raw_id"].to_numpy(dtype=object))

    def parse(self, text: str) -> int | str:
        """The user's id written in `text` (a command-line value, a line of a file)."""
        text = text.strip()
        if self.raw is not None:
            if not text:
                raise UsageError(f"expected a {self.kind} id, found an empty value")
            return text
        if not _INTEGRAL_TEXT.fullmatch(text) or "." in text:
            raise UsageError(f"expected an integer {self.kind} id (this workspace's ids are "
                             f"integers), found {text!r}")
        value = int(text)
        if not INT64_MIN <= value <= INT64_MAX or value == PAD:
            raise UsageError(f"expected a {self.kind} id within int64 and other than {PAD}, "
                             f"found {text!r}")
        return value

    def to_internal(self, ids: Iterable[int | str]) -> np.ndarray:
        """int64 ids inside mstage for the user's ids; text never seen -> UNKNOWN (cold start)."""
        ids = list(ids)
        if self.raw is None:
            return np.asarray(ids, dtype=np.int64)
        slot = np.searchsorted(self.raw, np.asarray(ids, dtype=object))
        slot = np.minimum(slot, max(len(self.raw) - 1, 0))
        known = np.asarray([len(self.raw) > 0 and self.raw[s] == i for s, i in zip(slot, ids,
                                                                                 strict=True)])
        return np.where(known, slot + 1, UNKNOWN).astype(np.int64)

    def to_user(self, ids: np.ndarray) -> list[int | str]:
        """The user's ids (Python ints, or str for text ids) of internal int64 `ids`."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.raw is None:
            return [int(i) for i in ids]
        return [str(self.raw[i - 1]) for i in ids]


def build_id_map(kind: str, columns: Sequence[tuple[Any, str]]) -> IdMap:
    """One IdMap for all (series, where) holding ids of `kind`; see the module docstring."""
    import pandas as pd

    as_ints = []
    for series, where in columns:
        ints = integer_ids(series, kind, where)
        if ints is not None and (ints == PAD).any():
            row = int(np.flatnonzero(ints == PAD)[0])
            raise InputError(f"expected {kind} ids other than {PAD} in {where} ({PAD} pads "
                             f"candidate lists), found {PAD} in data row {row + 1} (first data "
                             "row = 1); renumber that id")
        as_ints.append(ints)
    for series, where in columns:
        empty = np.flatnonzero([isinstance(v, str) and not v.strip() for v in series.to_numpy()])
        if empty.size:
            raise _refuse(kind, where, int(empty[0]), series.to_numpy()[empty[0]], "non-empty")
    if all(ints is not None for ints in as_ints):
        return IdMap(kind, None)
    distinct = pd.unique(np.concatenate([pd.unique(_text(s)) for s, _ in columns]))
    return IdMap(kind, np.sort(distinct.astype(object)))
