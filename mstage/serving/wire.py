"""How columns travel between the ensemble's models: packed, one byte tensor per step.

Every tensor a python-backend model writes costs its stub ~55 us per request (a tensor made
from DLPack; measured in the stub, benchmarks/RESULTS.md), and the server copies each one
into shared memory again for every model that reads it. Dynamic batching shares none of
this: each request gets its own tensors. So the columns a step hands to later steps leave
it row by row in one uint8 tensor (`PACKED`), and each reader takes back the columns it
needs as views. What clients see keeps its own name and type: request inputs, response
columns, and columns of variable width, which cannot be laid out in fixed bytes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mstage.columns import ColumnSpec

PACKED = "packed"
"""A model's packed output; a reader's input of it is `packed_<step>` (`packed_input`)."""
ALIGN = 8  # row width and column offsets: every view of the bytes is aligned for its dtype


def packable(spec: ColumnSpec) -> bool:
    """Fixed bytes per row: no variable dimension after the batch."""
    return all(d > 0 for d in spec.shape[1:])


def packed_input(step: str) -> str:
    """A reader's input name for the packed tensor of `step`."""
    return f"{PACKED}_{step.replace('-', '_')}"


@dataclass(frozen=True)
class Packing:
    """Columns laid out side by side in the bytes of one row; widest dtype first, so every
    column starts aligned for its dtype."""

    columns: tuple[ColumnSpec, ...]

    @classmethod
    def of(cls, columns: Sequence[ColumnSpec]) -> Packing:
        return cls(tuple(sorted(columns, key=lambda c: -np.dtype(c.dtype).itemsize)))

    @functools.cached_property  # read on every request: computed once
    def offsets(self) -> list[tuple[ColumnSpec, int, int]]:
        """(column, first byte, bytes) per column."""
        out, start = [], 0
        for c in self.columns:
            size = np.dtype(c.dtype).itemsize * math.prod(c.shape[1:])
            out.append((c, start, size))
            start += size
        return out

    @functools.cached_property
    def width(self) -> int:
        """Bytes per row, padded to ALIGN."""
        end = sum(size for _, _, size in self.offsets)
        return -(-end // ALIGN) * ALIGN

    @property
    def spec(self) -> ColumnSpec:
        """The packed tensor as a column (uint8, [B, width])."""
        return ColumnSpec(PACKED, "uint8", (-1, self.width))

    def pack(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """uint8 [B, width] holding the columns of `batch` (each in its declared shape)."""
        rows = len(batch[self.columns[0].name])
        out = np.zeros((rows, self.width), dtype=np.uint8)
        for c, start, size in self.offsets:
            values = np.ascontiguousarray(batch[c.name], dtype=c.dtype).reshape(rows, -1)
            out[:, start:start + size] = values.view(np.uint8)
        return out

    def unpack(self, packed: np.ndarray, names: Sequence[str] | None = None
               ) -> dict[str, np.ndarray]:
        """The columns (`names`, default all) as views of `packed` ([B, width] uint8)."""
        out = {}
        for c, start, size in self.offsets:
            if names is None or c.name in names:
                values = packed[:, start:start + size].view(c.dtype)
                out[c.name] = values.reshape(len(packed), *c.shape[1:])
        return out

    def to_json(self) -> list[dict]:
        return [c.to_json() for c in self.columns]

    @classmethod
    def from_json(cls, raw: Sequence[Mapping]) -> Packing:
        return cls(tuple(ColumnSpec.from_json(c) for c in raw))


@dataclass(frozen=True)
class ModelWire:
    """What one model exchanges besides request inputs: the plain outputs it writes (None:
    all its stage's), the columns it writes packed, and the packed inputs it reads (input
    name -> the producer's packing). Written into the model's config by the repository writer,
    read back by the model at `initialize`."""

    outputs: tuple[str, ...] | None = None
    packing: Packing | None = None
    unpacks: Mapping[str, Packing] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"outputs": None if self.outputs is None else list(self.outputs),
                "packing": None if self.packing is None else self.packing.to_json(),
                "unpacks": {k: p.to_json() for k, p in self.unpacks.items()}}

    @classmethod
    def from_json(cls, raw: Mapping) -> ModelWire:
        outputs, packing = raw.get("outputs"), raw.get("packing")
        return cls(None if outputs is None else tuple(outputs),
                   None if packing is None else Packing.from_json(packing),
                   {k: Packing.from_json(p) for k, p in raw.get("unpacks", {}).items()})
