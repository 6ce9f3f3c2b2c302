"""Write a self-contained Triton model repository: one python model per stage plus an ensemble.

Layout (`REPO` is what `tritonserver --model-repository` reads):

    REPO/<stage>/config.pbtxt          backend "python", instance group, batching
    REPO/<stage>/1/model.py            two lines: the shared `make_model()`
    REPO/<stage>/1/artifacts/          stage.json, arrays.npz and the artifact files it reads
    REPO/<stage>/1/python/             optional extra modules (stages defined outside mstage)
    REPO/<ensemble>/config.pbtxt       platform "ensemble" wiring the stages
    REPO/<ensemble>/1/                 empty, Triton wants a version directory

Wiring is the Plan's, the same the in-process pipeline runs: a stage reads each input from
the latest earlier stage that wrote a column of that name, else from the request. The
columns a step hands to later steps travel packed in one byte tensor `<model>.packed`
(mstage/serving/wire.py; a reader's input `packed_<step>`), except those of variable width,
which become `<model>.<column>`; the last writer of each response column writes the plain
name. Each stage's config records the layout in its `mstage_wire` parameter. With
`max_batch_size > 0` every model (ensemble included) batches along the first dimension, so
config dims drop it: a `(-1,)` column is `dims: [1]` reshaped to `[]` (one value per row, a
`[B]` array for the stage) and a `(-1, N)` column is `dims: [N]`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mstage.columns import ColumnSpec
from mstage.errors import ConfigError, UsageError
from mstage.pipeline.plan import Plan, Step
from mstage.serving.python_model import ARTIFACTS_DIR, CODE_DIR, WIRE_PARAMETER
from mstage.serving.wire import PACKED, ModelWire, Packing, packable, packed_input

ENSEMBLE = "mstage_recommender"
DEVICES = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}

MODEL_PY = '''\
"""Triton python-backend entry point for one mstage stage (saved in artifacts/)."""

from mstage.serving.python_model import make_model

TritonPythonModel = make_model()
'''


def write_repository(
    repo_dir: Path,
    plan: Plan,
    *,
    name: str = ENSEMBLE,
    model_prefix: str = "",
    device: str = "cpu",
    instances: int = 1,
    max_batch_size: int = 64,
    max_queue_delay_us: int = 200,
    code: Sequence[Path] = (),
    pack: bool = True,
) -> list[str]:
    """Write the model repository of `plan` into `repo_dir` (absent or empty); returns the
    model names, ensemble last.

    Each stage is saved into its model's `1/artifacts/` (only the files it reads), so the
    repository holds no paths outside itself; stage `s` becomes model `<model_prefix>s`.
    `code` lists extra single-file modules copied next to every model (for stages whose
    class lives outside the mstage package). `max_batch_size=0` turns Triton batching off:
    config dims then keep the batch dimension. `pack=False` sends every column as its own
    tensor (what packing saves is measured against that).
    """
    if device not in DEVICES:
        raise ConfigError(f"expected device cpu or gpu, found {device!r}")
    if instances < 1 or max_batch_size < 0 or max_queue_delay_us < 0:
        raise ConfigError(f"expected instances >= 1 and max_batch_size, max_queue_delay_us >= 0, "
                          f"found {instances}, {max_batch_size}, {max_queue_delay_us}")
    models = [model_prefix + step.name for step in plan.steps]
    for model in [*models, name]:
        if not model.replace("-", "_").isidentifier():
            raise ConfigError(f"expected a model name of letters, digits, - and _, found {model!r}")
    if name in models:
        raise ConfigError(f"expected distinct model names, found {[*models, name]}")
    reserved = [c.name for _, stage in plan.stages for c in [*stage.inputs, *stage.outputs]
                if c.name == PACKED or c.name.startswith(f"{PACKED}_")]
    if pack and reserved:
        raise ConfigError(f"expected no column named {PACKED!r} or {PACKED}_*, which carry "
                          f"packed columns between models, found {reserved[0]!r}; rename it")
    repo_dir = Path(repo_dir)
    if repo_dir.exists() and any(repo_dir.iterdir()):
        raise UsageError(f"expected an empty directory for the model repository, found files in "
                         f"{repo_dir}; choose another path or remove it")
    wires = _wires(plan, model_prefix, pack)
    for model, step in zip(models, plan.steps, strict=True):
        version_dir = repo_dir / model / "1"
        step.stage.save(version_dir / ARTIFACTS_DIR)
        (version_dir / "model.py").write_text(MODEL_PY)
        for module in code:
            (version_dir / CODE_DIR).mkdir(exist_ok=True)
            shutil.copy2(module, version_dir / CODE_DIR / Path(module).name)
        wire = wires[step.name]
        (repo_dir / model / "config.pbtxt").write_text(stage_config(
            model, wire.inputs(step), wire.outputs(step), device=device,
            instances=instances, max_batch_size=max_batch_size,
            max_queue_delay_us=max_queue_delay_us, wire=wire.model))
    (repo_dir / name / "1").mkdir(parents=True)
    (repo_dir / name / "config.pbtxt").write_text(
        ensemble_config(plan, wires, name=name, model_prefix=model_prefix,
                        max_batch_size=max_batch_size))
    return [*models, name]


def stage_config(
    model: str, inputs: Sequence[ColumnSpec], outputs: Sequence[ColumnSpec], *,
    device: str = "cpu", instances: int = 1, max_batch_size: int = 64,
    max_queue_delay_us: int = 200, wire: ModelWire | None = None,
) -> str:
    """config.pbtxt of one python-backend stage; `wire` is what it packs and unpacks."""
    lines = [f'name: "{model}"', 'backend: "python"', f"max_batch_size: {max_batch_size}"]
    lines += _tensors("input", inputs, max_batch_size)
    lines += _tensors("output", outputs, max_batch_size)
    if wire is not None:
        value = json.dumps(json.dumps(wire.to_json(), separators=(",", ":")))
        lines += ["parameters {", f'  key: "{WIRE_PARAMETER}"',
                  f"  value: {{ string_value: {value} }}", "}"]
    lines += ["instance_group [", "  {", f"    count: {instances}",
              f"    kind: {DEVICES[device]}", "  }", "]"]
    if max_batch_size > 0:
        lines += ["dynamic_batching {",
                  f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}"]
    return "\n".join(lines) + "\n"


def ensemble_config(plan: Plan, wires: dict[str, _StepWire], *, name: str = ENSEMBLE,
                    model_prefix: str = "", max_batch_size: int = 64) -> str:
    """config.pbtxt of the ensemble that chains the plan's stages, tensors named by `wires`."""
    lines = [f'name: "{name}"', 'platform: "ensemble"', f"max_batch_size: {max_batch_size}"]
    lines += _tensors("input", plan.inputs, max_batch_size, reshape=False)
    lines += _tensors("output", plan.outputs, max_batch_size, reshape=False)
    lines += ["ensemble_scheduling {", "  step ["]
    for i, step in enumerate(plan.steps):
        lines += ["    {", f'      model_name: "{model_prefix}{step.name}"',
                  "      model_version: -1"]
        wire = wires[step.name]
        lines += [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in wire.reads.items()]
        lines += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in wire.writes.items()]
        lines.append("    }" + ("," if i < len(plan.steps) - 1 else ""))
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


