"""The workspace: the only code that knows artifact paths; manifest, atomic publish, lock.

Every command reads artifacts from one directory and publishes its own with a rename, so a
failed or interrupted command never leaves a half-written artifact nor destroys the last good
one. `manifest.json` records, per artifact, the mstage version, resolved config, fingerprints
of its inputs, metrics, build time and its files (size and a sampled hash); an artifact is
*stale* when an input's fingerprint has changed since it was built, and *damaged* when one
of its files is missing or changed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mstage import __version__
from mstage.errors import (
    ArtifactDamaged,
    ArtifactMissing,
    ManifestCorrupt,
    UsageError,
    WorkspaceLocked,
)

MANIFEST = "manifest.json"
CONFIG_FILE = "mstage.toml"
DEFAULT_WORKSPACE = "./mstage-workspace"
STAGING = ".staging"
SAMPLE_BYTES = 1 << 20
LIVE_FILES = {"online.db"}
"""Files that change legitimately after publishing (the online store takes writes): checked
for presence only."""


class Artifact(enum.Enum):
    """An artifact: its directory, the command that builds it, and the artifacts it reads."""

    DATA = ("data", "prepare-data", ())
    RETRIEVAL = ("retrieval", "train-retrieval", ("data",))
    RANKING = ("ranking", "train-ranking", ("data",))
    FEATURES = ("features", "export-features", ("data",))
    INDEX = ("index", "build-index", ("retrieval",))
    ENSEMBLE = ("ensemble", "build-ensemble", ("retrieval", "ranking", "features", "index"))

    def __init__(self, dirname: str, command: str, inputs: tuple[str, ...]):
        self.dirname = dirname
        self.command = command
        self.input_names = inputs

    @property
    def inputs(self) -> tuple[Artifact, ...]:
        return tuple(Artifact.by_name(n) for n in self.input_names)

    @staticmethod
    def by_name(name: str) -> Artifact:
        return next(a for a in Artifact if a.dirname == name)


def fingerprint_file(path: Path) -> str:
    """sha256 (first 16 hex digits) of a file's bytes, or of a directory's files (names and
    bytes, in name order: a partitioned data set): raw inputs are compared by content."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else "").encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):  # noqa: B023 - read now
                digest.update(chunk)
    return digest.hexdigest()[:16]


