"""Read a raw table (parquet or CSV, chosen by extension) into pandas, only the columns needed.

Reading the header first lets a missing column fail in milliseconds with the list of columns
found, and lets a 20M-row interactions file load only its four used columns. A directory of
parquet files (a partitioned data set, hive `key=value` directories included) reads as one
table.
"""

from __future__ import annotations

from pathlib import Path

from mstage.errors import InputError

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz")


def is_parquet_dir(path: Path) -> bool:
    """Whether `path` is a directory holding parquet files (a partitioned data set)."""
    return path.is_dir() and any(path.rglob("*.parquet"))


def table_format(path: Path) -> str:
    """'parquet' or 'csv' from the file name; InputError for anything else."""
    if is_parquet_dir(path):
        return "parquet"
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    raise InputError(
        f"expected a .parquet, .pq, .csv or .csv.gz file, found {path}; "
        "convert it to one of these formats"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _unreadable(path: Path, fmt: str, error: BaseException) -> InputError:
    return InputError(
        f"expected a readable {fmt} file at {path}, found an error: {_first_line(error)}; "
        "check the file (re-export it if it is truncated or corrupt)"
    )


def require_file(path: Path, expected: str, hint: str, parquet_dir: bool = False) -> None:
    """InputError `expected <expected> at <path>, found a directory|nothing; <hint>` unless
    `path` is a file (or, with `parquet_dir`, a directory of parquet files)."""
    if path.is_file() or (parquet_dir and is_parquet_dir(path)):
        return
    found = "a directory" if path.is_dir() else "nothing"
    raise InputError(f"expected {expected} at {path}, found {found}; {hint}")


def _check_exists(path: Path, what: str) -> None:
    require_file(path, f"the {what} file", f"check the path given to --{what}", parquet_dir=True)


def read_columns(path: Path, what: str) -> list[str]:
    """The column names of a table, reading only its header or parquet footer."""
    _check_exists(path, what)
    fmt = table_format(path)
    try:
        if fmt == "parquet" and path.is_dir():
            return list(_parquet_dir(path).schema.names)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        import pandas as pd

        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except (OSError, ValueError, UnicodeDecodeError, EOFError) as e:
        raise _unreadable(path, fmt, e) from None


def sample_columns(path: Path, columns: list[str], rows: int = 1000):
    """The first `rows` rows of `columns` (a pandas DataFrame), read without the whole file."""
    if table_format(path) == "parquet" and path.is_dir():
        return _parquet_dir(path).head(rows, columns=columns).to_pandas()
    if table_format(path) == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        batches = pq.ParquetFile(path).iter_batches(batch_size=rows, columns=columns)
        first = next(batches, None)
        return (first if first is not None else pa.table({c: [] for c in columns})).to_pandas()
    import pandas as pd

    return pd.read_csv(path, usecols=columns, nrows=rows)


def _parquet_dir(path: Path):
    """A pyarrow dataset over a directory of parquet files (hive partitions included)."""
    import pyarrow.dataset as ds

    return ds.dataset(path, format="parquet", partitioning="hive")


def read_table(path: Path, what: str, columns: list[str] | None = None,
               text_columns: tuple[str, ...] = ()):
    """A pandas DataFrame of `columns` (all when None) from a parquet or CSV file.

    CSV columns in `text_columns` (the ids) are read as text, so "007" is not turned into 7;
    empty CSV cells are missing values.
    """
    _check_exists(path, what)
    fmt = table_format(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path, columns=columns).to_pandas()  # a directory too
        return read_csv(path, columns, text_columns)
    except (OSError, ValueError, UnicodeDecodeError, EOFError) as e:
        # pyarrow.ArrowInvalid and pandas' parser errors are ValueError subclasses.
        raise _unreadable(path, fmt, e) from None


def read_csv(source, columns: list[str] | None = None, text_columns: tuple[str, ...] = ()):
    """A pandas DataFrame from CSV at `source` (a path, or a binary stream such as stdin's);
    `text_columns` present in it are read as text, then kept as int64 when every value is a
    canonical integer. Raises the reader's errors (ValueError subclasses) as they are."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    # pyarrow parses in parallel, several times faster than pandas' C parser; .gz too.
    convert = pcsv.ConvertOptions(include_columns=columns, strings_can_be_null=True,
                                  column_types={c: pa.string() for c in text_columns})
    table = pcsv.read_csv(source, convert_options=convert)
    return _canonical_integers(table, tuple(c for c in text_columns
                                            if c in table.column_names)).to_pandas()


def _canonical_integers(table, columns: tuple[str, ...]):
    """Text columns whose every value is a canonical integer ("42", not "042") as int64.

    Done in Arrow, so 20M numeric ids in a CSV cost a cast, not a Python string per row.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    for name in dict.fromkeys(columns):
        text = table[name]
        try:
            ints = pc.cast(text, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if pc.all(pc.equal(pc.cast(ints, pa.string()), text)).as_py() is not False:
            table = table.set_column(table.schema.get_field_index(name), name, ints)
    return table
