"""Typed, frozen configuration: `mstage.toml` in the workspace, overridden by CLI options.

Each stage has a section (`[data]`, `[retrieval]`, ...) backed by a frozen dataclass; unknown
sections or keys and wrongly typed values are errors naming the file and key. CLI options win
over the file; the resolved section is stored in the manifest of the artifact it built.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mstage.errors import ConfigError

MAX_SEED = 2**32 - 1
SPLITS = ("user-temporal", "global")


def _positive(section: str, **values: float) -> None:
    for name, value in values.items():
        if value is None or (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
            raise ConfigError(f"expected {section}.{name} > 0, found {value!r}")


def check_seed(option: str, seed: int) -> None:
    """A seed numpy and TensorFlow take: 0..2**32-1 (one line naming `option` otherwise)."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"expected {option} in 0..{MAX_SEED}, found {seed!r}")


def _seed(section: str, seed: int) -> None:
    """TensorFlow and numpy take seeds in 0..2**32-1."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"expected {section}.seed in 0..{MAX_SEED}, found {seed!r}")


def _one_of(section: str, **values: tuple[str, tuple[str, ...]]) -> None:
    for name, (value, allowed) in values.items():
        if value not in allowed:
            raise ConfigError(f"expected {section}.{name} in {', '.join(allowed)}, found {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """How raw tables map onto mstage's schema (written by `mstage prepare-data`).

    Input paths are stored absolute ("" = not given), so a later `mstage prepare-data` with
    no options re-reads the same files; list fields name feature columns of the users and
    items tables.
    """

    interactions: str = ""
    users: str = ""
    items: str = ""
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    label_col: str = ""
    categorical: list[str] = field(default_factory=list)
    numeric: list[str] = field(default_factory=list)
    multi_valued: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    multi_sep: str = "|"


@dataclass(frozen=True)
class RetrievalConfig:
    """Two-tower training (docs/train-retrieval.md). Adagrad by default: its cost stays flat
    as id tables grow, unlike Adam's. `epochs` is the most the validation phase runs; early
    stopping on validation recall@20 (after `patience` epochs without gain) picks the count
    used to refit on all of train. `history` is how many of the user's latest items the query
    tower reads (0: none; at most the feature store's `recent_items` are known online).
    `validation_users` caps the users early stopping scores after each epoch and
    `test_users` those of the test report (seeded samples): each pass then costs seconds at
    any scale; `mstage evaluate` measures every test user."""

    epochs: int = 40
    batch_size: int = 256
    embedding_dim: int = 64
    learning_rate: float = 0.5
    temperature: float = 0.2
    seed: int = 42
    optimizer: str = "adagrad"
    patience: int = 5
    split: str = "user-temporal"
    feature_dim: int = 16
    hidden_units: list[int] = field(default_factory=list)
    history: int = 50
    validation_users: int = 10_000
    test_users: int = 10_000

    def __post_init__(self) -> None:
        if not 0 <= self.history <= 1000:
            raise ConfigError(f"expected retrieval.history in 0..1000, found {self.history}")
        _positive("retrieval", validation_users=self.validation_users,
                  test_users=self.test_users)
        _positive("retrieval", epochs=self.epochs, batch_size=self.batch_size,
                  embedding_dim=self.embedding_dim, learning_rate=self.learning_rate,
                  temperature=self.temperature, patience=self.patience,
                  feature_dim=self.feature_dim)
        _positive("retrieval", **{f"hidden_units[{i}]": u for i, u in enumerate(self.hidden_units)})
        _one_of("retrieval", optimizer=(self.optimizer, ("adagrad", "sgd", "adam")),
                split=(self.split, SPLITS))
        _seed("retrieval", self.seed)


@dataclass(frozen=True)
class RankingConfig:
    """DLRM training (docs/train-ranking.md). `negatives` catalog items are sampled per
    positive (per click on labelled data, where they teach the exposure head what is never
    shown). Adam by default: on these small ranking tables it reaches
    its best validation AUC in 2-4 epochs where Adagrad needs 7 or more. `epochs` is the most
    the validation phase runs; early stopping on validation AUC (after `patience` epochs without
    gain) picks the count used to refit on all of train. `history` is how many of the user's
    latest positive items the ranker reads beside the candidate; 0 by default, because with
    history-aware retrieval in front it left the pipeline's NDCG@10 where it was while
    halving scoring throughput (docs/train-ranking.md)."""

    epochs: int = 10
    batch_size: int = 1024
    embedding_dim: int = 16
    learning_rate: float = 0.003
    negatives: int = 4
    seed: int = 42
    optimizer: str = "adam"
    patience: int = 2
    split: str = "user-temporal"
    history: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.history <= 1000:
            raise ConfigError(f"expected ranking.history in 0..1000, found {self.history}")
        _positive("ranking", epochs=self.epochs, batch_size=self.batch_size,
                  embedding_dim=self.embedding_dim, learning_rate=self.learning_rate,
                  negatives=self.negatives, patience=self.patience)
        _one_of("ranking", optimizer=(self.optimizer, ("adagrad", "adam", "sgd")),
                split=(self.split, SPLITS))
        _seed("ranking", self.seed)


@dataclass(frozen=True)
class FeaturesConfig:
    """The Feast store: `sqlite` (inside the features artifact) or `redis://HOST:PORT`.

    `recent_items` is how many of each user's latest positive items the `recent_items` user
    feature keeps (the filtering stage drops them as already seen).
    """

    online_store: str = "sqlite"
    recent_items: int = 50

    def __post_init__(self) -> None:
        _positive("features", recent_items=self.recent_items)
        if self.online_store != "sqlite" and not _REDIS_URL.fullmatch(self.online_store):
            raise ConfigError(
                "expected features.online_store to be 'sqlite' or 'redis://HOST:PORT', "
                f"found {self.online_store!r}"
            )


_REDIS_URL = re.compile(r"redis://[^:/\s]+:\d{1,5}")


@dataclass(frozen=True)
class IndexConfig:
    """Faiss index type (`auto`, `flat`, `ivf`, `hnsw` or a factory string) and tuning target.

    `auto` is exact below `exact_below` items and IVF above; approximate indexes are tuned
    until recall@100 against exact search reaches `target_recall` on `tune_queries` queries:
    `queries` = auto (users through the query tower when there is one, else items), users,
    items, or a .parquet/.npy file of query embeddings.
    """

    index: str = "auto"
    target_recall: float = 0.95
    exact_below: int = 50_000
    tune_queries: int = 1000
    queries: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        _positive("index", tune_queries=self.tune_queries)
        _seed("index", self.seed)
        if not self.index.strip():
            raise ConfigError("expected index.index auto, flat, ivf, hnsw or a faiss factory "
                              "string, found an empty string")
        if math.isnan(self.target_recall) or not 0 < self.target_recall <= 1:
            raise ConfigError(f"expected index.target_recall in (0, 1], "
                              f"found {self.target_recall!r}")
        if self.exact_below < 0:
            raise ConfigError(f"expected index.exact_below >= 0, found {self.exact_below!r}")


@dataclass(frozen=True)
class FilteringConfig:
    """Business rules applied to candidates before scoring.

    `exclude_seen` drops the user's recent items (the feature store's `recent_items`);
    `exclude_out_of_stock` drops items whose `stock_column` is 0; `exclude_categories`
    drops items whose `category_column` is one of them. A rule whose column the item
    table lacks does nothing.
    """

    exclude_seen: bool = True
    exclude_out_of_stock: bool = True
    exclude_categories: list[str] = field(default_factory=list)
    stock_column: str = "in_stock"
    category_column: str = "category"


DEFAULT_RETRIEVAL_WEIGHT = 10.0
"""The blend weight of a ranker trained without retrieval's validation candidates."""