def file_digest(path: Path) -> str:
    """sha256 (16 hex digits) of a file's size, first MiB and last MiB: catches a truncated,
    replaced or rewritten file in O(1) per file, where hashing every byte of a multi-GB
    index or store on each `status` would not be."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(SAMPLE_BYTES))
        if size > 2 * SAMPLE_BYTES:
            f.seek(-SAMPLE_BYTES, os.SEEK_END)
            digest.update(f.read(SAMPLE_BYTES))
        elif size > SAMPLE_BYTES:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def file_records(directory: Path) -> dict[str, dict[str, Any]]:
    """Every file under `directory`: relative path -> size and digest (None for LIVE_FILES)."""
    records = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        live = path.name in LIVE_FILES
        records[str(path.relative_to(directory))] = {
            "size": None if live else path.stat().st_size,
            "digest": None if live else file_digest(path)}
    return records


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class Build:
    """A staging directory that becomes an artifact when its `with` block ends without error.

    Fill `dir` with files and set `config`, `metrics` and `inputs` (extra raw-file inputs,
    name -> path; upstream artifacts are recorded automatically).
    """

    artifact: Artifact
    dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


class Workspace:
    """A workspace directory holding artifacts, `mstage.toml` and `manifest.json`."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_WORKSPACE):
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(
                f"expected a workspace directory at {self.root}, found a file; "
                "pass another path with --workspace"
            )
        self._recover_interrupted_publish()

    # paths -----------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def path(self, artifact: Artifact) -> Path:
        return self.root / artifact.dirname

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def exists(self, artifact: Artifact) -> bool:
        return artifact.dirname in self.manifest()["artifacts"] and self.path(artifact).is_dir()

    def require(self, artifact: Artifact) -> Path:
        """The artifact's directory; ArtifactMissing or ArtifactDamaged naming the command
        that (re)builds it."""
        if not self.exists(artifact):
            raise ArtifactMissing(
                f"expected the {artifact.dirname} artifact at {self.path(artifact)}, found "
                f"nothing; run `mstage {artifact.command}` first"
            )
        problem = self.damage(artifact)
        if problem:
            raise ArtifactDamaged(f"expected the {artifact.dirname} artifact as published, "
                                  f"found {problem}; rebuild it with `mstage {artifact.command}`")
        return self.path(artifact)

    def damage(self, artifact: Artifact) -> str | None:
        """The first recorded file of the artifact that is missing or changed, or None."""
        directory = self.path(artifact)
        for name, recorded in (self.record(artifact) or {}).get("files", {}).items():
            path = directory / name
            if not path.is_file():
                return f"{artifact.dirname}/{name} missing"
            digest = recorded["digest"]
            if digest is not None and (path.stat().st_size != recorded["size"]
                                       or file_digest(path) != digest):
                return f"{artifact.dirname}/{name} changed"
        return None

    # manifest --------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The manifest; ManifestCorrupt (naming the file and `--repair`) when unreadable."""
        if not self.manifest_path.exists():
            return {"mstage_version": __version__, "artifacts": {}}
        try:
            manifest = json.loads(self.manifest_path.read_text())
            records = manifest["artifacts"]
            if not isinstance(records, dict) or not all(
                    isinstance(r, dict) and "fingerprint" in r for r in records.values()):
                raise TypeError("an artifact record lacks its fingerprint")
            for name, record in records.items():
                files, inputs = record.get("files", {}), record.get("inputs", {})
                if not isinstance(inputs, dict) or not isinstance(files, dict) or not all(
                        isinstance(f, dict) and {"size", "digest"} <= f.keys()
                        for f in files.values()):
                    raise TypeError(f"the {name} record's inputs or files are malformed")
        except (ValueError, TypeError, KeyError) as e:
            what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise ManifestCorrupt(
                f"expected a readable manifest at {self.manifest_path}, found {what}; run "
                "`mstage status --repair` to rebuild it from the artifacts on disk") from None
        return manifest

    def repair(self) -> dict[str, list[str]]:
        """Rebuild manifest.json from the artifact directories on disk (under the lock).

        Each artifact found gets a fresh fingerprint and its files recorded as they are now;
        its config, metrics, inputs and build time cannot be recovered and are marked
        `unverified`. Returns {"recovered": [...], "missing": [...]}."""
        with self.lock("mstage status --repair"):
            artifacts: dict[str, Any] = {}
            for artifact in Artifact:
                directory = self.path(artifact)
                if not directory.is_dir():
                    continue
                artifacts[artifact.dirname] = {
                    "fingerprint": uuid.uuid4().hex[:16],
                    "mstage_version": __version__,
                    "built_at": dt.datetime.fromtimestamp(directory.stat().st_mtime, dt.UTC)
                    .isoformat(timespec="seconds"),
                    "seconds": None, "config": {}, "metrics": {},
                    "inputs": {a.dirname: artifacts[a.dirname]["fingerprint"]
                               for a in artifact.inputs if a.dirname in artifacts},
                    "files": file_records(directory),
                    "unverified": ["config", "metrics", "inputs", "built_at"],
                }
            self._write_manifest({"mstage_version": __version__, "artifacts": artifacts})
        return {"recovered": list(artifacts),
                "missing": [a.dirname for a in Artifact if a.dirname not in artifacts]}

    def record(self, artifact: Artifact) -> dict[str, Any] | None:
        return self.manifest()["artifacts"].get(artifact.dirname)

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        os.replace(tmp, self.manifest_path)

    def update_metrics(self, artifact: Artifact, metrics: dict[str, Any]) -> None:
        """Merge metrics measured after publishing (e.g. by `mstage evaluate`) into the manifest."""
        with self.lock(f"record metrics of {artifact.dirname}"):
            manifest = self.manifest()
            manifest["artifacts"][artifact.dirname].setdefault("metrics", {}).update(metrics)
            self._write_manifest(manifest)

    # state -----------------------------------------------------------------------------
    def state(self, artifact: Artifact) -> tuple[str, str]:
        """(state, reason): 'missing', 'ready', 'damaged' with the file missing or changed,
        or 'stale' with the input that changed."""
        rec = self.record(artifact)
        if rec is None or not self.path(artifact).is_dir():
            return "missing", ""
        problem = self.damage(artifact)
        if problem:
            return "damaged", problem
        for name, recorded in rec.get("inputs", {}).items():
            current = self._current_fingerprint(name)
            if current != recorded:
                what = "is missing now" if current is None else "changed"
                return "stale", f"{name} {what} since this was built"
        return "ready", ""

    def _current_fingerprint(self, input_name: str) -> str | None:
        if input_name.startswith("file:"):
            path = Path(input_name[5:])
            return fingerprint_file(path) if path.exists() else None
        rec = self.manifest()["artifacts"].get(input_name)
        return rec["fingerprint"] if rec else None

    def next_command(self) -> str | None:
        """The first command whose artifact is missing, damaged or stale, in pipeline order.

        An artifact stale only because a raw input file it was built from is gone is still
        usable, and rebuilding it with its saved options would fail for want of that file:
        the steps after it are named instead."""
        for artifact in Artifact:
            state = self.state(artifact)[0]
            if state == "stale" and self._raw_input_gone(artifact):
                continue
            if state != "ready":
                return f"mstage {artifact.command}"
        return None

    def _raw_input_gone(self, artifact: Artifact) -> bool:
        """Whether a raw file or directory `artifact` was built from no longer exists."""
        inputs = (self.record(artifact) or {}).get("inputs", {})
        return any(name.startswith("file:") and not Path(name[5:]).exists() for name in inputs)

    # writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, what: str) -> Iterator[None]:
        """Hold the workspace's write lock, or fail at once naming the holder."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = lock_path.read_text().strip() or "another process"
                raise WorkspaceLocked(
                    f"expected to write workspace {self.root}, found it locked by {holder}; "
                    "wait for that command to finish (or use another --workspace)"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} ({what})".encode())
            # Holding the lock, no other writer is running: staging left behind was a
            # killed command's.
            shutil.rmtree(self.root / STAGING, ignore_errors=True)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def build(self, artifact: Artifact) -> Iterator[Build]:
        """Stage an artifact under the lock; publish it only if the block completes.

        Upstream artifacts must exist; their fingerprints are recorded as inputs so the new
        artifact turns stale when one of them is rebuilt.
        """
        self.manifest()  # a corrupt manifest fails now, not after the work
        upstream = {a.dirname: self._fingerprint_of(a) for a in artifact.inputs}
        with self.lock(f"mstage {artifact.command}"):
            staging = self.root / STAGING / f"{artifact.dirname}-{uuid.uuid4().hex[:8]}"
            staging.mkdir(parents=True)
            build = Build(artifact, staging)
            started = time.perf_counter()
            try:
                yield build
                self._publish(build, upstream, time.perf_counter() - started)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def _fingerprint_of(self, artifact: Artifact) -> str:
        self.require(artifact)
        return self.record(artifact)["fingerprint"]

    def _publish(self, build: Build, upstream: dict[str, str], seconds: float) -> None:
        target = self.path(build.artifact)
        files = file_records(build.dir)  # before the renames: keep their window short
        previous = target.with_name(f".{target.name}.previous")
        shutil.rmtree(previous, ignore_errors=True)
        if target.exists():
            os.rename(target, previous)
        os.rename(build.dir, target)
        inputs = dict(upstream)
        inputs.update({f"file:{p.resolve()}": fingerprint_file(p) for p in build.files.values()})
        manifest = self.manifest()
        manifest["mstage_version"] = __version__
        manifest["artifacts"][build.artifact.dirname] = {
            "fingerprint": uuid.uuid4().hex[:16],
            "mstage_version": __version__,
            "built_at": _now(),
            "seconds": round(seconds, 3),
            "config": build.config,
            "inputs": inputs,
            "metrics": build.metrics,
            "files": files,
        }
        self._write_manifest(manifest)
        shutil.rmtree(previous, ignore_errors=True)

    def _recover_interrupted_publish(self) -> None:
        """Put back an artifact whose replacement was interrupted between the two renames."""
        if not self.root.is_dir():
            return
        for artifact in Artifact:
            target = self.path(artifact)
            previous = target.with_name(f".{target.name}.previous")
            if previous.is_dir() and not target.exists():
                os.rename(previous, target)
