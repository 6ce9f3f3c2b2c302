"""Rich tables for recommendations: one per user, plus the per-stage table of `--explain`.

Kept apart from the command so `mstage recommend` stays a thin parser of options, and so
both the in-process and the `--server` paths print the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.table import Table

FALLBACK_MARK = "fallback (popular items)"


def _cell(value: Any) -> str:
    """Attribute values as text: lists joined with |, missing values as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:g}"
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return "|".join(str(v) for v in value) or "-"
    return str(value)


def recommendations_table(answer: dict[str, Any], attributes: Any | None = None) -> Table:
    """One user's list: rank, item id, score, (retrieval score, ranking score with --explain)
    and the item's attributes (a DataFrame with `item_id` + features, or None)."""
    title = f"user {answer['user_id']}"
    if answer["fallback"]:
        title += f"  [yellow]{FALLBACK_MARK}[/]"
    table = Table(title=title, title_justify="left")
    explain = {e["item_id"]: e for e in answer.get("explain") or []}
    columns = ["rank", "item_id", "score"]
    if explain:
        columns += ["retrieval score", "ranking score"]
    features: list[str] = []
    by_item: dict[Any, Any] = {}
    if attributes is not None and len(attributes):
        features = [c for c in attributes.columns if c != "item_id"]
        by_item = {row["item_id"]: row for _, row in attributes.iterrows()}
    for column in columns + features:  # ids and scores never truncate; attributes may fold
        numeric = column in columns
        table.add_column(column, justify="right" if numeric else "left", no_wrap=numeric,
                         overflow="fold", min_width=len(column) if numeric else None)
    for rank, (item, score) in enumerate(zip(answer["item_ids"], answer["scores"],
                                             strict=True), start=1):
        row = [str(rank), str(item), f"{score:.4f}"]
        if explain:
            e = explain.get(item, {})
            row += [f"{e['retrieval_score']:.4f}" if "retrieval_score" in e else "-",
                    f"{e['ranking_score']:.4f}" if "ranking_score" in e else "-"]
        attrs = by_item.get(item)
        row += [_cell(attrs[f]) if attrs is not None else "-" for f in features]
        table.add_row(*row)
    if not answer["item_ids"]:
        table.caption = "no items"
    return table


def stages_table(stages: Sequence[dict[str, Any]], users: int) -> Table:
    """Per stage: candidates in and out (summed over the batch) and wall time."""
    table = Table(title=f"stages ({users} user{'s' if users != 1 else ''} in the batch)",
                  title_justify="left")
    for column in ("stage", "items in", "items out", "ms"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for s in stages:
        table.add_row(s["name"], str(s["items_in"]), str(s["items_out"]),
                      f"{s['seconds'] * 1000:.2f}")
    return table
