"""Import TensorFlow once, without its native start-up chatter on the user's terminal.

TensorFlow 2.21 writes absl log lines to file descriptor 2 when it loads (oneDNN notes,
"Could not find cuda drivers") and when it first probes devices ("failed call to cuInit"),
whatever TF_CPP_MIN_LOG_LEVEL says. They are not errors and not ours to show, so both
happen here with fd 2 pointed at /dev/null; Python exceptions still propagate.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow():
    """The `tensorflow` module, loaded (and its devices probed) quietly the first time."""
    if "tensorflow" not in sys.modules and not os.environ.get("MSTAGE_TF_VERBOSE"):
        with native_stderr_silenced():
            import tensorflow as tf

            tf.config.list_physical_devices()
    import tensorflow as tf

    return tf


def import_keras():
    """The `keras` module, with TensorFlow (its backend) loaded quietly first."""
    import_tensorflow()
    import keras

    return keras
