"""The `mstage` entry point: imports each command module so it registers on the app."""

import importlib

from mstage.cli.app import app

COMMAND_MODULES = [
    "status",
]

for _name in COMMAND_MODULES:
    importlib.import_module(f"mstage.cli.{_name}")


def run() -> None:
    app()
