"""Generate the Feast repository (feature_store.yaml + definitions.py) and load its objects.

Every path in the repository is relative to the repository itself, so the directory can be
built in a staging directory, renamed into the workspace, and copied anywhere (a Triton
model repository, another machine) and still open. The generated `definitions.py` is the one
source of the Feast objects: mstage applies exactly what Feast's own CLI would.
"""

from __future__ import annotations

import importlib.util
import uuid
from dataclasses import dataclass
from pathlib import Path

from mstage.data.schema import Feature
from mstage.features.tables import EVENT_TIMESTAMP, ITEM_ID, USER_ID

STORE_YAML = "feature_store.yaml"
DEFINITIONS = "definitions.py"
REGISTRY = "registry.db"
ONLINE_DB = "online.db"
SOURCES_DIR = "data"
USER_VIEW, ITEM_VIEW = "user_features", "item_features"

FEAST_TYPES = {
    "categorical": "String",
    "numeric": "Float64",
    "multi": "Array(String)",
    "item_ids": "Array(Int64)",
}


@dataclass(frozen=True)
class OnlineStore:
    """Where materialized features live: `sqlite` (a file in the repo) or a Redis server."""

    url: str

    @property
    def is_redis(self) -> bool:
        return self.url.startswith("redis://")

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("redis://").rsplit(":", 1)
        return host, int(port)

    def yaml(self) -> str:
        if self.is_redis:
            host, port = self.host_port
            return f"  type: redis\n  connection_string: \"{host}:{port}\"\n"
        return f"  type: sqlite\n  path: {ONLINE_DB}\n"


def new_project_name() -> str:
    """A fresh Feast project per build: Redis keys end with the project, so a rebuild writes
    beside the serving store instead of over it, and the old keys are dropped after publish."""
    return f"mstage_{uuid.uuid4().hex[:12]}"


def store_yaml(project: str, store: OnlineStore) -> str:
    return (
        f"project: {project}\n"
        "provider: local\n"
        "registry:\n"
        f"  path: {REGISTRY}\n"
        "  cache_ttl_seconds: 0\n"
        "online_store:\n"
        f"{store.yaml()}"
        "offline_store:\n"
        "  type: dask\n"
        "entity_key_serialization_version: 3\n"
    )


def _fields(key: str, features: list[Feature]) -> str:
    lines = [f"        Field(name={key!r}, dtype=Int64),"]
    lines += [f"        Field(name={f.name!r}, dtype={FEAST_TYPES[f.kind]})," for f in features]
    return "\n".join(lines)


def definitions_py(user_features: list[Feature], item_features: list[Feature]) -> str:
    """Python source defining the `user`/`item` entities, their file sources and views.

    ttl=0 means the snapshot never expires: the store serves the latest export until the
    next one replaces it.
    """
    return f'''"""Feast definitions of the mstage feature store (by `mstage export-features`)."""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float64, Int64, String

user = Entity(name="user", join_keys=[{USER_ID!r}], value_type=ValueType.INT64,
              description="A user, by the user's own int64 id.")
item = Entity(name="item", join_keys=[{ITEM_ID!r}], value_type=ValueType.INT64,
              description="An item, by the item's own int64 id.")

user_source = FileSource(name="user_source", path="{SOURCES_DIR}/users.parquet",
                         timestamp_field={EVENT_TIMESTAMP!r})
item_source = FileSource(name="item_source", path="{SOURCES_DIR}/items.parquet",
                         timestamp_field={EVENT_TIMESTAMP!r})

user_features = FeatureView(
    name={USER_VIEW!r},
    entities=[user],
    ttl=timedelta(0),
    online=True,
    source=user_source,
    schema=[
{_fields(USER_ID, user_features)}
    ],
)

item_features = FeatureView(
    name={ITEM_VIEW!r},
    entities=[item],
    ttl=timedelta(0),
    online=True,
    source=item_source,
    schema=[
{_fields(ITEM_ID, item_features)}
    ],
)
'''


def write_repo(repo: Path, project: str, store: OnlineStore,
               user_features: list[Feature], item_features: list[Feature]) -> None:
    """Write feature_store.yaml and definitions.py into `repo` (sources go under data/)."""
    repo.mkdir(parents=True, exist_ok=True)
    (repo / STORE_YAML).write_text(store_yaml(project, store))
    (repo / DEFINITIONS).write_text(definitions_py(user_features, item_features))


def load_definitions(repo: Path) -> list:
    """The Entity and FeatureView objects defined in the repo's definitions.py.

    Loaded under a unique module name so that two repositories in one process never share
    a cached module.
    """
    from feast import Entity, FeatureView

    name = f"mstage_feast_definitions_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, repo / DEFINITIONS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [v for v in vars(module).values() if isinstance(v, Entity | FeatureView)]
