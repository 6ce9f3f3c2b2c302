"""`mstage push-events`: new interactions into the online store's `recent_items`, live."""

import typer

from mstage.cli.app import command, session, table


@command("push-events")
def push_events(
    source: str = typer.Argument(
        ..., metavar="FILE|-",
        help="Events as CSV or parquet (- reads CSV on stdin), with the [data] column names "
        "of the workspace (user, item, time, and label when set: label 0 rows are ignored)."),
) -> None:
    """Put users' new positive items first in their recent items, in the feature store and in
    the store a built Triton repository serves: recommendations follow at once, no retraining."""
    import sys

    from mstage.features.push import STDIN, read_events
    from mstage.features.push import push_events as run_push
    from mstage.serving.ensemble import MODEL_PREFIX, repository_path
    from mstage.serving.python_model import ARTIFACTS_DIR
    from mstage.workspace import Artifact

    s = session()
    stdin = None
    if source == STDIN:
        stdin = (sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer")
                 else sys.stdin.read().encode())
    df = read_events(source, s.config.data, stdin)
    copies = []
    if s.workspace.exists(Artifact.ENSEMBLE) and repository_path(s.workspace).is_dir():
        # The store copy the retrieval model of a running tritonserver reads.
        copies.append(repository_path(s.workspace) / f"{MODEL_PREFIX}retrieval" / "1"
                      / ARTIFACTS_DIR / "features")
    result = run_push(s.workspace, df, s.config.data, "stdin" if source == STDIN else source,
                      copies, s.progress())
    for warning in result.warnings:
        s.warn(warning)

    def render(console):
        console.print(table(
            "push-events",
            ["what", "value"],
            [("users updated", result.users),
             ("events used", result.events),
             ("skipped: label 0", result.skipped["negative_label"]),
             ("skipped: not in catalog", result.skipped["not_in_catalog"]),
             ("stores written", ", ".join(result.stores)),
             ("features artifact", result.features_state)],
        ))

    s.emit(result.as_dict(), render)
