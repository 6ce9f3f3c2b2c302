"""Write a self-contained Triton model repository: one python model per stage plus an ensemble.

Layout (`REPO` is what `tritonserver --model-repository` reads):

    REPO/<stage>/config.pbtxt          backend "python", instance group, batching
    REPO/<stage>/1/model.py            two lines: the shared `make_model()`
    REPO/<stage>/1/artifacts/          operator.json + the operator's own saved files
    REPO/<stage>/1/python/             optional extra modules (operators defined outside mstage)
    REPO/<ensemble>/config.pbtxt       platform "ensemble" wiring the stages
    REPO/<ensemble>/1/                 empty, Triton wants a version directory

Wiring follows the in-process pipeline: a stage reads each input from the latest earlier
stage that wrote a column of that name, else from the request. With `max_batch_size > 0`
every model (ensemble included) batches along the first dimension, so config dims drop it:
a `(-1,)` column is `dims: [1]` reshaped to `[]` (one value per row, a `[B]` array for the
operator) and a `(-1, N)` column is `dims: [N]`.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mstage.errors import ConfigError, UsageError
from mstage.pipeline.operator import ColumnSpec, Operator, save_operator
from mstage.serving.python_model import ARTIFACTS_DIR, CODE_DIR

ENSEMBLE = "mstage_recommender"
USER_ID = ColumnSpec("user_id", "int64", (-1,))
TOP_K = ColumnSpec("top_k", "int64", (-1,), optional=True)
REQUEST_INPUTS = (USER_ID, TOP_K)
RESPONSE_OUTPUTS = ("item_ids", "scores")
DEVICES = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}

MODEL_PY = '''\
"""Triton python-backend entry point for one mstage stage (its operator is in artifacts/)."""

from mstage.serving.python_model import make_model

TritonPythonModel = make_model()
'''


@dataclass
class Step:
    """One ensemble step: which ensemble tensor feeds each input, and where outputs go."""

    model: str
    operator: Operator
    input_map: dict[str, str] = field(default_factory=dict)   # model input -> ensemble tensor
    output_map: dict[str, str] = field(default_factory=dict)  # model output -> ensemble tensor


@dataclass
class EnsemblePlan:
    """The checked wiring of an ensemble, before anything is written."""

    name: str
    inputs: list[ColumnSpec]
    outputs: list[ColumnSpec]
    steps: list[Step]


def plan_ensemble(
    stages: Sequence[tuple[str, Operator]],
    *,
    name: str = ENSEMBLE,
    request_inputs: Sequence[ColumnSpec] = REQUEST_INPUTS,
    response_outputs: Sequence[str] = RESPONSE_OUTPUTS,
) -> EnsemblePlan:
    """Wire stages by column name; errors name the missing column and what is available.

    Request inputs no stage reads are left out; one is optional only when every reader
    declares it optional. A stage output becomes the ensemble tensor `<stage>.<column>`,
    except the last writer of each response output, which writes the plain name.
    """
    if not stages:
        raise ConfigError("expected at least one stage to build an ensemble, found none")
    names = [n for n, _ in stages]
    for model in [*names, name]:
        if not model.replace("-", "_").isidentifier():
            raise ConfigError(f"expected a model name of letters, digits, - and _, found {model!r}")
    if len(set([*names, name])) != len(names) + 1:
        raise ConfigError(f"expected distinct model names, found {[*names, name]}")

    available: dict[str, tuple[ColumnSpec, str | None]] = {
        c.name: (c, None) for c in request_inputs
    }
    last_writer: dict[str, str] = {}
    sources: list[dict[str, tuple[str | None, str]]] = []  # per step: input -> (producer, column)
    readers: dict[str, list[ColumnSpec]] = {}
    for model, operator in stages:
        source_of = {}
        for spec in operator.inputs:
            if spec.name not in available:
                if spec.optional:
                    continue
                raise ConfigError(
                    f"stage {model} expects column {spec.describe()}, found no earlier stage or "
                    f"request input writing it; available: {sorted(available)}"
                )
            source, producer = available[spec.name]
            _check_compatible(source, spec, model)
            source_of[spec.name] = (producer, spec.name)
            if producer is None:
                readers.setdefault(spec.name, []).append(spec)
        for spec in operator.outputs:
            available[spec.name] = (spec, model)
            last_writer[spec.name] = model
        sources.append(source_of)

    outputs = []
    for column in response_outputs:
        if column not in last_writer:
            raise ConfigError(f"expected a stage writing response output {column!r}, found "
                              f"stages writing only {sorted(last_writer)}")
        outputs.append(available[column][0])

    def tensor(producer: str | None, column: str) -> str:
        final = column in response_outputs and last_writer.get(column) == producer
        return column if producer is None or final else f"{producer}.{column}"

    steps = [Step(model, operator) for model, operator in stages]
    by_model = {s.model: s for s in steps}
    for step, source_of in zip(steps, sources, strict=True):
        for model_input, (producer, column) in source_of.items():
            step.input_map[model_input] = tensor(producer, column)
            if producer is not None:
                by_model[producer].output_map[column] = tensor(producer, column)
    for column in response_outputs:
        by_model[last_writer[column]].output_map[column] = column
    for step in steps:  # declaration order, so configs read like the operator
        order = [c.name for c in step.operator.outputs]
        step.output_map = dict(sorted(step.output_map.items(), key=lambda kv: order.index(kv[0])))

    inputs = [
        ColumnSpec(c.name, c.dtype, c.shape, optional=all(r.optional for r in readers[c.name]))
        for c in request_inputs if c.name in readers
    ]
    return EnsemblePlan(name, inputs, outputs, steps)


def _check_compatible(source: ColumnSpec, target: ColumnSpec, model: str) -> None:
    same_rank = len(source.shape) == len(target.shape)
    if source.dtype != target.dtype or not same_rank or any(
        -1 not in (a, b) and a != b for a, b in zip(source.shape, target.shape, strict=False)
    ):
        raise ConfigError(f"stage {model} expects column {target.describe()}, found "
                          f"{source.describe()} upstream")


def write_repository(
    repo_dir: Path,
    stages: Sequence[tuple[str, Operator]],
    *,
    name: str = ENSEMBLE,
    request_inputs: Sequence[ColumnSpec] = REQUEST_INPUTS,
    response_outputs: Sequence[str] = RESPONSE_OUTPUTS,
    device: str = "cpu",
    instances: int = 1,
    max_batch_size: int = 64,
    max_queue_delay_us: int = 200,
    code: Sequence[Path] = (),
) -> EnsemblePlan:
    """Write the model repository for `stages` into `repo_dir` (absent or empty).

    Each operator is saved with `save_operator` into its model's `1/artifacts/`, so the
    repository holds no paths outside itself. `code` lists extra single-file modules copied
    next to every model (for operators whose class lives outside the mstage package).
    `max_batch_size=0` turns Triton batching off: config dims then keep the batch dimension.
    """
    if device not in DEVICES:
        raise ConfigError(f"expected device cpu or gpu, found {device!r}")
    if instances < 1 or max_batch_size < 0 or max_queue_delay_us < 0:
        raise ConfigError(f"expected instances >= 1 and max_batch_size, max_queue_delay_us >= 0, "
                          f"found {instances}, {max_batch_size}, {max_queue_delay_us}")
    plan = plan_ensemble(stages, name=name, request_inputs=request_inputs,
                         response_outputs=response_outputs)
    repo_dir = Path(repo_dir)
    if repo_dir.exists() and any(repo_dir.iterdir()):
        raise UsageError(f"expected an empty directory for the model repository, found files in "
                         f"{repo_dir}; choose another path or remove it")
    for step in plan.steps:
        version_dir = repo_dir / step.model / "1"
        save_operator(step.operator, version_dir / ARTIFACTS_DIR)
        (version_dir / "model.py").write_text(MODEL_PY)
        for module in code:
            (version_dir / CODE_DIR).mkdir(exist_ok=True)
            shutil.copy2(module, version_dir / CODE_DIR / Path(module).name)
        (repo_dir / step.model / "config.pbtxt").write_text(stage_config(
            step.model, step.operator.inputs, step.operator.outputs, device=device,
            instances=instances, max_batch_size=max_batch_size,
            max_queue_delay_us=max_queue_delay_us))
    (repo_dir / plan.name / "1").mkdir(parents=True)
    (repo_dir / plan.name / "config.pbtxt").write_text(
        ensemble_config(plan, max_batch_size=max_batch_size))
    return plan


def stage_config(
    model: str, inputs: Sequence[ColumnSpec], outputs: Sequence[ColumnSpec], *,
    device: str = "cpu", instances: int = 1, max_batch_size: int = 64,
    max_queue_delay_us: int = 200,
) -> str:
    """config.pbtxt of one python-backend stage."""
    lines = [f'name: "{model}"', 'backend: "python"', f"max_batch_size: {max_batch_size}"]
    lines += _tensors("input", inputs, max_batch_size)
    lines += _tensors("output", outputs, max_batch_size)
    lines += ["instance_group [", "  {", f"    count: {instances}",
              f"    kind: {DEVICES[device]}", "  }", "]"]
    if max_batch_size > 0:
        lines += ["dynamic_batching {",
                  f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}"]
    return "\n".join(lines) + "\n"


def ensemble_config(plan: EnsemblePlan, *, max_batch_size: int = 64) -> str:
    """config.pbtxt of the ensemble that chains the stages."""
    lines = [f'name: "{plan.name}"', 'platform: "ensemble"', f"max_batch_size: {max_batch_size}"]
    lines += _tensors("input", plan.inputs, max_batch_size, reshape=False)
    lines += _tensors("output", plan.outputs, max_batch_size, reshape=False)
    lines += ["ensemble_scheduling {", "  step ["]
    for i, step in enumerate(plan.steps):
        lines += ["    {", f'      model_name: "{step.model}"', "      model_version: -1"]
        lines += [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in
                  step.input_map.items()]
        lines += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in
                  step.output_map.items()]
        lines.append("    }" + ("," if i < len(plan.steps) - 1 else ""))
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def _tensors(kind: str, specs: Sequence[ColumnSpec], max_batch_size: int,
             reshape: bool = True) -> list[str]:
    """Tensor declarations; a one-value-per-row column is `dims: [1]`, reshaped to `[]` for the
    operator (ensembles cannot reshape: their clients send such a column as `[B, 1]`)."""
    if not specs:
        return []
    lines = [f"{kind} ["]
    for i, spec in enumerate(specs):
        dims = list(spec.shape[1:]) if max_batch_size > 0 else list(spec.shape)
        lines += ["  {", f'    name: "{spec.name}"', f"    data_type: TYPE_{spec.triton_dtype}"]
        if dims:
            lines.append(f"    dims: {_list(dims)}")
        else:
            lines += ["    dims: [ 1 ]"] + (["    reshape: { shape: [ ] }"] if reshape else [])
        if spec.optional and kind == "input":
            lines.append("    optional: true")
        lines.append("  }" + ("," if i < len(specs) - 1 else ""))
    lines.append("]")
    return lines


def _list(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"