@dataclass(frozen=True)
class OrderingConfig:
    """How the final list is ordered: `topk` or `softmax` sampling (weights exp(score / T),
    seeded per user), optionally at most `category_cap` items per `category_column`.

    The score ordered by is the ranker's click logit plus `retrieval_weight` times the
    retrieval score (0 is the ranker alone). Unset, it is the weight `train-ranking` chose on
    validation (docs/pipeline.md), or DEFAULT_RETRIEVAL_WEIGHT for a ranker that chose none.
    """

    strategy: str = "topk"
    temperature: float = 1.0
    category_cap: int = 0
    category_column: str = "category"
    seed: int = 0
    retrieval_weight: float | None = None

    def __post_init__(self) -> None:
        _one_of("ordering", strategy=(self.strategy, ("topk", "softmax")))
        _seed("ordering", self.seed)
        _positive("ordering", temperature=self.temperature)
        if self.category_cap < 0:
            raise ConfigError(f"expected ordering.category_cap >= 0, found {self.category_cap}")
        if self.retrieval_weight is not None and not 0 <= self.retrieval_weight < math.inf:
            raise ConfigError(
                f"expected ordering.retrieval_weight >= 0, found {self.retrieval_weight}")


@dataclass(frozen=True)
class ServingConfig:
    """Request defaults and Triton deployment settings (docs/serve.md).

    `max_batch_size` > 0 lets Triton batch concurrent requests (0 turns batching off);
    `batch_delay_us` is how long a request may wait for others to join its batch. It is 0
    by default: requests queued while a stage is busy are still batched, and each of the
    four stages would otherwise add the delay to every request (benchmarks/RESULTS.md).
    """

    top_k: int = 10
    candidates: int = 200
    device: str = "cpu"
    instances: int = 1
    http_port: int = 8000
    grpc_port: int = 8001
    host: str = "127.0.0.1"
    max_batch_size: int = 64
    batch_delay_us: int = 0

    def __post_init__(self) -> None:
        _positive("serving", top_k=self.top_k, candidates=self.candidates,
                  instances=self.instances)
        _one_of("serving", device=(self.device, ("cpu", "gpu")))
        if self.candidates < self.top_k:
            raise ConfigError(f"expected serving.candidates >= serving.top_k, found "
                              f"{self.candidates} < {self.top_k}; raise serving.candidates or "
                              "lower serving.top_k")
        for name in ("http_port", "grpc_port"):
            if not 1 <= getattr(self, name) <= 65535:
                raise ConfigError(f"expected serving.{name} in 1..65535, "
                                  f"found {getattr(self, name)}")
        if self.max_batch_size < 0 or self.batch_delay_us < 0:
            raise ConfigError(f"expected serving.max_batch_size and serving.batch_delay_us >= 0, "
                              f"found {self.max_batch_size} and {self.batch_delay_us}")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    filtering: FilteringConfig = field(default_factory=FilteringConfig)
    ordering: OrderingConfig = field(default_factory=OrderingConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    if isinstance(annotation, str):
        annotation = eval(annotation, globals(), vars(typing))  # noqa: S307 - our own annotations
    origin = typing.get_origin(annotation)
    if origin is list:
        (inner,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"expected a list for {where}, found {value!r}")
        return [_check_type(v, inner, where) for v in value]
    if origin in (typing.Union, types.UnionType):  # `X | None`: TOML has no null, so an X
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _check_type(value, inner, where)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is not bool and isinstance(value, bool) or not isinstance(value, annotation):
        raise ConfigError(f"expected {annotation.__name__} for {where}, found {value!r}")
    return value


def _section(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(
                f"unknown key {key!r} in {where}; expected one of: {', '.join(known)}"
            )
    typed = {k: _check_type(v, known[k].type, f"{where} key {k!r}") for k, v in values.items()}
    return cls(**typed)


def load_config(path: Path) -> Config:
    """Read mstage.toml (defaults when absent); errors name the file and the key."""
    if not path.exists():
        return Config()
    if path.is_dir():
        raise ConfigError(f"expected {path} to be a file, found a directory; remove or rename "
                          "it (mstage writes its settings there)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"expected UTF-8 text in {path}, found byte 0x{e.object[e.start]:02x} "
                          f"at offset {e.start}; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"expected valid TOML in {path}, found an error: {e}") from None
    sections = {f.name: f for f in dataclasses.fields(Config)}
    parsed = {}
    for name, values in raw.items():
        if name not in sections:
            raise ConfigError(
                f"unknown section [{name}] in {path}; expected one of: {', '.join(sections)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"expected a [{name}] table in {path}, found {values!r}")
        section_cls = sections[name].default_factory
        parsed[name] = _section(section_cls, values, f"[{name}] of {path}")
    return Config(**parsed)


def override(section: Any, *, flags: bool = False, **options: Any) -> Any:
    """A copy of a config section with the CLI options that were given (not None).

    With `flags`, a value the section rejects is named as its option (`--batch-size`) rather
    than its key (`retrieval.batch_size`): the options are what the user typed."""
    given = {k: v for k, v in options.items() if v is not None}
    try:
        return dataclasses.replace(section, **given)
    except ConfigError as e:
        if not flags:
            raise
        message = str(e)
        for key in given:
            message = re.sub(rf"\b[a-z_]+\.{key}\b", "--" + key.replace("_", "-"), message)
        if message != str(e) and " > 0, found " in message:
            message += "; pass a positive value"
        raise ConfigError(message) from None


def as_dict(section: Any) -> dict[str, Any]:
    return dataclasses.asdict(section)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def save_section(path: Path, name: str, section: Any) -> None:
    """Write one section into mstage.toml, keeping the others as they are."""
    current = tomllib.loads(path.read_text()) if path.exists() else {}
    current[name] = as_dict(section)
    lines = []
    for sec, values in current.items():
        lines.append(f"[{sec}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
