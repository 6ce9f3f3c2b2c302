"""How sure a comparison is: per-user standard errors and paired differences with 95 % intervals.

Every model is measured on the same evaluated users, so two models are compared user by
user: the interval of the mean per-user difference is much narrower than the two models'
own intervals suggest (their per-user values move together). Normal approximation, which
holds at the hundreds of users every evaluation has.
"""

from __future__ import annotations

import math

import numpy as np

Z_95 = 1.959963984540054


def standard_errors(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Standard error of each metric's mean over users."""
    return {name: _se(values) for name, values in per_user.items()}


def paired_differences(a: dict[str, np.ndarray], b: dict[str, np.ndarray]
                       ) -> dict[str, dict[str, float]]:
    """Per metric: mean of a - b over the same users and its 95 % interval."""
    out = {}
    for name in a.keys() & b.keys():
        diff = a[name] - b[name]
        mean, half = float(diff.mean()) if diff.size else 0.0, Z_95 * _se(diff)
        out[name] = {"difference": mean, "low": mean - half, "high": mean + half}
    return dict(sorted(out.items()))


def _se(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
