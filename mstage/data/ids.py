"""User and item ids as int64: numeric ids are kept, string ids get a kept, sorted map.

Every id that leaves mstage is the user's own id as int64 (design.md). When any id of a kind
(users or items, across interactions and the feature table) is not an integer, every id of
that kind is treated as a string, and the sorted distinct strings get ids 1..n (0 is never
used, so a zero-padded id array never aliases a real item). Strings that are canonical
integers ("42", not "042") count as integers, so a CSV or parquet with numeric ids stored
as text keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mstage.data.checks import examples
from mstage.errors import InputError


def _as_int64(series: Any) -> np.ndarray | None:
    """The ids as int64 when every one is an integer (number or canonical text), else None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = series.dtype.kind
    if kind in "iub":
        return series.to_numpy().astype(np.int64, copy=False)
    if kind == "f":
        values = series.to_numpy()
        if np.all(values == np.floor(values)) and np.all(np.abs(values) < 2**53):
            return values.astype(np.int64)
        return None
    if len(series) > 1000 and _as_int64(series.iloc[:1000]) is None:
        return None  # text ids: decided without converting every row
    text = pa.array(series.astype(str).to_numpy(), type=pa.string())
    try:
        ints = pc.cast(text, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if not pc.all(pc.equal(pc.cast(ints, pa.string()), text)).as_py():
        return None
    return ints.to_numpy(zero_copy_only=False)


def _as_text(series: Any) -> np.ndarray:
    """The ids as an object array of str; integral floats print without '.0'."""
    if series.dtype.kind == "f":
        values = series.to_numpy()
        if np.all(values == np.floor(values)):
            series = series.astype(np.int64)
    return series.astype(str).to_numpy(dtype=object)


@dataclass
class IdMap:
    """How one kind of id (users or items) becomes int64; `raw` is None for numeric ids."""

    kind: str
    raw: np.ndarray | None  # sorted distinct raw ids [n] (object of str); id of raw[k] is k + 1

    @property
    def is_string(self) -> bool:
        return self.raw is not None

    def encode(self, series: Any) -> np.ndarray:
        """int64 [len(series)] ids for raw ids that were seen when the map was built."""
        if self.raw is None:
            ints = _as_int64(series)
            assert ints is not None, "a numeric IdMap only encodes integer ids"
            return ints
        import pandas as pd

        positions = pd.Index(self.raw).get_indexer(_as_text(series))
        assert (positions >= 0).all(), "every raw id was seen when the map was built"
        return positions.astype(np.int64) + 1

    def table(self):
        """The kept map: a DataFrame with `raw_id` (str) and `id` (int64)."""
        import pandas as pd

        assert self.raw is not None
        return pd.DataFrame({"raw_id": self.raw,
                             "id": np.arange(1, len(self.raw) + 1, dtype=np.int64)})


def build_id_map(kind: str, columns: list[tuple[Any, str]]) -> IdMap:
    """One IdMap for all (series, where) holding ids of `kind`; series must have no nulls.

    Raises InputError for non-integral numeric ids (1.5), which are neither ids nor text.
    """
    import pandas as pd

    as_ints = []
    for series, where in columns:
        if series.dtype.kind == "f" and _as_int64(series) is None:
            bad = series.to_numpy()[series.to_numpy() != np.floor(series.to_numpy())]
            raise InputError(
                f"expected integer or text {kind} ids in {where}, found non-integral numbers "
                f"like {examples(bad)}; store the ids as integers or as text"
            )
        as_ints.append(_as_int64(series))
    if all(ints is not None for ints in as_ints):
        return IdMap(kind, None)
    distinct = pd.unique(np.concatenate([pd.unique(_as_text(s)) for s, _ in columns]))
    return IdMap(kind, np.sort(distinct.astype(object)))
