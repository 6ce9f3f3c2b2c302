"""`push_events`: new interactions -> each user's `recent_items` in the online store, live.

No retraining: the query tower reads `recent_items` per request, so what a user just did moves
their query at once, and filtering stops recommending it. Events name users and items by the
user's own ids (the `[data]` column names); each user's new positive items, most recent first,
go in front of the items the store holds, deduplicated and cut to the store's width, written
through Feast's `write_to_online_store` with the user's other features unchanged. The store
copy inside a built Triton model repository is written too (a running server reads it).
"""

from __future__ import annotations

import datetime as dt
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mstage.columns import PAD
from mstage.config import DataConfig
from mstage.errors import InputError, MstageError, UsageError
from mstage.features.feast_io import feast_output_to
from mstage.features.repo import USER_VIEW
from mstage.features.tables import EVENT_TIMESTAMP, RECENT_ITEMS, USER_ID
from mstage.progress import SILENT, Reporter
from mstage.workspace import Artifact, Workspace

LOG_NAME = "push-events.log"
STDIN = "-"


class PushError(MstageError):
    """Feast failed to write the events into an online store; exit 1."""


@dataclass
class Events:
    """Positive events on catalog items, in internal ids, and what was left out."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    rows: int
    negatives: int = 0
    not_in_catalog: int = 0


@dataclass
class PushResult:
    users: int
    events: int
    rows: int
    skipped: dict[str, int]
    stores: list[str]
    features_state: str
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"users_updated": self.users, "events_used": self.events, "rows": self.rows,
                "skipped": self.skipped, "stores": self.stores,
                "features_state": self.features_state, "seconds": self.seconds,
                "warnings": self.warnings}


def event_columns(config: DataConfig) -> list[str]:
    """The columns an events table needs: user, item, time and (when set) label."""
    return [c for c in (config.user_col, config.item_col, config.time_col, config.label_col) if c]


def read_events(source: str | Path, config: DataConfig, stdin: bytes | None = None):
    """The events table (pandas) of a CSV/parquet file, or of CSV bytes read from stdin (`-`);
    InputError naming the missing columns and those found."""
    from mstage.data.readers import read_columns, read_table, require_file

    wanted = event_columns(config)
    ids = (config.user_col, config.item_col)
    if str(source) == STDIN:
        df = _read_csv_bytes(stdin or b"", ids)
        where = "stdin"
        found = [str(c) for c in df.columns]
    else:
        path = Path(source)
        require_file(path, "an events file (CSV or parquet)",
                     "pass an existing file or - for CSV on stdin")
        where = str(path)
        found = read_columns(path, "events")
        df = None
    missing = [c for c in wanted if c not in found]
    if missing:
        raise InputError(f"expected columns {wanted} (the workspace's [data] mapping) in "
                         f"{where}, found {found}; missing {missing}")
    if df is None:
        df = read_table(Path(source), "events", wanted, text_columns=ids)
    return df[wanted]


def _read_csv_bytes(data: bytes, text_columns: tuple[str, ...]):
    import pyarrow as pa

    from mstage.data.readers import read_csv

    if not data.strip():
        raise InputError("expected CSV events on stdin (a header line, then rows), found "
                         "nothing; pipe them in or pass a file")
    try:
        return read_csv(io.BytesIO(data), None, text_columns)
    except (pa.ArrowInvalid, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"expected readable CSV events on stdin, found an error: {first}; "
                         "check the input") from None


def _internal(series, id_map, kind: str, where: str) -> np.ndarray:
    """int64 internal ids of a column of the user's ids (text ids never seen -> 0), read by
    the id contract's own rules (`mstage.data.ids`)."""
    from mstage.data.ids import integer_ids

    column = f"column {series.name!r} of {where}"
    if series.isna().any():
        row = int(np.flatnonzero(series.isna().to_numpy())[0])
        raise InputError(f"expected a {kind} id in every row of {column}, found a missing one "
                         f"in data row {row + 1}; fix that row")
    if id_map.is_string:
        return id_map.to_internal([str(v) for v in series.to_numpy()])
    ints = integer_ids(series, kind, column)
    if ints is None:  # text in a workspace of integer ids
        try:
            ints = np.asarray([id_map.parse(str(v)) for v in series.to_numpy()], np.int64)
        except UsageError as e:
            raise InputError(f"{e} in {column}") from None
    if (ints == PAD).any():
        raise InputError(f"expected {kind} ids other than {PAD} in {column}, found {PAD}")
    return ints


def to_events(df, ws: Workspace, config: DataConfig, where: str) -> Events:
    """Translate ids, drop label-0 rows and items outside the catalog; InputError for a text
    user id prepare-data never saw (no internal id exists for it)."""
    from mstage.data.ids import UNKNOWN, IdMap
    from mstage.data.labels import to_labels
    from mstage.data.timestamps import to_unix_seconds
    from mstage.features.online import exported_items

    rows = len(df)
    if config.label_col:
        labels = to_labels(df[config.label_col], f"column {config.label_col!r} of {where}")
        negatives = int((labels == 0).sum())
        df = df[labels == 1]
    else:
        negatives = 0
    data = ws.require(Artifact.DATA)
    users = IdMap.load(data, "users")
    items = IdMap.load(data, "items")
    user_ids = _internal(df[config.user_col], users, "user", where)
    if users.is_string and (user_ids == UNKNOWN).any():
        raw = df[config.user_col].to_numpy()[np.flatnonzero(user_ids == UNKNOWN)[0]]
        raise InputError(f"expected user ids known to this workspace's data (text ids get an "
                         f"internal id at `mstage prepare-data`), found {str(raw)!r} in {where}; "
                         "drop its rows, or add the user and rerun prepare-data")
    item_ids = _internal(df[config.item_col], items, "item", where)
    time_col = df[config.time_col]
    if time_col.isna().any():
        raise InputError(f"expected a timestamp in every row of column {config.time_col!r} of "
                         f"{where}, found {int(time_col.isna().sum())} missing; fix those rows")
    timestamps = (to_unix_seconds(time_col, f"column {config.time_col!r} of {where}")[0]
                  if len(df) else np.zeros(0, dtype=np.int64))
    catalog = exported_items(ws.require(Artifact.FEATURES))["item_id"].to_numpy(np.int64)
    known = np.isin(item_ids, catalog)  # a text id never seen (internal 0) is in no catalog
    return Events(user_ids[known], item_ids[known], timestamps[known], rows, negatives,
                  int((~known).sum()))


