"""Checks that an item catalog (ids + embeddings) can be indexed: finite, unique, one dimension.

Faiss accepts NaN vectors and duplicate ids silently and then returns garbage neighbours, so
every index build goes through `check_catalog` first.
"""

from __future__ import annotations

import hashlib

import numpy as np

from mstage.columns import PAD
from mstage.errors import InputError

_EXAMPLES = 5


def _examples(values: np.ndarray) -> str:
    shown = ", ".join(str(v) for v in values[:_EXAMPLES])
    return shown + (", ..." if len(values) > _EXAMPLES else "")


def check_catalog(
    embeddings: np.ndarray, item_ids: np.ndarray, source: str = "item embeddings"
) -> tuple[np.ndarray, np.ndarray]:
    """Validated (embeddings [n, d] float32 C-contiguous, item_ids [n] int64), or InputError.

    `source` names where the arrays came from, so messages point at the right file.
    """
    embeddings = np.asarray(embeddings)
    item_ids = np.asarray(item_ids)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise InputError(
            f"expected {source} of shape (n_items, dim) with n_items, dim > 0, "
            f"found shape {tuple(embeddings.shape)}; run `mstage train-retrieval`"
        )
    if item_ids.shape != (embeddings.shape[0],):
        raise InputError(
            f"expected one item id per embedding row ({embeddings.shape[0]}) in {source}, "
            f"found ids of shape {tuple(item_ids.shape)}"
        )
    if not np.issubdtype(item_ids.dtype, np.integer):
        raise InputError(f"expected int64 item ids in {source}, found dtype {item_ids.dtype}")
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise InputError(f"expected float embeddings in {source}, found dtype {embeddings.dtype}")
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    item_ids = np.ascontiguousarray(item_ids, dtype=np.int64)

    finite = np.isfinite(embeddings)
    if not finite.all():
        bad_rows = ~finite.all(axis=1)
        raise InputError(
            f"expected finite values in {source}, found {int((~finite).sum())} NaN/inf values "
            f"in {int(bad_rows.sum())} of {len(item_ids)} items "
            f"(item ids {_examples(item_ids[bad_rows])}); "
            "retrain with `mstage train-retrieval`"
        )
    unique, counts = np.unique(item_ids, return_counts=True)
    if len(unique) != len(item_ids):
        dup = unique[counts > 1]
        raise InputError(
            f"expected unique item ids in {source}, found {len(dup)} ids repeated "
            f"({len(item_ids) - len(unique)} extra rows; e.g. {_examples(dup)}); "
            "deduplicate the items and rerun `mstage train-retrieval`"
        )
    if (item_ids == PAD).any():
        raise InputError(
            f"expected item ids other than {PAD} in {source} (faiss uses it to mark "
            f"'no result'), found item id {PAD}; remap that item's id in the input data"
        )
    return embeddings, item_ids


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """sha256 (first 16 hex digits) of the arrays' bytes: ties an index to its embeddings."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(str(a.shape).encode())
        digest.update(np.ascontiguousarray(a).data)
    return digest.hexdigest()[:16]
