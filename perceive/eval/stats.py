"""Every figure with its uncertainty: the mean over items, its standard error and a 95% interval.

With k samples per item (Avg@k) an item's figure is the mean of its k samples, and the spread is
over items: the samples of one item are not independent draws of the benchmark. A plain mean gets
the standard error ``sd(item means) / sqrt(n)`` and the normal interval ``mean ± 1.96 SE``,
clipped to [0, 1]; a
benchmark whose published score is another aggregate (HR-Bench: the mean of its cycles) gets a
seeded bootstrap over items (the same resampled items for every figure).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass

Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
NORMAL = "normal approximation over items, clipped to [0, 1]"
BOOTSTRAP = f"bootstrap over items ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED})"


@dataclass(frozen=True)
class Estimate:
    """A figure over ``n`` items: its value, standard error and 95% interval ``[lo, hi]``
    (``None`` for one item or none)."""

    mean: float | None
    se: float | None
    lo: float | None
    hi: float | None
    n: int

    def to_json(self) -> dict:
        return asdict(self)


def by_item(records: list[dict]) -> list[list[dict]]:
    """``records`` grouped by item (``index``), in first-seen order: the k samples of each item."""
    groups: dict[int, list[dict]] = {}
    for r in records:
        groups.setdefault(r["index"], []).append(r)
    return list(groups.values())


def mean_of(records: list[dict], key: str) -> float | None:
    """The mean of ``key`` over the records that have a value for it; ``None`` when none has."""
    vals = [r[key] for r in records if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def item_means(groups: list[list[dict]], key: str) -> list[float]:
    """Each item's mean of ``key`` over its samples (items with no value for it left out)."""
    return [m for m in (mean_of(g, key) for g in groups) if m is not None]


def normal(values: list[float], bounds: tuple[float, float] = (0.0, 1.0)) -> Estimate:
    """Mean, standard error and normal 95% interval of per-item values, the interval clipped to
    ``bounds`` (every metric is a score in [0, 1]: an accuracy of 0.25 over 4 items is not
    ``[-0.24, 0.74]``)."""
    n = len(values)
    if not n:
        return Estimate(None, None, None, None, 0)
    m = statistics.fmean(values)
    if n < 2:
        return Estimate(m, None, None, None, n)
    se = statistics.stdev(values) / math.sqrt(n)
    return Estimate(m, se, max(bounds[0], m - Z95 * se), min(bounds[1], m + Z95 * se), n)


def bootstrap(groups: list[list[dict]],
              figures: Callable[[list[dict]], dict[str, float | None]]) -> dict[str, Estimate]:
    """Each of ``figures`` of the records, with its spread over resampled items: standard error =
    the standard deviation of the resampled figures, interval = their 2.5th and 97.5th percentiles."""
    flat = [r for g in groups for r in g]
    point = figures(flat)
    n = len(groups)
    draws: dict[str, list[float]] = {key: [] for key in point}
    if n >= 2:
        rng = random.Random(BOOTSTRAP_SEED)
        for _ in range(BOOTSTRAP_RESAMPLES):
            values = figures([r for _ in range(n) for r in groups[rng.randrange(n)]])
            for key, v in values.items():
                if v is not None and key in draws:
                    draws[key].append(v)
    out = {}
    for key, value in point.items():
        d = sorted(draws[key])
        if value is None or len(d) < 2:
            out[key] = Estimate(value, None, None, None, n)
            continue
        lo, hi = d[int(0.025 * (len(d) - 1))], d[math.ceil(0.975 * (len(d) - 1))]
        out[key] = Estimate(value, statistics.stdev(d), lo, hi, n)
    return out
