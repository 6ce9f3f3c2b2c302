"""Which query embeddings tune the index: the users' own (via the query tower), items, or a file.

Recall depends on where queries fall: item embeddings sit inside their clusters, where few IVF
lists hold all the neighbours, so tuning on them understates the nprobe that user queries
need (2-4x on clustered data, docs/build-index.md). `auto` therefore embeds a sample of the
prepared users with the retrieval artifact's query tower, and only falls back to items when
there is no tower or no user table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mstage.errors import MstageError
from mstage.index.source import read_query_embeddings
from mstage.models.retrieval_artifact import has_query_tower
from mstage.progress import Reporter
from mstage.workspace import Artifact, Workspace

SOURCES = ("auto", "users", "items")


@dataclass
class TuningQueries:
    embeddings: np.ndarray | None  # [m, d] float32; None = sample the item embeddings
    source: str  # "users", "items" or the file's path
    file: Path | None = None


def _user_embeddings(ws: Workspace, size: int, seed: int) -> np.ndarray:
    """Query-tower embeddings [min(size, n_users), d] of a random sample of prepared users,
    each with their latest items as history (what the online store would hold)."""
    from mstage.data.schema import PreparedData
    from mstage.models.history import history_of
    from mstage.models.two_tower import load_query_tower

    tower = load_query_tower(ws.require(Artifact.RETRIEVAL))
    data = PreparedData(ws.require(Artifact.DATA))
    users = data.users
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(users), size=min(size, len(users)), replace=False))
    history = None
    if tower.history > 0:
        positives = data.positives()
        latest = history_of(positives["user_id"].to_numpy(), positives["item_id"].to_numpy(),
                            tower.history)
        history = latest(users["user_id"].to_numpy(np.int64)[rows])
    return tower({column: users[column].to_numpy()[rows] for column in users.columns}, history)


def tuning_queries(ws: Workspace, choice: str, size: int, seed: int,
                   reporter: Reporter) -> TuningQueries:
    """Resolve `--queries auto|users|items|PATH` into the embeddings to tune on."""
    if choice == "items":
        return TuningQueries(None, "items")
    if choice not in SOURCES:
        path = Path(choice)
        return TuningQueries(read_query_embeddings(path), str(path), path)
    has_tower = has_query_tower(ws.path(Artifact.RETRIEVAL))
    if choice == "auto" and not (has_tower and ws.exists(Artifact.DATA)):
        return TuningQueries(None, "items")
    try:
        with reporter.task("embed users for tuning", total=1) as task:
            embeddings = _user_embeddings(ws, size, seed)
            task.advance(1)
    except MstageError as e:
        if choice == "users":
            raise
        reporter.log(f"could not embed users ({e}); tuning on item embeddings instead")
        return TuningQueries(None, "items")
    return TuningQueries(embeddings, "users")
