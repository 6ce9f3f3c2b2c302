"""The retrieval artifact's layout: the only module naming its files; their readers and writers.

`workspace/retrieval/` holds `query_tower/` and `item_tower/` (SavedModels), `encoders/`,
`params.json` (tower shapes, the similarity the towers were trained for, training settings)
and `item_embeddings.parquet` (`item_id` int64, `embedding` list<float32>, one row per item).
Serving reads the query side only (`QUERY_FILES`); `build-index` reads the item embeddings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mstage.errors import ArtifactMissing, InputError

QUERY_TOWER = "query_tower"
ITEM_TOWER = "item_tower"
ENCODERS_DIR = "encoders"
PARAMS_FILE = "params.json"
ITEM_EMBEDDINGS = "item_embeddings.parquet"
QUERY_FILES = (QUERY_TOWER, ENCODERS_DIR, PARAMS_FILE)
"""What serving reads of a retrieval artifact: the query side only."""


@dataclass
class ItemEmbeddings:
    item_ids: np.ndarray  # [n] int64
    embeddings: np.ndarray  # [n, d] float32
    params: dict[str, Any]  # params.json ({} when absent)
    path: Path


def has_query_tower(directory: Path) -> bool:
    return (Path(directory) / QUERY_TOWER).is_dir()


def read_params(directory: Path) -> dict[str, Any]:
    """params.json of a retrieval artifact ({} when absent); InputError when unreadable."""
    path = Path(directory) / PARAMS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"expected JSON in {path}, found an error: {e}") from None


def write_item_embeddings(directory: Path, item_ids: np.ndarray, embeddings: np.ndarray) -> None:
    """Write `item_embeddings.parquet`: ids [n] and float32 embeddings [n, d]."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(np.asarray(embeddings, np.float32).reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1]).cast(
        pa.list_(pa.float32()))
    table = pa.table({"item_id": pa.array(np.asarray(item_ids, np.int64)), "embedding": column})
    pq.write_table(table, Path(directory) / ITEM_EMBEDDINGS)


def read_item_embeddings(directory: Path) -> ItemEmbeddings:
    """Item ids, embeddings and params of a retrieval artifact (values not yet validated)."""
    path = Path(directory) / ITEM_EMBEDDINGS
    if not path.is_file():
        raise ArtifactMissing(
            f"expected item embeddings at {path}, found nothing; run `mstage train-retrieval`"
        )
    table = read_parquet(path, ["item_id", "embedding"])
    ids = table.column("item_id").to_numpy()
    return ItemEmbeddings(ids, embedding_matrix(table, path), read_params(directory), path)


def read_parquet(path: Path, columns: list[str]):
    """The pyarrow table at `path`; InputError when unreadable or lacking `columns`."""
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


def embedding_matrix(table, path: Path) -> np.ndarray:
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
