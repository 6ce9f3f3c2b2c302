"""A tiny prepared data set with a known answer, for retrieval tests.

Users and items fall into GROUPS clusters; a user interacts with items of its own cluster
(popular ones more often), so popularity over the whole catalog is a weak baseline and a
model that learns the clusters ranks well. Features carry the cluster (noisily), with a
numeric and a multi-valued column to exercise every encoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GROUPS = 5


def prepared_tables(n_users: int = 150, n_items: int = 150, per_user: int = 12, seed: int = 0):
    """(interactions, users, items, schema) following mstage/data/schema.py."""
    import pandas as pd

    from mstage.data.schema import Feature, Schema
    from mstage.data.split import assign_folds

    rng = np.random.default_rng(seed)
    user_group = rng.integers(0, GROUPS, n_users)
    item_group = np.arange(n_items) % GROUPS
    rows = []
    for u in range(n_users):
        own = np.flatnonzero(item_group == user_group[u])
        weights = 1.0 / (1.0 + np.arange(len(own)))
        picks = rng.choice(own, size=min(per_user, len(own)), replace=False,
                           p=weights / weights.sum())
        for t, i in enumerate(picks):
            rows.append((1000 + u, 5000 + int(i), 1_600_000_000 + 60 * t + u))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    interactions["label"] = np.int8(1)
    interactions = assign_folds(interactions)
    noisy = np.where(rng.random(n_users) < 0.8, user_group, rng.integers(0, GROUPS, n_users))
    users = pd.DataFrame({
        "user_id": 1000 + np.arange(n_users, dtype=np.int64),
        "region": [f"r{g}" for g in noisy],
        "age": rng.normal(35, 10, n_users).round(),
    })
    items = pd.DataFrame({
        "item_id": 5000 + np.arange(n_items, dtype=np.int64),
        "category": [f"c{g}" for g in item_group],
        "price": rng.lognormal(2, 0.5, n_items),
        "tags": [[f"t{g}", f"t{(g + 1) % GROUPS}"] if i % 3 else [f"t{g}"]
                 for i, g in enumerate(item_group)],
    })
    items.loc[0, "price"] = np.nan
    schema = Schema(
        user_features=[Feature("region", "categorical"), Feature("age", "numeric")],
        item_features=[Feature("category", "categorical"), Feature("price", "numeric"),
                       Feature("tags", "multi")],
        has_label=False,
        counts={"users": n_users, "items": n_items, "interactions": len(interactions)},
    )
    return interactions, users, items, schema


def write_prepared(directory: Path, **kwargs) -> Path:
    """Write the tables into `directory` in the workspace/data/ layout."""
    from mstage.data import schema

    return schema.write_prepared(directory, *prepared_tables(**kwargs))


def publish_prepared(workspace_root: Path, **kwargs) -> None:
    """Publish the data set as the workspace's `data` artifact."""
    from mstage.workspace import Artifact, Workspace

    with Workspace(workspace_root).build(Artifact.DATA) as b:
        write_prepared(b.dir, **kwargs)