def merged_recent(events: Events, current: dict[int, np.ndarray], width: int
                  ) -> dict[int, list[int]]:
    """Per user: new items (latest first; equal times put the larger item id first, as the
    export does), then the current ones, each item once, at most `width`."""
    order = np.lexsort((-events.item_ids, -events.timestamps, events.user_ids))
    out: dict[int, list[int]] = {}
    for user, item in zip(events.user_ids[order], events.item_ids[order], strict=True):
        out.setdefault(int(user), []).append(int(item))
    for user, new in out.items():
        old = [int(i) for i in current.get(user, ()) if i != PAD]
        out[user] = list(dict.fromkeys(new + old))[:width]
    return out


def user_rows(online, recent: dict[int, list[int]], stamp: dt.datetime):
    """The `user_features` rows to write: every feature as the store holds it (missing values
    for users it does not know), the new `recent_items`, and the event timestamp."""
    import pandas as pd

    ids = np.fromiter(recent, dtype=np.int64, count=len(recent))
    current = online.users(ids)
    found = current["found"]
    frame = {USER_ID: ids}
    for f in online.spec.user_features:
        if f.name == RECENT_ITEMS:
            frame[f.name] = [np.asarray(recent[int(u)], dtype=np.int64) for u in ids]
        elif f.kind == "numeric":
            frame[f.name] = np.where(found, current[f.name], np.nan)
        elif f.kind == "multi":
            frame[f.name] = [list(v) if ok else [] for v, ok in zip(current[f.name], found,
                                                                     strict=True)]
        else:
            frame[f.name] = [v if ok else None for v, ok in zip(current[f.name], found,
                                                               strict=True)]
    frame[EVENT_TIMESTAMP] = pd.Timestamp(stamp)
    return pd.DataFrame(frame)


def _current_recent(online, user_ids: np.ndarray) -> dict[int, np.ndarray]:
    read = online.users(user_ids)
    return {int(u): row for u, row, ok in zip(user_ids, read[RECENT_ITEMS], read["found"],
                                              strict=True) if ok}


def push_events(ws: Workspace, df, config: DataConfig, where: str,
                copies: list[Path] = (), reporter: Reporter = SILENT) -> PushResult:
    """Write the events' new positive items into `recent_items` of the workspace's features
    artifact and of each store copy in `copies` (a model repository's), under the lock."""
    from mstage.features.online import OnlineFeatures

    started = time.perf_counter()
    events = to_events(df, ws, config, where)
    warnings = []
    if events.not_in_catalog:
        warnings.append(f"{events.not_in_catalog} event(s) name items not in the catalog "
                        "(the exported items); skipped")
    features = ws.require(Artifact.FEATURES)
    directories = [features] + [Path(c) for c in copies if Path(c).is_dir()]
    log_path = ws.logs_dir / LOG_NAME
    users = np.unique(events.user_ids)
    with ws.lock("mstage push-events"):
        if len(users):
            reporter.log(f"importing Feast; its own output goes to {log_path}")
            with feast_output_to(log_path):
                source = OnlineFeatures.open(features)
                recent = merged_recent(events, _current_recent(source, users),
                                       source.spec.recent_items)
                stamp = _stamp(features)
                rows = user_rows(source, recent, stamp)
                for directory in directories:
                    _write(directory, rows, log_path)
    state = ws.state(Artifact.FEATURES)[0]
    return PushResult(len(users), len(events.user_ids), events.rows,
                      {"negative_label": events.negatives,
                       "not_in_catalog": events.not_in_catalog},
                      [str(d) for d in directories], state,
                      round(time.perf_counter() - started, 3), warnings)


def _stamp(features: Path) -> dt.datetime:
    """Now, and always after the export's snapshot time (so a Redis store, which keeps the
    later of two writes, takes this one)."""
    import pandas as pd

    from mstage.features.online import EXPORTED_ITEMS

    exported = pd.read_parquet(features / EXPORTED_ITEMS, columns=[EVENT_TIMESTAMP])
    as_of = (exported[EVENT_TIMESTAMP].max().to_pydatetime() if len(exported)
             else dt.datetime.fromtimestamp(1, dt.UTC))
    now = dt.datetime.now(dt.UTC)
    return max(now, as_of + dt.timedelta(seconds=1))


def _write(directory: Path, rows, log_path: Path) -> None:
    from feast import FeatureStore

    try:
        FeatureStore(repo_path=str(directory)).write_to_online_store(USER_VIEW, rows)
    except Exception as e:
        text = " ".join(str(e).split())[:300]
        raise PushError(f"expected Feast to write {len(rows)} user(s) into the online store of "
                        f"{directory}, found {type(e).__name__}: {text}; see {log_path}, fix "
                        "the store and rerun `mstage push-events`") from e
