"""Read the retrieval artifact's item embeddings and metric, and optional query embeddings.

`workspace/retrieval/item_embeddings.parquet` holds `item_id` int64 and `embedding`
list<float32> (one row per item); `params.json` may name the metric the model trained with
(key `metric` or `similarity`; default inner product).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mstage.errors import ArtifactMissing, InputError
from mstage.index.spec import DEFAULT_METRIC, canonical_metric

ITEM_EMBEDDINGS = "item_embeddings.parquet"
PARAMS = "params.json"
METRIC_KEYS = ("metric", "similarity")  # train-retrieval writes "similarity"


@dataclass
class ItemEmbeddings:
    item_ids: np.ndarray  # [n] int64
    embeddings: np.ndarray  # [n, d] float32
    metric: str
    path: Path


def _embedding_matrix(table, path: Path) -> np.ndarray:
    """The `embedding` list column as [n, d] float32; InputError on nulls or ragged rows."""
    import pyarrow.compute as pc

    column = table.column("embedding").combine_chunks()
    if column.null_count:
        raise InputError(
            f"expected an embedding for every item in {path}, found {column.null_count} "
            "missing; retrain with `mstage train-retrieval`"
        )
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    lengths = np.unique(pc.list_value_length(column).to_numpy())
    if len(lengths) != 1:
        raise InputError(
            f"expected embeddings of one dimension in {path}, found lengths "
            f"{', '.join(str(v) for v in lengths[:5])}; retrain with `mstage train-retrieval`"
        )
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32, copy=False).reshape(len(column), int(lengths[0]))


def _read_parquet(path: Path, columns: list[str]):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise InputError(f"expected a parquet file at {path}, found unreadable data: {e}") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(
            f"expected columns {', '.join(columns)} in {path}, found "
            f"{', '.join(table.column_names) or 'none'}; retrain with `mstage train-retrieval`"
        )
    return table


def read_metric(retrieval_dir: Path) -> str:
    path = Path(retrieval_dir) / PARAMS
    if not path.is_file():
        return DEFAULT_METRIC
    try:
        params = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"expected JSON in {path}, found an error: {e}") from None
    for key in METRIC_KEYS:
        if key in params:
            return canonical_metric(params[key], f"{path} key {key!r}")
    return DEFAULT_METRIC


def read_item_embeddings(retrieval_dir: Path) -> ItemEmbeddings:
    """Item ids, embeddings and metric of a retrieval artifact (unvalidated values)."""
    path = Path(retrieval_dir) / ITEM_EMBEDDINGS
    if not path.is_file():
        raise ArtifactMissing(
            f"expected item embeddings at {path}, found nothing; run `mstage train-retrieval`"
        )
    table = _read_parquet(path, ["item_id", "embedding"])
    ids = table.column("item_id").to_numpy()
    return ItemEmbeddings(ids, _embedding_matrix(table, path), read_metric(retrieval_dir), path)


def read_query_embeddings(path: Path) -> np.ndarray:
    """Query embeddings [m, d] from a parquet file with an `embedding` column, or a .npy file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"expected a query embeddings file at {path}, found nothing; pass an existing "
            ".parquet (column `embedding`) or .npy file to --queries"
        )
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as e:
            raise InputError(f"expected a numeric .npy array in {path}, found: {e}") from None
    return _embedding_matrix(_read_parquet(path, ["embedding"]), path)
