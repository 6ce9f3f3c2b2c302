"""Timestamps as int64 unix seconds, from numbers (s, ms, us or ns) or ISO 8601 text.

Numbers carry no unit, so it is read from their magnitude, and only when that is
unambiguous: every |value| below 1e10 is seconds (up to year 2286); every value in
[1e11, 1e14) is milliseconds (years 1973 to 5138), [1e14, 1e17) microseconds, at least 1e17
nanoseconds. A column mixing ranges, or with values in the [1e10, 1e11) gap, is an error
rather than a guess. Sub-second parts are floored. Text must be ISO 8601 ("2024-05-01",
"2024-05-01T12:00:00+02:00"); text without a zone is read as UTC. Day/month orders such as
"01/05/2024" are refused, since they are ambiguous.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mstage.data.checks import examples
from mstage.errors import InputError

# (unit, smallest |value|, largest |value| exclusive, seconds per value)
NUMERIC_UNITS = (
    ("ms", 1e11, 1e14, 1_000),
    ("us", 1e14, 1e17, 1_000_000),
    ("ns", 1e17, np.inf, 1_000_000_000),
)
SECONDS_BELOW = 1e10


def numeric_unit(values: np.ndarray, source: str) -> tuple[str, int]:
    """('s', 1) or ('ms', 1000) ... for a non-empty array of finite numbers."""
    magnitude = np.abs(values)
    low, high = magnitude.min(), magnitude.max()
    if high < SECONDS_BELOW:
        return "s", 1
    for unit, start, stop, per_second in NUMERIC_UNITS:
        if low >= start and high < stop:
            return unit, per_second
    raise InputError(
        f"expected timestamps in one unit in {source} (unix seconds below 1e10, or "
        f"milliseconds/microseconds/nanoseconds since 1973), found values from {low:.0f} to "
        f"{high:.0f}; convert the column to unix seconds or ISO 8601 text"
    )


def _from_numbers(values: np.ndarray, source: str) -> tuple[np.ndarray, str]:
    if not np.isfinite(values).all():
        bad = values[~np.isfinite(values)]
        raise InputError(f"expected finite timestamps in {source}, found {examples(bad)}; "
                         "drop or fix those rows")
    if len(values) == 0:
        return values.astype(np.int64), "s"
    unit, per_second = numeric_unit(values, source)
    if values.dtype.kind in "iu":
        return values.astype(np.int64, copy=False) // per_second, unit
    return np.floor(values / per_second).astype(np.int64), unit


def _from_datetimes(series: Any) -> np.ndarray:
    if series.dt.tz is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    return series.to_numpy().astype("datetime64[s]").astype(np.int64)


def to_unix_seconds(series: Any, source: str) -> tuple[np.ndarray, str]:
    """(int64 [n] unix seconds, the unit read) for a column without missing values.

    `source` names the column and file for errors ("column 'ts' of events.csv").
    """
    import pandas as pd

    kind = series.dtype.kind
    if kind == "M":
        return _from_datetimes(series), "datetime"
    if kind in "iuf":
        return _from_numbers(series.to_numpy(), source)
    if kind == "b":
        raise InputError(f"expected timestamps in {source}, found booleans; "
                         "pass the time column with --time-col")
    # Numbers stored as text; a sample decides first, so ISO text is not parsed twice.
    if pd.to_numeric(series.iloc[:1000], errors="coerce").notna().all():
        numbers = pd.to_numeric(series, errors="coerce")
        if not numbers.isna().any():
            return _from_numbers(numbers.to_numpy(), source)
    parsed = pd.to_datetime(series, utc=True, format="ISO8601", errors="coerce")
    failed = parsed.isna().to_numpy()
    if failed.any():
        raise InputError(
            f"expected unix seconds or ISO 8601 timestamps in {source}, found "
            f"{int(failed.sum())} values that do not parse, like "
            f"{examples(series.to_numpy()[failed])}; convert them (e.g. 2024-05-01T12:00:00Z) "
            "or pass the right column with --time-col"
        )
    return _from_datetimes(parsed), "iso8601"
