"""What an index is built from: the retrieval artifact's item embeddings and metric, and
query embeddings a user passes to `--queries` (a .parquet `embedding` column or a .npy file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mstage.errors import InputError
from mstage.index.spec import DEFAULT_METRIC, canonical_metric
from mstage.models.retrieval_artifact import (
    PARAMS_FILE,
    ItemEmbeddings,
    embedding_matrix,
    read_item_embeddings,
    read_parquet,
)

METRIC_KEYS = ("metric", "similarity")  # train-retrieval writes "similarity"


def metric_of(embeddings: ItemEmbeddings) -> str:
    """The metric the towers were trained for (params.json; default inner product)."""
    for key in METRIC_KEYS:
        if key in embeddings.params:
            return canonical_metric(embeddings.params[key],
                                    f"{embeddings.path.parent / PARAMS_FILE} key {key!r}")
    return DEFAULT_METRIC


def item_source(retrieval_dir: Path) -> tuple[ItemEmbeddings, str]:
    """The retrieval artifact's item embeddings and their metric."""
    embeddings = read_item_embeddings(retrieval_dir)
    return embeddings, metric_of(embeddings)


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
    return embedding_matrix(read_parquet(path, ["embedding"]), path)
