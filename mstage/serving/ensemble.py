"""Build the workspace's Triton model repository from its plan (`mstage build-ensemble`).

The repository is written through `Workspace.build`, so a failed build keeps the last good
one. Its stages are the very plan the in-process `Recommender` runs (`build_plan`), saved
without loading a model (no TensorFlow, no Feast), each with only the artifact files it
reads: the repository holds no path outside itself and can be copied to another machine
(see docs/deploy-triton.md). A final scan refuses to publish a repository that still names
the workspace directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from mstage.config import Config, as_dict
from mstage.errors import ConfigError, MstageError
from mstage.serving.repository import ENSEMBLE, write_repository
from mstage.workspace import Artifact, Workspace

REPOSITORY_DIR = "model_repository"
MODEL_PREFIX = "mstage_"  # stage models share a server's namespace with other models


@dataclass
class EnsembleBuild:
    """What `build_ensemble` published: the repository, its models, and warnings to show."""

    repository: Path
    models: list[str]
    ensemble: str
    device: str
    instances: int
    top_k: int
    candidates: int
    max_batch_size: int
    files: int
    bytes: int
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"repository": str(self.repository)}


def repository_path(ws: Workspace) -> Path:
    """Where the published repository lives: WORKSPACE/ensemble/model_repository."""
    return ws.path(Artifact.ENSEMBLE) / REPOSITORY_DIR


def build_ensemble(ws: Workspace, config: Config) -> EnsembleBuild:
    """Write and publish the model repository for `config.serving`'s settings.

    Raises ArtifactMissing (naming the command) when an input artifact is absent and
    ConfigError for a top-k beyond the catalog; stale inputs only warn.
    """
    from mstage.pipeline.recommender import build_plan, stale_warnings

    serving = config.serving
    plan = build_plan(ws, config)
    n_items = len(plan.stage("filtering").arrays["item_ids"])
    if serving.top_k > n_items:
        raise ConfigError(f"expected --top-k <= the catalog size {n_items}, found "
                          f"{serving.top_k}")
    warnings = stale_warnings(ws, Artifact.ENSEMBLE.inputs)
    with ws.build(Artifact.ENSEMBLE) as b:
        repo = b.dir / REPOSITORY_DIR
        models = write_repository(
            repo, plan, model_prefix=MODEL_PREFIX, device=serving.device,
            instances=serving.instances, max_batch_size=serving.max_batch_size,
            max_queue_delay_us=serving.batch_delay_us)
        leaks = files_naming(repo, [ws.root.resolve(), b.dir.resolve()])
        if leaks:
            raise MstageError(f"expected a self-contained model repository, found the workspace "
                              f"path in {leaks[0].relative_to(repo)} ({len(leaks)} file(s)); "
                              "the previous ensemble is kept")
        files = [p for p in repo.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        b.config = {"serving": as_dict(serving), "filtering": as_dict(config.filtering),
                    "ordering": as_dict(config.ordering)}
        b.metrics = {"models": models, "files": len(files), "bytes": size}
    return EnsembleBuild(
        repository_path(ws), models, ENSEMBLE, serving.device, serving.instances,
        serving.top_k, serving.candidates, serving.max_batch_size, len(files), size, warnings)


def files_naming(root: Path, paths: list[Path]) -> list[Path]:
    """Files under `root` whose bytes contain any of `paths` (as text): absolute paths that
    would break once the repository is copied elsewhere. Read in chunks (stores can be big)."""
    needles = [str(p).encode() for p in paths]
    overlap = max(len(n) for n in needles)
    found = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        with open(path, "rb") as f:
            tail = b""
            while chunk := f.read(1 << 22):
                window = tail + chunk
                if any(n in window for n in needles):
                    found.append(path)
                    break
                tail = window[-overlap:]
    return found
