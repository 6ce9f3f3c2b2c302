"""A tiny prepared-data artifact for feature-store tests, small enough to check by hand.

Interactions (user, item, timestamp, label):
    user 1: 10@100 +, 11@200 +, 12@300 - (label 0), 10@350 + (a repeat)
    user 2: 10@150 +, 13@250 +
    user 3: 11@400 +
    user 4: none (a user without interactions)
So recent_items: 1 -> [10, 11], 2 -> [13, 10], 3 -> [11], 4 -> [];
popularity (positives per item): 10 -> 3, 11 -> 2, 12 -> 0, 13 -> 1; snapshot time 400.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

USER_FEATURES = [("age_group", "categorical"), ("gender", "categorical"),
                 ("region", "categorical")]
ITEM_FEATURES = [("category", "categorical"), ("brand", "categorical"), ("price", "numeric"),
                 ("in_stock", "numeric"), ("tags", "multi")]


def tables():
    """(interactions, users, items) DataFrames following mstage/data/schema.py."""
    import pandas as pd

    interactions = pd.DataFrame({
        "user_id": np.array([1, 1, 1, 1, 2, 2, 3], dtype=np.int64),
        "item_id": np.array([10, 11, 12, 10, 10, 13, 11], dtype=np.int64),
        "timestamp": np.array([100, 200, 300, 350, 150, 250, 400], dtype=np.int64),
        "label": np.array([1, 1, 0, 1, 1, 1, 1], dtype=np.int8),
        "fold_user_temporal": np.zeros(7, dtype=np.int8),
        "fold_global": np.array([0, 0, 0, 2, 0, 2, 2], dtype=np.int8),
    })
    users = pd.DataFrame({
        "user_id": np.array([1, 2, 3, 4], dtype=np.int64),
        "age_group": ["18-24", None, "35-44", "25-34"],
        "gender": ["f", "m", "f", "m"],
        "region": ["north", "south", "east", "west"],
    })
    items = pd.DataFrame({
        "item_id": np.array([10, 11, 12, 13], dtype=np.int64),
        "category": ["books", "music", "books", "games"],
        "brand": ["acme", "zeta", None, "acme"],
        "price": [1.5, np.nan, 3.0, 4.25],
        "in_stock": [1.0, 0.0, 1.0, 1.0],
        "tags": [["new", "sale"], [], None, ["sale"]],
    })
    return interactions, users, items


def publish_prepared(workspace_root: Path) -> None:
    """Publish the tables above as the workspace's `data` artifact."""
    from mstage.data.schema import Feature, Schema, write_prepared
    from mstage.workspace import Artifact, Workspace

    interactions, users, items = tables()
    with Workspace(workspace_root).build(Artifact.DATA) as b:
        write_prepared(b.dir, interactions, users, items, Schema(
            user_features=[Feature(n, k) for n, k in USER_FEATURES],
            item_features=[Feature(n, k) for n, k in ITEM_FEATURES],
            has_label=True,
            counts={"users": 4, "items": 4, "interactions": 7},
        ))
