"""Run a command and reap it with os.wait4, so its own peak RSS is known (benchmark helper)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def run_and_reap(command: list[str], log: Path, out_path: Path, timeout: float,
                 poll_s: float = 0.05) -> tuple[int | None, float, float]:
    """Run `command` (stdout to out_path, stderr appended to log) until it exits or runs past
    `timeout` seconds (then it is killed). Returns (exit code, or None when killed; wall
    seconds; the child's peak RSS in MiB)."""
    started = time.perf_counter()
    with open(log, "ab") as err, open(out_path, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=err)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                return (os.waitstatus_to_exitcode(status), time.perf_counter() - started,
                        usage.ru_maxrss / 1024)
            if time.monotonic() > deadline:
                process.kill()
                _, _, usage = os.wait4(process.pid, 0)
                return None, time.perf_counter() - started, usage.ru_maxrss / 1024
            time.sleep(poll_s)
