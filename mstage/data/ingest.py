"""`prepare_data`: raw interactions (+ optional users/items tables) -> the prepared-data artifact.

`prepare_tables` does the work in memory; `prepare_data` runs it inside `Workspace.build`,
so a bad input or Ctrl-C keeps the previous artifact. The layout written is documented in
`mstage.data.schema`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mstage.config import DataConfig, as_dict, save_section
from mstage.data import features as feats
from mstage.data.checks import require_no_nulls
from mstage.data.ids import IdMap, build_id_map
from mstage.data.labels import to_labels
from mstage.data.readers import read_columns, read_table, sample_columns
from mstage.data.schema import SPLITS, TEST, VALID, Feature, Schema, fold_column, write_prepared
from mstage.data.timestamps import to_unix_seconds
from mstage.errors import ConfigError, InputError
from mstage.progress import SILENT, Reporter
from mstage.workspace import Artifact, Workspace

RESERVED = ("user_id", "item_id", "timestamp", "label") + tuple(fold_column(s) for s in SPLITS)
STEPS = ("read", "ids", "clean", "folds", "features")


@dataclass
class Table:
    """A prepared users or items table before it is written."""

    kind: str  # "user" or "item"
    ids: np.ndarray  # int64 [n], sorted, unique
    features: list[Feature] = field(default_factory=list)
    columns: dict[str, Any] = field(default_factory=dict)  # name -> pyarrow array [n]
    with_interactions: int = 0
    duplicates: int = 0
    uncovered: int = 0

    def to_arrow(self):
        import pyarrow as pa

        return pa.table({f"{self.kind}_id": pa.array(self.ids, type=pa.int64()), **self.columns})


@dataclass
class PrepareResult:
    """What `prepare_data` built: resolved config, counts, features, and warnings to show."""

    config: DataConfig
    path: Path
    metrics: dict[str, Any]
    user_features: list[Feature]
    item_features: list[Feature]
    warnings: list[str]


def resolve_paths(config: DataConfig) -> DataConfig:
    """The config with absolute input paths; UsageError when no interactions file is known."""
    if not config.interactions:
        raise ConfigError(
            "expected an interactions file, found none on the command line or in the [data] "
            "section of mstage.toml; pass --interactions FILE"
        )
    for name, value in (("user_col", config.user_col), ("item_col", config.item_col),
                        ("time_col", config.time_col)):
        if not value:
            raise ConfigError(f"expected a column name for {name}, found ''; "
                              f"pass --{name.replace('_', '-')} NAME")
    paths = {k: str(Path(v).expanduser().resolve()) if (v := getattr(config, k)) else ""
             for k in ("interactions", "users", "items")}
    return replace(config, **paths)


def _check_columns(path: Path, what: str, wanted: dict[str, str]) -> None:
    """wanted: column -> the option that names it; InputError listing what the file has."""
    found = read_columns(path, what)
    missing = {col: option for col, option in wanted.items() if col not in found}
    if missing:
        named = ", ".join(f"{col!r} ({option})" for col, option in missing.items())
        raise InputError(
            f"expected column {named} in {what} file {path.name}, found columns "
            f"{', '.join(map(repr, found))}; name the right one with "
            f"{'/'.join(dict.fromkeys(missing.values()))}"
        )


LABEL_NAMES = re.compile(r"(?i).*(click|label|purchase|convert|conversion|target|liked?$).*")


def unused_column_warnings(path: Path, unused: list[str], has_label: bool) -> list[str]:
    """A warning listing the interactions' columns mstage ignores, and one per column that
    looks like a label (by its name, or 0/1 values) when no --label-col was given."""
    if not unused:
        return []
    warnings = [f"ignored columns of {path.name} (not used by mstage): {', '.join(unused)}"]
    if has_label:
        return warnings
    sample = sample_columns(path, unused)
    for column in unused:
        values = set(sample[column].dropna().unique().tolist())
        binary = bool(values) and values <= {0, 1, "0", "1"}
        if binary or LABEL_NAMES.fullmatch(column):
            why = "holds only 0/1" if binary else "is named like a label"
            warnings.append(
                f"column {column!r} of {path.name} {why}, but no --label-col was given, so "
                f"every row counts as a positive interaction; pass --label-col {column} to "
                "learn from it")
    return warnings


def read_interactions(config: DataConfig, warnings: list[str]):
    """The interactions' user, item, time (and label) columns, checked for emptiness and nulls;
    `warnings` gets the columns left unused."""
    path = Path(config.interactions)
    wanted = {config.user_col: "--user-col", config.item_col: "--item-col",
              config.time_col: "--time-col"}
    if config.label_col:
        wanted[config.label_col] = "--label-col"
    _check_columns(path, "interactions", wanted)
    unused = [c for c in read_columns(path, "interactions")
              if c not in wanted and c not in config.ignore]  # --ignore: the user knows
    warnings += unused_column_warnings(path, unused, bool(config.label_col))
    df = read_table(path, "interactions", list(dict.fromkeys(wanted)),
                    text_columns=(config.user_col, config.item_col))
    if len(df) == 0:
        raise InputError(f"expected at least one interaction in {path}, found an empty table; "
                         "check the file")
    for column in wanted:
        require_no_nulls(df[column], column, path.name)
    return df


def read_entity_table(config: DataConfig, what: str, id_col: str, option: str):
    """A users or items table (all columns but ignored ones), or None when not given."""
    value = getattr(config, what)
    if not value:
        return None
    path = Path(value)
    _check_columns(path, what, {id_col: option})
    ignore = set(config.ignore)
    columns = [c for c in read_columns(path, what) if c not in ignore or c == id_col]
    df = read_table(path, what, columns, text_columns=(id_col,))
    require_no_nulls(df[id_col], id_col, path.name, "every row needs its id")
    return df


def clean_interactions(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray,
                       label: np.ndarray):
    """Sort by (user, timestamp, item) and drop repeated (user, item, timestamp) events.

    A repeated event keeps the highest label (a click among impressions of the same second
    is a click). Returns (DataFrame, number of rows dropped). Arrays are [n].
    """
    import pandas as pd

    order = np.lexsort((-label, item, timestamp, user))
    user, item, timestamp, label = user[order], item[order], timestamp[order], label[order]
    repeat = np.r_[False, (user[1:] == user[:-1]) & (timestamp[1:] == timestamp[:-1])
                   & (item[1:] == item[:-1])]
    keep = ~repeat
    df = pd.DataFrame({"user_id": user[keep], "item_id": item[keep],
                       "timestamp": timestamp[keep], "label": label[keep].astype(np.int8)})
    return df, int(repeat.sum())


def build_table(kind: str, df, id_col: str, id_map: IdMap, used_ids: np.ndarray,
                options: feats.KindOptions, source: str, warnings: list[str]) -> Table:
    """Typed feature columns for every id in the table or in `used_ids` (sorted, unique).

    Table rows with an id seen before are dropped (the first wins). Ids in the interactions
    but not in the table are added with missing features (null / NaN / empty list).
    """
    import pyarrow as pa

    if df is None:
        return Table(kind, used_ids, with_interactions=len(used_ids))
    feature_columns = feats.feature_columns(df, id_col, options, source)
    ids = id_map.encode(df[id_col])
    first = ~pd_duplicated(ids)
    df, ids = df[first], ids[first]
    warnings += feats.feature_warnings(df, feature_columns, source)
    extra = np.setdiff1d(used_ids, ids, assume_unique=True)
    all_ids = np.concatenate([ids, extra])
    order = pa.array(np.argsort(all_ids, kind="stable"))
    columns = {}
    for column, f in feature_columns:
        typed = feats.typed_column(df[column], f, options.sep, source)
        columns[f.name] = pa.concat_arrays([typed, feats.missing_values(f, len(extra))]).take(order)
    features = [f for _, f in feature_columns]
    table = Table(kind, all_ids[order.to_numpy()], features, columns, len(used_ids),
                  int((~first).sum()), len(extra))
    if table.duplicates:
        warnings.append(f"{source} has {table.duplicates} rows repeating an earlier {kind} id; "
                        "the first row of each id is kept")
    if table.uncovered:
        warnings.append(f"{source} lacks {table.uncovered} {kind} ids found in the interactions; "
                        f"they are added with missing features (unknown values)")
    return table


def pd_duplicated(values: np.ndarray) -> np.ndarray:
    """bool [n]: True where the value already appeared earlier in the array."""
    import pandas as pd

    return pd.Series(values).duplicated().to_numpy()


def _check_feature_names(users: Table, items: Table) -> None:
    for table in (users, items):
        clash = [f.name for f in table.features if f.name in RESERVED]
        if clash:
            raise InputError(
                f"expected {table.kind} feature names other than {', '.join(RESERVED)}, found "
                f"{', '.join(clash)}; rename the column or pass --ignore {clash[0]}")
    shared = sorted({f.name for f in users.features} & {f.name for f in items.features})
    if shared:
        raise InputError(
            f"expected distinct feature names in the users and items tables, found "
            f"{', '.join(shared)} in both; rename one or pass --ignore {shared[0]}")


def _check_declared_exist(options: feats.KindOptions, users_df, items_df) -> None:
    found = set()
    for df in (users_df, items_df):
        if df is not None:
            found |= set(map(str, df.columns))
    unknown = [name for name in options.declared if name not in found]
    if unknown:
        raise InputError(
            f"expected declared feature column {', '.join(map(repr, unknown))} in the users or "
            f"items table, found columns {', '.join(map(repr, sorted(found))) or 'none'}; "
            "fix the names given to --categorical/--numeric/--multi-valued"
        )


def _fold_counts(df) -> dict[str, dict[str, int]]:
    counts = {}
    for split in SPLITS:
        folds = df[fold_column(split)].to_numpy()
        counts[split] = {"fit": int((folds < VALID).sum()), "valid": int((folds == VALID).sum()),
                         "test": int((folds == TEST).sum())}
    return counts


def _write(directory: Path, prepared: Prepared) -> None:
    id_maps = {name: m.table() for name, m in prepared.id_maps.items() if m.is_string}
    write_prepared(directory, prepared.interactions, prepared.users.to_arrow(),
                   prepared.items.to_arrow(), prepared.schema, id_maps)


@dataclass
class Prepared:
    """Everything `data/` will hold, computed in memory."""

    interactions: Any  # DataFrame, the columns of mstage.data.schema
    users: Table
    items: Table
    id_maps: dict[str, IdMap]
    schema: Schema
    metrics: dict[str, Any]
    warnings: list[str]


def prepare_tables(config: DataConfig, reporter: Reporter = SILENT) -> Prepared:
    """Read, validate, id-map, deduplicate and split the raw tables (config paths resolved)."""
    from mstage.data.split import assign_folds

    options = feats.KindOptions.from_lists(config.categorical, config.numeric,
                                           config.multi_valued, config.ignore, config.multi_sep)
    warnings: list[str] = []
    source = Path(config.interactions).name
    with reporter.task("prepare data", total=len(STEPS)) as task:
        raw = read_interactions(config, warnings)
        users_df = read_entity_table(config, "users", config.user_col, "--user-col")
        items_df = read_entity_table(config, "items", config.item_col, "--item-col")
        _check_declared_exist(options, users_df, items_df)
        task.advance(1, step="read")

        id_maps = {}
        for name, col, df in (("users", config.user_col, users_df),
                              ("items", config.item_col, items_df)):
            sources = [(raw[col], f"column {col!r} of {source}")]
            if df is not None:
                sources.append((df[col], f"column {col!r} of {Path(getattr(config, name)).name}"))
            id_maps[name] = build_id_map(name[:-1], sources)
        user = id_maps["users"].encode(raw[config.user_col])
        item = id_maps["items"].encode(raw[config.item_col])
        task.advance(1, step="ids")

        timestamp, time_unit = to_unix_seconds(raw[config.time_col],
                                               f"column {config.time_col!r} of {source}")
        label = (to_labels(raw[config.label_col], f"column {config.label_col!r} of {source}")
                 if config.label_col else np.ones(len(raw), dtype=np.int8))
        interactions, duplicates = clean_interactions(user, item, timestamp, label)
        del raw, user, item, timestamp, label
        task.advance(1, step="clean")

        interactions = assign_folds(interactions)
        task.advance(1, step="folds")

        tables = {}
        for name, col, df in (("users", config.user_col, users_df),
                              ("items", config.item_col, items_df)):
            used = np.unique(interactions[f"{name[:-1]}_id"].to_numpy())
            where = Path(getattr(config, name)).name if df is not None else name
            tables[name] = build_table(name[:-1], df, col, id_maps[name], used, options, where,
                                       warnings)
        users, items = tables["users"], tables["items"]
        _check_feature_names(users, items)
        task.advance(1, step="features")

    metrics = {
        "input_rows": len(interactions) + duplicates,
        "interactions": len(interactions),
        "positives": int((interactions["label"] == 1).sum()),
        "duplicates_dropped": duplicates,
        "users": len(users.ids),
        "items": len(items.ids),
        "users_with_interactions": users.with_interactions,
        "items_with_interactions": items.with_interactions,
        "uncovered_users": users.uncovered,
        "uncovered_items": items.uncovered,
        "duplicate_user_rows": users.duplicates,
        "duplicate_item_rows": items.duplicates,
        "timestamp_unit": time_unit,
        "first_timestamp": int(interactions["timestamp"].min()),
        "last_timestamp": int(interactions["timestamp"].max()),
        "folds": _fold_counts(interactions),
    }
    schema = Schema(
        user_features=users.features, item_features=items.features,
        has_label=bool(config.label_col),
        counts={k: metrics[k] for k in ("users", "items", "interactions", "positives")},
        string_ids={name: m.is_string for name, m in id_maps.items()},
    )
    return Prepared(interactions, users, items, id_maps, schema, metrics, warnings)


def prepare_data(workspace: Workspace, config: DataConfig,
                 reporter: Reporter = SILENT) -> PrepareResult:
    """Prepare the raw tables into `data/` (published atomically) and save `[data]`.

    Work happens under the workspace lock, so the manifest's build time covers all of it;
    any error or Ctrl-C leaves the previous `data/` and mstage.toml as they were.
    """
    config = resolve_paths(config)
    with workspace.build(Artifact.DATA) as build:
        prepared = prepare_tables(config, reporter)
        _write(build.dir, prepared)
        build.files = {name: Path(getattr(config, name))
                       for name in ("interactions", "users", "items") if getattr(config, name)}
        build.config = as_dict(config)
        build.metrics = prepared.metrics
    save_section(workspace.config_path, "data", config)
    return PrepareResult(config, workspace.path(Artifact.DATA), prepared.metrics,
                         prepared.users.features, prepared.items.features, prepared.warnings)
