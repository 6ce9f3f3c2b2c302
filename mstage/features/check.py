"""Read a sample of users and items back through the online store and compare with the source.

Materialize can drop or mangle values silently (types, nulls, empty lists); reading a sample
back through the same `OnlineFeatures` the pipeline uses proves the store serves the rows the
offline tables hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mstage.data.schema import Feature
from mstage.features.online import OnlineFeatures
from mstage.features.tables import ITEM_ID, USER_ID, FeatureTables


@dataclass(frozen=True)
class ReadBack:
    users_checked: int
    users_matched: int
    items_checked: int
    items_matched: int
    first_mismatch: str = ""

    @property
    def ok(self) -> bool:
        return (self.users_matched == self.users_checked
                and self.items_matched == self.items_checked)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _same(kind: str, served, source, width: int) -> bool:
    if kind == "numeric":
        return bool(np.isnan(served)) if _missing(source) else float(served) == float(source)
    if kind == "multi":
        return list(served) == ([] if source is None else list(source))
    if kind == "item_ids":
        expected = np.full(width, -1, dtype=np.int64)
        expected[:len(source)] = source[:width]
        return bool(np.array_equal(served, expected))
    return served == (None if _missing(source) else source)


def _compare(served: dict[str, np.ndarray], rows, key: str, features: list[Feature],
             width: int) -> tuple[int, str]:
    matched, first = 0, ""
    for i, source in enumerate(rows.to_dict("records")):
        bad = [] if served["found"][i] else ["(not found)"]
        bad += [f.name for f in features
                if served["found"][i] and not _same(f.kind, served[f.name][i], source[f.name],
                                                    width)]
        matched += not bad
        if bad and not first:
            first = f"{key} {source[key]}: {', '.join(bad)}"
    return matched, first


def read_back(online: OnlineFeatures, tables: FeatureTables, sample: int,
              seed: int = 0) -> ReadBack:
    """Compare up to `sample` random users and items (seeded) with their source rows."""
    rng = np.random.default_rng(seed)
    width = online.spec.recent_items
    results = []
    for table, key, features, reader in (
        (tables.users, USER_ID, tables.user_features, online.users),
        (tables.items, ITEM_ID, tables.item_features, online.items),
    ):
        rows = table.iloc[np.sort(rng.choice(len(table), min(sample, len(table)), replace=False))]
        served = reader(rows[key].to_numpy())
        results.append((len(rows), *_compare(served, rows, key, features, width)))
    (nu, mu, fu), (ni, mi, fi) = results
    return ReadBack(nu, mu, ni, mi, fu or fi)
