"""Keep Feast's own printing off mstage's stdout.

Feast prints coloured materialization logs with `print()` and logs warnings; mstage's stdout
carries only results (tables or JSON). Both go to a log file in the workspace instead, at the
file-descriptor level too, so output from native code or subprocesses cannot leak either.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def feast_output_to(log_path: Path) -> Iterator[None]:
    """Send stdout (Python and fd 1) and the `feast` logger to `log_path` while inside."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    feast_logger = logging.getLogger("feast")
    with open(log_path, "a") as log:
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        saved_fd = os.dup(1)
        saved_propagate = feast_logger.propagate
        try:
            os.dup2(log.fileno(), 1)
            feast_logger.addHandler(handler)
            feast_logger.propagate = False
            with contextlib.redirect_stdout(log):
                yield
        finally:
            log.flush()
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
            feast_logger.removeHandler(handler)
            feast_logger.propagate = saved_propagate