@dataclass
class _StepWire:
    """How one step's tensors are named in the ensemble: model input -> ensemble tensor
    (`reads`), model output -> ensemble tensor (`writes`), and what the model packs."""

    reads: dict[str, str] = field(default_factory=dict)
    writes: dict[str, str] = field(default_factory=dict)
    packing: Packing | None = None
    unpacks: dict[str, Packing] = field(default_factory=dict)

    @property
    def plain(self) -> list[str]:
        """Output columns written as themselves."""
        return [column for column in self.writes if self.packing is None or column != PACKED]

    @property
    def model(self) -> ModelWire:
        return ModelWire(tuple(self.plain), self.packing, self.unpacks)

    def inputs(self, step: Step) -> list[ColumnSpec]:
        """The model's declared inputs: its plain ones, then one per packed tensor it reads."""
        plain = [c for c in step.stage.inputs
                 if c.name in self.reads or c.name not in step.sources]  # unwired: optional
        return plain + [ColumnSpec(k, "uint8", (-1, p.width)) for k, p in self.unpacks.items()]

    def outputs(self, step: Step) -> list[ColumnSpec]:
        """The model's declared outputs: only what a later step or the response reads."""
        plain = [c for c in step.stage.outputs if c.name in self.plain]
        return plain + ([self.packing.spec] if self.packing else [])


def _wires(plan: Plan, model_prefix: str, pack: bool) -> dict[str, _StepWire]:
    """Each step's tensors in the ensemble. A column a later step reads travels in its
    producer's packed tensor when it has fixed width (and `pack`); otherwise, and for the
    response, as itself: `<model>.<column>`, or the plain name from its response writer."""
    wires = {step.name: _StepWire() for step in plan.steps}
    read = {step.name: [] for step in plan.steps}  # producer -> columns later steps read
    for step in plan.steps:
        for column, producer in step.sources.items():
            if producer is not None and column not in read[producer]:
                read[producer].append(column)
    for step in plan.steps:
        wire, model = wires[step.name], model_prefix + step.name
        specs = {c.name: c for c in step.stage.outputs}
        final = [c for c in specs if c in plan.response and plan.last_writer[c] == step.name]
        packed = [specs[c] for c in read[step.name]
                  if pack and c not in final and packable(specs[c])]
        for column in specs:  # in the stage's declared order, as the configs read
            if column in final:
                wire.writes[column] = column
            elif column in read[step.name] and specs[column] not in packed:
                wire.writes[column] = f"{model}.{column}"
        if packed:
            wire.packing = Packing.of(packed)
            wire.writes[PACKED] = f"{model}.{PACKED}"
        for column, producer in step.sources.items():
            if producer is None:
                wire.reads[column] = column
                continue
            source = wires[producer]
            if source.packing and column in [c.name for c in source.packing.columns]:
                wire.unpacks[packed_input(producer)] = source.packing
                wire.reads[packed_input(producer)] = source.writes[PACKED]
            else:
                wire.reads[column] = source.writes[column]
    return wires


def _tensors(kind: str, specs: Sequence[ColumnSpec], max_batch_size: int,
             reshape: bool = True) -> list[str]:
    """Tensor declarations; a one-value-per-row column is `dims: [1]`, reshaped to `[]` for the
    stage (ensembles cannot reshape: their clients send such a column as `[B, 1]`)."""
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
