"""`mstage train-retrieval`: train, evaluate and export the two-tower retrieval model."""

from __future__ import annotations

import typer

from mstage.cli.app import command, next_step, session, table


@command("train-retrieval")
def train_retrieval(
    epochs: int = typer.Option(None, help="Most epochs of the validation phase (early stopping "
                               "picks the count used to refit). [default: 40]"),
    batch_size: int = typer.Option(None, help="Positives per batch; the other positives of a "
                                   "batch are the negatives. [default: 256]"),
    embedding_dim: int = typer.Option(None, help="Size of the query and item embeddings. "
                                      "[default: 64]"),
    learning_rate: float = typer.Option(None, help="Optimizer learning rate. [default: 0.5]"),
    temperature: float = typer.Option(None, help="Softmax temperature on cosine similarities. "
                                      "[default: 0.2]"),
    seed: int = typer.Option(None, help="Random seed (initialisation and shuffling). "
                             "[default: 42]"),
    force: bool = typer.Option(False, "--force", help="Publish the model even when its "
                               "validation recall@20 is not above popularity's."),
) -> None:
    """Train the two-tower model on prepared data, report test metrics, export the towers."""
    from mstage.config import override
    from mstage.training.retrieval import train_retrieval as run_training
    from mstage.workspace import Artifact

    s = session()
    config = override(s.config.retrieval, flags=True, epochs=epochs, batch_size=batch_size,
                      embedding_dim=embedding_dim, learning_rate=learning_rate,
                      temperature=temperature, seed=seed)
    ws = s.workspace
    run = run_training(ws, config, s.progress(), force=force)
    for note in run.notes:
        s.warn(note)

    result = {
        "artifact": str(ws.path(Artifact.RETRIEVAL)),
        "split": config.split,
        "best_epoch": run.best_epoch,
        "batch_size": run.batch_size,
        "train_seconds": round(run.train_seconds, 3),
        "examples_per_second": round(run.examples_per_second, 1),
        "stats": run.stats,
        "validation": run.validation,
        "validation_popularity": {"recall@20": run.validation_popularity},
        "quality_gate": run.quality_gate,
        "test": {"two_tower": run.test, "popularity": run.popularity},
        "notes": run.notes,
    }

    def render(console):
        names = ["recall@10", "recall@20", "recall@100", "ndcg@10", "hitrate@10"]
        rows = [(model, *[metrics.get(n, float("nan")) for n in names])
                for model, metrics in (("two-tower", run.test), ("popularity", run.popularity))]
        console.print(table(
            f"test metrics, {config.split} split, {int(run.test.get('users', 0))} users "
            f"(best epoch {run.best_epoch})", ["model", *names], rows))
        console.print(f"exported to {result['artifact']}; next: {next_step(s.workspace)}")

    s.emit(result, render)
