"""Click labels: 0/1 values (numbers, booleans or their text) become int8; others are refused."""

from __future__ import annotations

from typing import Any

import numpy as np

from mstage.data.checks import examples
from mstage.errors import InputError


def to_labels(series: Any, source: str) -> np.ndarray:
    """int8 [n] labels from a column without missing values; InputError unless all are 0 or 1."""
    import pandas as pd

    if series.dtype.kind == "b":
        return series.to_numpy().astype(np.int8)
    values = series if series.dtype.kind in "iuf" else pd.to_numeric(series, errors="coerce")
    numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~((numbers == 0) | (numbers == 1))
    if bad.any():
        raise InputError(
            f"expected labels 0 or 1 in {source}, found {int(bad.sum())} other values, like "
            f"{examples(series.to_numpy()[bad])}; map them to 0/1 (1 = click), or leave out "
            "--label-col to count every row as a positive"
        )
    return numbers.astype(np.int8)
