"""`Stage`: the one operator type, the same object in-process and inside Triton.

A stage is JSON `params`, a few numpy `arrays` computed when it is built (popularity, the
catalog's attributes) and `sources`: artifact directories of which it reads only the files
named in `READS`. Its columns follow from params alone, so a plan is checked and a Triton
repository written without loading a model; models, indexes and stores load once, at the
first call (in Triton, at `initialize`). `save` writes `stage.json`, `arrays.npz` (never
pickle) and copies of the files it reads; `restore` brings the stage back from that
directory anywhere. `run_stage` is the one checked call both runners use.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mstage.columns import ColumnSpec, check_batch
from mstage.errors import ConfigError, InputError, MstageError

STAGE_FILE = "stage.json"
ARRAYS_FILE = "arrays.npz"


class Stage:
    """Base of every stage; subclasses declare `inputs`/`outputs`, `READS` and `run`.

    `READS` maps a source name to the paths inside that artifact the stage opens; `()`
    means the whole directory. `_open` loads heavy state from `self.sources`.
    """

    READS: ClassVar[Mapping[str, Sequence[str]]] = {}
    inputs: Sequence[ColumnSpec] = ()
    outputs: Sequence[ColumnSpec] = ()

    def __init__(self, params: Mapping[str, Any] | None = None,
                 arrays: Mapping[str, np.ndarray] | None = None,
                 sources: Mapping[str, Path] | None = None):
        self.params = dict(params or {})
        self.arrays = dict(arrays or {})
        self.sources = {name: Path(path) for name, path in (sources or {}).items()}
        missing = sorted(set(self.READS) - set(self.sources))
        if missing:
            raise ConfigError(f"expected sources {', '.join(missing)} for stage "
                              f"{type(self).__name__}, found only {sorted(self.sources)}")
        self._loaded = False
        self._declared: tuple[list[ColumnSpec], list[ColumnSpec]] | None = None

    @property
    def declared(self) -> tuple[list[ColumnSpec], list[ColumnSpec]]:
        """(inputs, outputs), built once: stages derive them from params, which never change
        after construction, and rebuilding them on every call cost ~10 % of a one-user call."""
        if self._declared is None:
            self._declared = (list(self.inputs), list(self.outputs))
        return self._declared

    def load(self) -> None:
        """Open models, indexes and stores now (once) rather than at the first call."""
        if not self._loaded:
            self._open()
            self._loaded = True

    def _open(self) -> None:
        """Load heavy state from `self.sources`."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.load()
        return self.run(batch)

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        """Write the stage into `directory` so that `restore(directory)` rebuilds it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, paths in self.READS.items():
            _copy(self.sources[name], directory / name, paths)
        meta = {
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "params": self.params,
            "inputs": [c.to_json() for c in self.inputs],
            "outputs": [c.to_json() for c in self.outputs],
        }
        (directory / STAGE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if self.arrays:
            np.savez(directory / ARRAYS_FILE, **self.arrays)

    @staticmethod
    def restore(directory: Path) -> Stage:
        """The stage saved in `directory` by `save`."""
        directory = Path(directory)
        meta_path = directory / STAGE_FILE
        if not meta_path.is_file():
            raise InputError(f"expected {meta_path} naming a saved stage, found nothing; "
                             "rebuild it with `mstage build-ensemble`")
        meta = json.loads(meta_path.read_text())
        cls = import_class(meta["class"])
        arrays = {}
        if (directory / ARRAYS_FILE).is_file():
            with np.load(directory / ARRAYS_FILE, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        return cls(meta["params"], arrays, {name: directory / name for name in cls.READS})


def _copy(source: Path, target: Path, paths: Sequence[str]) -> None:
    """Copy `paths` (all of `source` when empty) from `source` to `target`; absent optional
    files (a Redis-backed store has no database file) are skipped."""
    if not paths:
        shutil.copytree(source, target, dirs_exist_ok=True)
        return
    target.mkdir(parents=True, exist_ok=True)
    for rel in paths:
        path = source / rel
        if path.is_dir():
            shutil.copytree(path, target / rel, dirs_exist_ok=True)
        elif path.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / rel)


def import_class(path: str) -> type:
    """The class named by 'package.module:QualName'."""
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"expected an importable stage class {path!r}, found an error: "
                          f"{e}; is the package that defines it installed?") from None
    return obj


def run_stage(stage: Stage, batch: Mapping[str, np.ndarray], where: str,
              inputs_checked: bool = False) -> dict[str, np.ndarray]:
    """Run `stage` on `batch`, checking inputs (unless the caller already did, request by
    request) and outputs against its declared columns.

    In-process and in Triton alike: a wrong dtype, shape or row count is an InputError
    naming `where`; any other failure of the stage becomes an MstageError naming it too.
    """
    inputs, outputs = stage.declared
    if not inputs_checked:
        check_batch(inputs, batch, where)
    rows = len(next(iter(batch.values()))) if batch else 0
    try:
        result = stage(dict(batch))
    except MstageError:
        raise
    except Exception as e:  # noqa: BLE001 - any stage failure becomes one line naming it
        raise MstageError(f"{where}: {type(e).__name__}: {e}") from e
    check_batch(outputs, result, f"{where} output", rows=rows if batch else None)
    return result
