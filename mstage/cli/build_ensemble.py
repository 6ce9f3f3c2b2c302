"""`mstage build-ensemble`: the self-contained Triton model repository of the recommender."""

from __future__ import annotations

import typer

from mstage.cli.app import command, require_built, session, table


@command("build-ensemble")
def build_ensemble(
    device: str = typer.Option(None, "--device", help="cpu (KIND_CPU) or gpu (KIND_GPU "
                               "instance groups). (default: serving.device, cpu)"),
    top_k: int = typer.Option(None, "--top-k", metavar="K", help="Items per user when a "
                              "request sends no top_k. (default: serving.top_k, 10)"),
    candidates: int = typer.Option(None, "--candidates", metavar="N", help="Candidates "
                                   "retrieved per request. (default: serving.candidates, 200)"),
    instances: int = typer.Option(None, "--instances", metavar="N", help="Model instances per "
                                  "stage. (default: serving.instances, 1)"),
) -> None:
    """Write workspace/ensemble/model_repository: one python model per stage + the ensemble."""
    import dataclasses

    from mstage.config import override
    from mstage.pipeline.recommender import SERVED_ARTIFACTS
    from mstage.serving.ensemble import build_ensemble as run_build

    s = session()
    serving = override(s.config.serving, flags=True, device=device, top_k=top_k,
                       candidates=candidates, instances=instances)
    require_built(s.workspace, SERVED_ARTIFACTS)
    with s.progress().task("building the model repository"):
        built = run_build(s.workspace, dataclasses.replace(s.config, serving=serving))
    for warning in built.warnings:
        s.warn(warning)
    result = built.as_dict()

    def render(console):
        console.print(table(
            f"model repository {built.repository}", ["", "value"],
            [("ensemble", built.ensemble), ("stages", ", ".join(built.models[:-1])),
             ("device", built.device), ("instances per stage", built.instances),
             ("top-k (default)", built.top_k), ("candidates", built.candidates),
             ("max batch size", built.max_batch_size),
             ("files", built.files), ("size", f"{built.bytes / 1e6:.1f} MB")],
        ))
        console.print("next: mstage serve  (or see docs/deploy-triton.md)")

    s.emit(result, render)
