"""Models served without TensorFlow: each SavedModel's serving signature, converted to a
LiteRT (TensorFlow Lite) flatbuffer when it is exported, runs in the LiteRT interpreter.

Why: a process that imports TensorFlow holds ~400 MiB and pays ~2 ms of dispatch per call;
the LiteRT interpreter imports in milliseconds, holds ~50 MiB with the model, and runs the
same graph (variables frozen in) with results equal to float32 rounding. The SavedModel
stays the training artifact; serving stages and `mstage recommend` run the conversion
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from mstage.errors import ArtifactMissing
from mstage.models.tensorflow_runtime import import_tensorflow, native_stderr_silenced

SIGNATURE = "serving_default"


def export_lite(saved_model_dir: Path, target: Path) -> None:
    """Convert the `serving_default` signature of a SavedModel to a LiteRT file at `target`
    (needs TensorFlow: run at export time)."""
    tf = import_tensorflow()

    loaded = tf.saved_model.load(str(saved_model_dir))
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [loaded.signatures[SIGNATURE]], loaded)  # concrete functions freeze the variables
    with native_stderr_silenced():
        Path(target).write_bytes(converter.convert())


def require_lite(path: Path, command: str) -> None:
    """ArtifactMissing naming `command` (which writes it) when the LiteRT file is absent."""
    if not Path(path).is_file():
        raise ArtifactMissing(
            f"expected the model's LiteRT export at {path}, found nothing (models trained by "
            f"an earlier mstage lack it); run `mstage {command}` again")


class LiteModel:
    """A converted signature, called with numpy arrays: `model(**inputs) -> {name: array}`.
    Any batch size works (the interpreter resizes its inputs). Threads: `OMP_NUM_THREADS`
    when set (Triton stubs set 1), else LiteRT's default. An interpreter is not thread-safe
    (concurrent calls corrupt its tensors), so calls from several threads take turns."""

    def __init__(self, path: Path, command: str):
        require_lite(path, command)
        from ai_edge_litert.interpreter import Interpreter

        threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or None
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self._run = interpreter.get_signature_runner(SIGNATURE)
        self._lock = threading.Lock()
        self._first = True

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            if self._first:  # LiteRT announces its CPU delegate on fd 2 at the first call
                self._first = False
                with native_stderr_silenced():
                    out = self._run(**inputs)
            else:
                out = self._run(**inputs)
            # owned copies: the next call may reuse the interpreter's buffers
            return {name: np.array(values) for name, values in out.items()}
