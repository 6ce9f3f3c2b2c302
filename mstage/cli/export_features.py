"""`mstage export-features`: the Feast feature store for user and item features."""

import typer

from mstage.cli.app import command, session, table


@command("export-features")
def export_features(
    online_store: str = typer.Option(
        None, "--online-store",
        help="'sqlite' (a file inside workspace/features) or 'redis://HOST:PORT'. "
        "Default: features.online_store in mstage.toml, else sqlite.",
    ),
    recent_items: int = typer.Option(
        None, "--recent-items", help="How many recent positive items per user to serve. "
        "Default: features.recent_items in mstage.toml, else 50.",
    ),
    check_sample: int = typer.Option(
        100, "--check-sample", min=1,
        help="Users and items read back from the online store to verify it.",
    ),
) -> None:
    """Write a Feast repository to workspace/features, apply it and materialize it online."""
    from mstage.config import override
    from mstage.features.store import export_features as run_export

    s = session()
    config = override(s.config.features, online_store=online_store, recent_items=recent_items)
    result = run_export(s.workspace, config, s.progress(), sample=check_sample)
    for warning in result.warnings:
        s.warn(warning)
    payload = result.as_dict()

    def render(console):
        c = result.checks
        console.print(table(
            f"feature store {result.directory}",
            ["what", "value"],
            [("online store", result.online_store),
             ("feast project", result.project),
             ("users", result.users),
             ("items", result.items),
             ("recent items per user", result.recent_items),
             ("users read back", f"{c['users_matched']}/{c['users_checked']} match"),
             ("items read back", f"{c['items_matched']}/{c['items_checked']} match"),
             ("materialize seconds", result.seconds["materialize"])],
        ))

    s.emit(payload, render)
