"""`mstage train-ranking`: train, evaluate and export the DLRM click model."""

from __future__ import annotations

import typer

from mstage.cli.app import command, next_step, session, table


@command("train-ranking")
def train_ranking(
    epochs: int = typer.Option(None, help="Most epochs of the validation phase; early stopping "
                               "on validation AUC picks the count used to refit. \\[default: "
                               "from mstage.toml, 10]"),
    batch_size: int = typer.Option(None, help="Rows (user, item, label) per batch. "
                                   "\\[default: 1024]"),
    embedding_dim: int = typer.Option(None, help="Size of every embedding and of the bottom "
                                      "MLP output. \\[default: 16]"),
    learning_rate: float = typer.Option(None, help="Optimizer (Adam) learning rate. "
                                        "\\[default: 0.003]"),
    seed: int = typer.Option(None, help="Random seed (initialisation, shuffling, train "
                             "negatives). \\[default: 42]"),
    negatives: int = typer.Option(None, help="Catalog items sampled per positive (per click "
                                  "on labelled data). \\[default: 4]"),
    force: bool = typer.Option(False, "--force", help="Publish the model even when its "
                               "validation AUC is not above the baseline's."),
) -> None:
    """Train the DLRM ranker on prepared data, report test AUC / log loss beside a baseline,
    export a SavedModel."""
    from mstage.config import override
    from mstage.training.ranking import train_ranking as run_training
    from mstage.workspace import Artifact

    s = session()
    config = override(s.config.ranking, flags=True, epochs=epochs, batch_size=batch_size,
                      embedding_dim=embedding_dim, learning_rate=learning_rate, seed=seed,
                      negatives=negatives)
    ws = s.workspace
    run = run_training(ws, config, s.progress(), force=force)
    for note in run.notes:
        s.warn(note)
    metrics = run.metrics()
    result = {"artifact": str(ws.path(Artifact.RANKING)), "split": config.split, **metrics,
              "notes": run.notes}

    def render(console):
        console.print(table(
            f"test, {config.split} split, {metrics['test_rows']} rows "
            f"({metrics['test_positives']} positives; labels: {metrics['labels']})",
            ["model", "AUC", "log loss"],
            [(f"DLRM ({metrics['epochs_trained']} epochs)", metrics["test_auc"],
              metrics["test_log_loss"]),
             (metrics["baseline"], metrics["baseline_auc"], metrics["baseline_log_loss"])]))
        console.print(f"exported to {result['artifact']}; next: {next_step(s.workspace)}")

    s.emit(result, render)
