"""`mstage prepare-data`: raw tables -> the prepared-data artifact (workspace/data/)."""

from __future__ import annotations

import typer

from mstage.cli.app import command, session, table


def _names(text: str | None) -> list[str] | None:
    """'a, b' -> ['a', 'b']; None when the option was not given ('' clears the list)."""
    if text is None:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def _path(text: str | None) -> str | None:
    """An absolute path; '' clears a path saved in mstage.toml."""
    if not text:
        return text
    from pathlib import Path

    return str(Path(text).expanduser().resolve())


@command("prepare-data")
def prepare_data(
    interactions: str = typer.Option(
        None, "--interactions", metavar="FILE",
        help="Interactions (.parquet/.pq/.csv/.csv.gz): one row per event. "
             "Defaults to the file saved in mstage.toml."),
    users: str = typer.Option(None, "--users", metavar="FILE",
                              help="Users table: the user id column plus user features."),
    items: str = typer.Option(None, "--items", metavar="FILE",
                              help="Items table: the item id column plus item features."),
    user_col: str = typer.Option(None, "--user-col", metavar="COL",
                                help="User id column (default user_id)."),
    item_col: str = typer.Option(None, "--item-col", metavar="COL",
                                help="Item id column (default item_id)."),
    time_col: str = typer.Option(
        None, "--time-col", metavar="COL",
        help="Time column: unix s/ms/us/ns or ISO 8601 (default timestamp)."),
    label_col: str = typer.Option(
        None, "--label-col", metavar="COL",
        help="0/1 click column; without it every row is a positive ('' to unset)."),
    categorical: str = typer.Option(None, "--categorical", metavar="A,B",
                                    help="Feature columns to treat as categorical."),
    numeric: str = typer.Option(None, "--numeric", metavar="A,B",
                                help="Feature columns to treat as numeric (float64)."),
    multi_valued: str = typer.Option(None, "--multi-valued", metavar="A,B",
                                     help="Feature columns holding separated lists of values."),
    ignore: str = typer.Option(None, "--ignore", metavar="A,B",
                               help="Columns of the users/items tables to leave out."),
    multi_sep: str = typer.Option(None, "--multi-sep", metavar="SEP",
                                  help="Separator inside multi-valued cells (default |)."),
) -> None:
    """Validate, id-map and split raw interactions (+ users/items tables) into workspace/data/.

    Options are saved in mstage.toml and reused when not given (docs/prepare-data.md).
    """
    from mstage.config import override
    from mstage.data.ingest import prepare_data as run_prepare

    s = session()
    config = override(
        s.config.data, interactions=_path(interactions), users=_path(users), items=_path(items),
        user_col=user_col, item_col=item_col, time_col=time_col, label_col=label_col,
        categorical=_names(categorical), numeric=_names(numeric),
        multi_valued=_names(multi_valued), ignore=_names(ignore), multi_sep=multi_sep,
    )
    result = run_prepare(s.workspace, config, s.progress())
    for warning in result.warnings:
        s.warn(warning)
    payload = {
        "data": str(result.path),
        "metrics": result.metrics,
        "user_features": [{"name": f.name, "kind": f.kind} for f in result.user_features],
        "item_features": [{"name": f.name, "kind": f.kind} for f in result.item_features],
        "warnings": result.warnings,
    }
    s.emit(payload, lambda console: _render(console, payload))


def _render(console, payload: dict) -> None:
    m = payload["metrics"]
    console.print(table(f"prepared data in {payload['data']}", ["", "count"], [
        ("interactions", m["interactions"]),
        ("positives", m["positives"]),
        ("users (with interactions)", f"{m['users']} ({m['users_with_interactions']})"),
        ("items (with interactions)", f"{m['items']} ({m['items_with_interactions']})"),
        ("duplicate events dropped", m["duplicates_dropped"]),
        ("ids missing from users / items table", f"{m['uncovered_users']} / "
                                                 f"{m['uncovered_items']}"),
    ]))
    console.print(table("folds", ["split", "fit", "valid", "test"],
                        [(split, f["fit"], f["valid"], f["test"])
                         for split, f in m["folds"].items()]))
    for side in ("user", "item"):
        features = payload[f"{side}_features"]
        listed = ", ".join(f"{f['name']} ({f['kind']})" for f in features) or "none"
        console.print(f"{side} features: {listed}", highlight=False)
