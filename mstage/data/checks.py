"""Shared wording for input checks: where a problem is (file, column, rows) and examples of it."""

from __future__ import annotations

from typing import Any

import numpy as np

from mstage.errors import InputError

EXAMPLES = 5


def row_numbers(mask: np.ndarray, limit: int = EXAMPLES) -> str:
    """'2, 5, 9' for the first rows where mask is True, counting the first data row as 1."""
    return ", ".join(str(i + 1) for i in np.flatnonzero(mask)[:limit])


def examples(values: Any, limit: int = EXAMPLES) -> str:
    """"'a', 'b'" for the first distinct values, in order of appearance."""
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
        if len(seen) == limit:
            break
    return ", ".join(repr(v.item() if hasattr(v, "item") else v) for v in seen)


def require_no_nulls(series: Any, column: str, source: str, fix: str = "") -> None:
    """InputError naming the count and first rows of missing values in `column`, if any."""
    missing = series.isna().to_numpy()
    if missing.any():
        raise InputError(
            f"expected a value in every row of column {column!r} of {source}, found "
            f"{int(missing.sum())} missing (data rows {row_numbers(missing)}; first data row = 1); "
            f"{fix or 'fill or drop those rows'}"
        )
