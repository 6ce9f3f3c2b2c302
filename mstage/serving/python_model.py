"""The one python-backend model every stage uses: restore a stage from its directory, run it.

Each stage's `1/model.py` is two lines calling `make_model()`. At `initialize` the model
restores `1/artifacts/` (`Stage.restore`) and loads its models. In `execute` it reads
inputs with DLPack (with numpy 2, `as_numpy()` returns wrong values and
`pb_utils.Tensor(name, array)` empty outputs), unpacks the columns earlier models
sent packed (mstage/serving/wire.py), concatenates the requests Triton batched together,
runs the stage once through `run_stage` (the checks the in-process pipeline makes), and
splits the rows back, packing what later models read. A bad request or a failing stage
gets an error response naming the problem; the model and the server stay up.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mstage.columns import check_batch
from mstage.errors import InputError, MstageError
from mstage.pipeline.stage import Stage, run_stage
from mstage.serving.wire import PACKED, ModelWire

ARTIFACTS_DIR = "artifacts"
CODE_DIR = "python"
WIRE_PARAMETER = "mstage_wire"


class StageRunner:
    """Runs one stage over lists of Triton requests; `pb` is triton_python_backend_utils.

    Kept apart from the Triton entry point so tests can drive it with a stand-in `pb`.
    """

    def __init__(self, stage: Stage, model: str, wire: ModelWire | None = None):
        """`wire`: the outputs the model writes as themselves (outputs nothing reads are never
        written), those it packs, and the packed inputs it reads; None: every output plain."""
        self.stage = stage
        self.model = model
        self.wire = wire or ModelWire()
        self.inputs, outputs = stage.declared
        self.outputs = [s for s in outputs
                        if self.wire.outputs is None or s.name in self.wire.outputs]

    @classmethod
    def from_version_dir(cls, version_dir: Path, model: str,
                         wire: ModelWire | None = None) -> StageRunner:
        code = version_dir / CODE_DIR
        if code.is_dir() and str(code) not in sys.path:
            sys.path.insert(0, str(code))
        stage = Stage.restore(version_dir / ARTIFACTS_DIR)
        stage.load()
        return cls(stage, model, wire)

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
        names = [spec.name for spec in self.inputs]
        for name, packing in self.wire.unpacks.items():
            tensor = pb.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise InputError(f"model {self.model}: expected input {name!r} holding "
                                 f"{', '.join(c.name for c in packing.columns)} packed by an "
                                 "earlier model of the ensemble, found none")
            batch |= packing.unpack(np.from_dlpack(tensor), names)
        for name in names:
            tensor = None if name in batch else pb.get_input_tensor_by_name(request, name)
            if tensor is not None:
                batch[name] = np.from_dlpack(tensor)
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
        outputs = {s.name: result[s.name] for s in self.outputs if s.name in result}
        if self.wire.packing is not None:
            outputs[PACKED] = self.wire.packing.pack(result)
        bounds = np.cumsum([0, *rows])
        return [
            pb.InferenceResponse(output_tensors=[
                pb.Tensor.from_dlpack(name, _exportable(values[lo:hi]))
                for name, values in outputs.items()
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


def quiet_consumed_capsules() -> None:
    """Drop the one unraisable error every output tensor raises, and no other.

    The stub marks a DLPack capsule it consumed `used_dlpack`, where the DLPack protocol
    says `used_dltensor`, so numpy's capsule destructor takes it for unconsumed, fails to
    read it and reports that through `sys.unraisablehook`: a traceback written to the
    server log for every tensor (~50 us each, and a log growing without bound under load).
    The stub frees the tensor itself, so nothing leaks; other unraisables still print."""
    default = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not (isinstance(unraisable.exc_value, ValueError)
                and str(unraisable.exc_value) == "PyCapsule_GetPointer called with incorrect name"):
            default(unraisable)

    sys.unraisablehook = hook


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
            quiet_consumed_capsules()
            version_dir = Path(args["model_repository"]) / args["model_version"]
            config = json.loads(args["model_config"])
            raw = config.get("parameters", {}).get(WIRE_PARAMETER, {}).get("string_value")
            wire = ModelWire.from_json(json.loads(raw)) if raw else ModelWire(
                tuple(o["name"] for o in config["output"]))
            self.runner = StageRunner.from_version_dir(version_dir, args["model_name"], wire)

        def execute(self, requests: list[Any]) -> list[Any]:
            import triton_python_backend_utils as pb_utils

            return self.runner.execute(requests, pb_utils)

        def finalize(self) -> None:
            self.runner = None

    return TritonPythonModel
