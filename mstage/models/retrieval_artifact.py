"""The retrieval artifact's layout: the only module naming its files; their readers and writers.

`workspace/retrieval/` holds `query_tower/` and `item_tower/` (SavedModels),
`query_tower.tflite` (the query tower's LiteRT export, what serving runs), `encoders/`,
`params.json` (tower shapes, the similarity the towers were trained for, training settings),
`item_embeddings.parquet` (`item_id` int64, `embedding` list<float32>, one row per item) and
`validation_candidates.npz` (what the validation-phase model retrieved for the validation
users, with which `train-ranking` chooses the ordering blend). Serving reads the query side
only (`QUERY_FILES`); `build-index` reads the item embeddings.
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
VALIDATION_CANDIDATES = "validation_candidates.npz"
QUERY_TOWER_LITE = "query_tower.tflite"
QUERY_FILES = (QUERY_TOWER_LITE, ENCODERS_DIR, PARAMS_FILE)
"""What serving reads of a retrieval artifact: the query side only."""


@dataclass
class ItemEmbeddings:
    item_ids: np.ndarray  # [n] int64
    embeddings: np.ndarray  # [n, d] float32
    params: dict[str, Any]  # params.json ({} when absent)
    path: Path


@dataclass
class ValidationCandidates:
    """Candidates of the model trained on FIT only, for held-out VALID users: user ids [u],
    item ids [u, n] best first (-1 padded, the users' FIT items excluded), their retrieval
    scores [u, n], and the split whose folds these are."""

    split: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    scores: np.ndarray


def write_validation_candidates(directory: Path, candidates: ValidationCandidates) -> None:
    np.savez(Path(directory) / VALIDATION_CANDIDATES, split=np.array(candidates.split),
             user_ids=candidates.user_ids, item_ids=candidates.item_ids,
             scores=candidates.scores)


def read_validation_candidates(directory: Path) -> ValidationCandidates | None:
    """The artifact's validation candidates; None when it has none (trained without a
    validation phase, or by an earlier mstage)."""
    path = Path(directory) / VALIDATION_CANDIDATES
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            return ValidationCandidates(str(saved["split"]), saved["user_ids"],
                                        saved["item_ids"], saved["scores"])
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"expected validation candidates in {path}, found unreadable data "
                         f"({e}); run `mstage train-retrieval` again") from None


def has_query_tower(directory: Path) -> bool:
    return (Path(directory) / QUERY_TOWER_LITE).is_file()


def read_params(directory: Path) -> dict[str, Any]:
    """params.json of a model artifact, retrieval or ranking ({} when absent); InputError when
    unreadable."""
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
