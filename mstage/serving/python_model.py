"""The one python-backend model every stage uses: restore a stage from its directory, run it.

Each stage's `1/model.py` is two lines calling `make_model()`. At `initialize` the model
restores `1/artifacts/` (`Stage.restore`) and loads its models. In `execute` it reads
inputs with DLPack (with numpy 2, `as_numpy()` returns wrong values and
`pb_utils.Tensor(name, array)` empty outputs), concatenates the requests Triton batched
together, runs the stage once through `run_stage` (the checks the in-process pipeline
makes), and splits the rows back. A bad request or a failing stage gets an error response
naming the problem; the model and the server stay up.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mstage.columns import check_batch
from mstage.errors import MstageError
from mstage.pipeline.stage import Stage, run_stage

ARTIFACTS_DIR = "artifacts"
CODE_DIR = "python"


class StageRunner:
    """Runs one stage over lists of Triton requests; `pb` is triton_python_backend_utils.

    Kept apart from the Triton entry point so tests can drive it with a stand-in `pb`.
    """

    def __init__(self, stage: Stage, model: str, emit: Sequence[str] | None = None):
        """`emit`: the outputs the model's config declares (None: all the stage's), so
        outputs nothing reads are never written."""
        self.stage = stage
        self.model = model
        self.inputs = list(stage.inputs)
        self.outputs = [s for s in stage.outputs if emit is None or s.name in emit]

    @classmethod
    def from_version_dir(cls, version_dir: Path, model: str,
                         emit: Sequence[str] | None = None) -> StageRunner:
        code = version_dir / CODE_DIR
        if code.is_dir() and str(code) not in sys.path:
            sys.path.insert(0, str(code))
        stage = Stage.restore(version_dir / ARTIFACTS_DIR)
        stage.load()
        return cls(stage, model, emit)

    def execute(self, requests: Sequence[Any], pb: Any) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = {}
        for i, request in enumerate(requests):
            try:
                batch = self._read(request, pb)
            except MstageError as e:
                responses[i] = _error(pb, str(e))
                continue
            signature = tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in batch.items()))
            groups.setdefault(signature, []).append((i, batch))
        for members in groups.values():
            for i, response in zip([i for i, _ in members], self._run([b for _, b in members], pb),
                                   strict=True):
                responses[i] = response
        return responses

    def _read(self, request: Any, pb: Any) -> dict[str, np.ndarray]:
        batch = {}
        for spec in self.inputs:
            tensor = pb.get_input_tensor_by_name(request, spec.name)
            if tensor is not None:
                batch[spec.name] = np.from_dlpack(tensor)
        check_batch(self.inputs, batch, f"model {self.model}")
        return batch

    def _run(self, batches: list[dict[str, np.ndarray]], pb: Any) -> list[Any]:
        """Run the stage once over the concatenated batches; one response per batch."""
        rows = [len(next(iter(b.values()))) if b else 0 for b in batches]
        merged = batches[0] if len(batches) == 1 else {
            name: np.concatenate([b[name] for b in batches]) for name in batches[0]
        }
        try:
            result = run_stage(self.stage, merged, f"model {self.model}", inputs_checked=True)
        except MstageError as e:
            return [_error(pb, str(e)) for _ in batches]
        bounds = np.cumsum([0, *rows])
        return [
            pb.InferenceResponse(output_tensors=[
                pb.Tensor.from_dlpack(s.name, _exportable(result[s.name][lo:hi]))
                for s in self.outputs if s.name in result
            ])
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ]


def _exportable(array: np.ndarray) -> np.ndarray:
    """A contiguous, writeable array: the stub's DLPack cannot export read-only ones, and
    inputs read through DLPack are read-only (an operator passing one through returns it)."""
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


def _error(pb: Any, message: str) -> Any:
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message))


def make_model() -> type:
    """The `TritonPythonModel` class for a stage's `model.py`."""

    class TritonPythonModel:
        def initialize(self, args: dict[str, str]) -> None:
            import json
            import os

            # One thread per op in each stub: a server runs four stubs and batches requests,
            # so per-op thread pools only compete for the same cores.
            for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
                os.environ.setdefault(name, "1")
            version_dir = Path(args["model_repository"]) / args["model_version"]
            declared = [o["name"] for o in json.loads(args["model_config"])["output"]]
            self.runner = StageRunner.from_version_dir(version_dir, args["model_name"],
                                                       declared)

        def execute(self, requests: list[Any]) -> list[Any]:
            import triton_python_backend_utils as pb_utils

            return self.runner.execute(requests, pb_utils)

        def finalize(self) -> None:
            self.runner = None

    return TritonPythonModel
