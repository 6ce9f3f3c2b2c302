"""`mstage generate-data`: synthetic impressions with clicks and planted structure."""

from pathlib import Path

import typer

from mstage.cli.app import command, session, table


@command("generate-data")
def generate_data(
    out: Path = typer.Option(..., "--out", help="Directory for interactions/users/items.parquet."),
    users: int = typer.Option(3000, "--users", help="Number of users."),
    items: int = typer.Option(2000, "--items", help="Number of items."),
    interactions: int = typer.Option(120_000, "--interactions",
                                     help="Number of impressions (rows); at least --users."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same files."),
    ctr: float = typer.Option(0.1, "--ctr", help="Target click-through rate, in (0, 1)."),
    save_factors: bool = typer.Option(False, "--save-factors",
                                      help="Also write the true factors to DIR/factors.npz."),
    force: bool = typer.Option(False, "--force",
                               help="Write into a non-empty directory not made by generate-data."),
) -> None:
    """Write Ali-CCP-like impressions with clicks (and user/item tables) to --out."""
    from mstage.config import check_seed
    from mstage.data.synthetic import generate

    check_seed("--seed", seed)
    s = session()
    summary = generate(out, users, items, interactions, seed, target_ctr=ctr,
                       with_factors=save_factors, force=force, reporter=s.progress())
    result = vars(summary)

    def render(console):
        console.print(table(
            f"generated {summary.out_dir}", ["users", "items", "impressions", "clicks", "CTR",
                                             "seed", "seconds"],
            [(summary.users, summary.items, summary.interactions, summary.clicks, summary.ctr,
              summary.seed, f"{summary.seconds:.1f}")],
        ))
        console.print(f"files: {', '.join(summary.files)}")
        console.print(f"next: mstage prepare-data --interactions {out}/interactions.parquet "
                      f"--users {out}/users.parquet --items {out}/items.parquet --label-col click")

    s.emit(result, render)
