"""Feature columns of the users/items tables: their kind (declared or inferred) and typed values.

Inference, in order: booleans, numbers and datetimes are `numeric` (0/1 flags such as
`in_stock` stay numbers so business rules can test `in_stock == 0`; integer codes are numbers
too, declare them with --categorical when they name categories); list cells, or text where
some value contains the separator, are `multi`; other text is `categorical`. Declared kinds
(--categorical/--numeric/--multi-valued) win. Stored types: categorical -> string,
numeric -> float64, multi -> list<string>; a missing value is null, NaN, or an empty list.
Feature names are the column names with characters other than letters, digits and `_`
replaced by `_` ("Sci-Fi" -> "Sci_Fi"), so they are valid TensorFlow, Triton and Feast names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from mstage.data.checks import examples
from mstage.data.schema import Feature
from mstage.errors import ConfigError, InputError

NEARLY_UNIQUE = 0.9
MIN_DISTINCT_TO_WARN = 50


@dataclass(frozen=True)
class KindOptions:
    """Declared kinds by column name, ignored columns and the multi-valued separator."""

    declared: dict[str, str]
    ignore: frozenset[str]
    sep: str

    @classmethod
    def from_lists(cls, categorical: list[str], numeric: list[str], multi: list[str],
                   ignore: list[str], sep: str) -> KindOptions:
        if not sep:
            raise ConfigError("expected a non-empty multi-valued separator (--multi-sep), "
                              "found ''; pass e.g. --multi-sep '|'")
        declared: dict[str, str] = {}
        for kind, option, names in (("categorical", "--categorical", categorical),
                                    ("numeric", "--numeric", numeric),
                                    ("multi", "--multi-valued", multi)):
            for name in names:
                if name in declared and declared[name] != kind:
                    raise ConfigError(
                        f"expected one kind per column, found {name!r} declared both "
                        f"{declared[name]} and {kind} ({option}); keep it in one option"
                    )
                declared[name] = kind
        both = sorted(set(declared) & set(ignore))
        if both:
            raise ConfigError(f"expected a column to be either declared or ignored, found "
                              f"{', '.join(both)} in both; drop it from --ignore or its kind")
        return cls(declared, frozenset(ignore), sep)


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def infer_kind(series: Any, sep: str) -> str:
    """'numeric', 'multi' or 'categorical' for one column (see the module docstring)."""
    if series.dtype.kind in "biufM":
        return "numeric"
    present = series.dropna()
    if len(present) and _is_list(present.iloc[0]):
        return "multi"
    if present.astype(str).str.contains(sep, regex=False).any():
        return "multi"
    return "categorical"


def safe_name(column: str) -> str:
    """'Children's' -> 'Children_s': feature names become valid tensor and Feast field names."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", column)
    return name if re.match(r"[A-Za-z_]", name) else f"f_{name}"


def feature_columns(df: Any, id_col: str, options: KindOptions,
                    source: str) -> list[tuple[str, Feature]]:
    """(input column, feature) for every column but the id and ignored ones, in file order.

    Declared kinds match the input column name. Two columns whose safe names collide are an
    InputError.
    """
    out: list[tuple[str, Feature]] = []
    seen: dict[str, str] = {}
    for column in map(str, df.columns):
        if column == id_col or column in options.ignore:
            continue
        name = safe_name(column)
        if name in seen:
            raise InputError(
                f"expected distinct feature names in {source}, found {seen[name]!r} and "
                f"{column!r} both stored as {name!r}; rename one or pass --ignore {column}"
            )
        seen[name] = column
        kind = options.declared.get(column) or infer_kind(df[column], options.sep)
        out.append((column, Feature(name, kind)))
    return out


def _categorical(series: Any):
    import pyarrow as pa

    missing = series.isna().to_numpy()
    if series.dtype.kind == "f" and np.all(np.floor(series[~missing]) == series[~missing]):
        series = series.astype("Int64")  # 3.0 -> "3", the category as written
    text = series.astype(str).to_numpy(dtype=object)
    text[missing] = None
    return pa.array(text, type=pa.string())


def _numeric(series: Any, source: str):
    import pandas as pd
    import pyarrow as pa

    kind = series.dtype.kind
    if kind == "M":
        if series.dt.tz is not None:
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        seconds = series.to_numpy().astype("datetime64[s]")
        values = np.where(np.isnat(seconds), np.nan, seconds.astype(np.int64).astype(np.float64))
    elif kind in "biuf":
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        numbers = pd.to_numeric(series, errors="coerce")
        failed = (numbers.isna() & series.notna()).to_numpy()
        if failed.any():
            raise InputError(
                f"expected numbers in {source}, found {int(failed.sum())} values like "
                f"{examples(series.to_numpy()[failed])}; fix them, or declare the column "
                "with --categorical"
            )
        values = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    return pa.array(values, type=pa.float64())


def _multi(series: Any, sep: str):
    """list<string> cells: text split on `sep` (vectorised in pyarrow), tokens trimmed, empty
    tokens dropped; list cells (from parquet) are taken as they are."""
    import pyarrow as pa
    import pyarrow.compute as pc

    present = series.dropna()
    if len(present) and any(_is_list(v) for v in present.iloc[:1000]):
        cells = [[s for v in cell if v is not None and (s := str(v).strip())]
                 if _is_list(cell) else [] for cell in series.to_numpy(dtype=object)]
        return pa.array(cells, type=pa.list_(pa.string()))
    text = series.astype(str).to_numpy(dtype=object)
    text[series.isna().to_numpy()] = None
    lists = pc.split_pattern(pa.array(text, type=pa.string()), sep)
    tokens = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    keep = pc.not_equal(tokens, "")
    rows = pc.list_parent_indices(lists).filter(keep).to_numpy()
    counts = np.bincount(rows, minlength=len(series))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), tokens.filter(keep))


def typed_column(series: Any, feature: Feature, sep: str, source: str):
    """A pyarrow array of the stored type for `feature` (see the module docstring)."""
    if feature.kind == "categorical":
        return _categorical(series)
    if feature.kind == "numeric":
        return _numeric(series, f"column {series.name!r} of {source}")
    return _multi(series, sep)


def missing_values(feature: Feature, n: int):
    """n missing values of the stored type: null, NaN, or empty lists."""
    import pyarrow as pa

    if feature.kind == "categorical":
        return pa.nulls(n, type=pa.string())
    if feature.kind == "numeric":
        return pa.array(np.full(n, np.nan), type=pa.float64())
    return pa.array([[] for _ in range(n)], type=pa.list_(pa.string()))


def feature_warnings(df: Any, columns: list[tuple[str, Feature]], source: str) -> list[str]:
    """Columns that are probably not features: empty everywhere, or text unique per row."""
    warnings = []
    for name, f in columns:
        column = df[name]
        if len(column) and column.isna().all():
            warnings.append(f"column {name!r} of {source} is empty in every row; "
                            f"pass --ignore {name} to drop it")
        elif f.kind == "categorical":
            distinct = column.nunique()
            if distinct >= MIN_DISTINCT_TO_WARN and distinct > NEARLY_UNIQUE * len(column):
                warnings.append(
                    f"column {name!r} of {source} looks like free text or a second id "
                    f"({distinct} distinct values in {len(column)} rows); it is kept as "
                    f"categorical: pass --ignore {name} to drop it"
                )
    return warnings
