"""The `mstage` entry point: imports each command module so it registers on the app."""

import importlib

from mstage.cli.app import app

COMMAND_MODULES = [
    "status",
    "generate",
    "prepare",
    "train_retrieval",
    "train_ranking",
    "export_features",
    "push_events",
    "build_index",
    "recommend",
    "build_ensemble",
    "serve",
    "evaluate",
    "bench",
]

for _name in COMMAND_MODULES:
    importlib.import_module(f"mstage.cli.{_name}")


def run() -> None:
    app()
