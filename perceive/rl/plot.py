"""The curves of GRPO runs: each run folder's ``telemetry.jsonl`` (one JSON object per optimizer
step, written by ``perceive train CONFIG`` with ``method: grpo``) drawn to one PNG, one panel per
metric, one line per run (labelled with its folder's name), x = the step.

A panel's metric is a key of the telemetry lines (``reward/mean``, ``reward/format/mean``,
``accuracy``, ``kl``, ...). A step logged twice (a run resumed from a checkpoint before its last
logged step logs the steps after the checkpoint again) is drawn with its last line: the one the
finished run's weights came from. Matplotlib draws on a bare :class:`~matplotlib.figure.Figure`
(the Agg renderer): no display, no pyplot state shared between calls.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from perceive.errors import ConfigError, InputError, OutputError
from perceive.rl.telemetry import TELEMETRY_FILE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TELEMETRY = TELEMETRY_FILE
WRITTEN_BY = "`perceive train CONFIG` with `method: grpo` writes it"
#: the picture's geometry: panels of PANEL_SIZE inches, COLUMNS to a row, at DPI dots per inch
PANEL_SIZE = (4.5, 3.0)
COLUMNS = 3
DPI = 100
_COMPONENT = re.compile(r"^reward/(?P<name>.+)/mean$")


@dataclass(frozen=True)
class Panel:
    """One panel: the metric ``key`` against the step; ``band``, the key of its standard deviation
    (drawn as a band of +-std around the line); ``floor``, the key of a configured floor (a dashed
    horizontal line in the run's colour)."""

    key: str
    title: str
    band: str | None = None
    floor: str | None = None


# the default panels in order; the reward components go after the reward (default_panels)
HEAD = [Panel("reward/mean", "reward (mean, +-std)", band="reward/std")]
TAIL = [Panel("accuracy", "accuracy"),
        Panel("tool_use_rate", "tool-use rate (dashed: the floor)", floor="tool_use_floor"),
        Panel("crop_iou", "crop IoU"),
        Panel("hops_per_sample", "hops per sample"),
        Panel("response_length", "response length (tokens)"),
        Panel("entropy", "entropy"),
        Panel("kl", "KL to the reference"),
        Panel("clip_fraction", "clip fraction"),
        Panel("grad_norm", "gradient norm"),
        Panel("zero_advantage_fraction", "groups with equal rewards (no signal)"),
        Panel("truncated_fraction", "cut by a budget (masked)"),
        Panel("rollout_samples_per_s", "rollouts / s"),
        Panel("update_samples_per_s", "update trajectories / s")]


def read_telemetry(run: Path) -> list[dict]:
    """The telemetry lines of the run folder ``run``, one dict per step in step order (a step
    logged twice: its last line). Raises :class:`~perceive.errors.InputError` naming the folder
    when it has no ``telemetry.jsonl``, an empty one, or a line that is not a JSON object with an
    integer ``step``."""
    path = Path(run) / TELEMETRY
    if not Path(run).is_dir():
        raise InputError(f"{run} is not a run folder" + (" (it is a file)" if Path(run).exists() else ""),
                         hint=f"give the output folder of a GRPO run: it holds {TELEMETRY} ({WRITTEN_BY})")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"the run folder {run} has no {TELEMETRY}",
                         hint=f"{WRITTEN_BY}, one line per optimizer step; is {run} a GRPO run's output folder?"
                         ) from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    by_step: dict[int, dict] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}, line {n}: not JSON ({exc.msg})",
                             hint="a run killed while writing leaves a cut line: delete it") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise InputError(f"{path}, line {n}: not a telemetry line (a JSON object with an integer step)",
                             hint=f"{WRITTEN_BY}; do not edit it by hand")
        by_step[row["step"]] = row
    if not by_step:
        raise InputError(f"{path} is empty: the run logged no step",
                         hint=f"{WRITTEN_BY} after each optimizer step: let the run pass its first step")
    return [by_step[s] for s in sorted(by_step)]


def _value(row: dict, key: str | None) -> float:
    """``row[key]`` as a float; NaN (a gap in the line) when missing, null or not a number."""
    v = row.get(key) if key else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _has(runs: dict[str, list[dict]], key: str) -> bool:
    return any(not math.isnan(_value(row, key)) for rows in runs.values() for row in rows)


def default_panels(runs: dict[str, list[dict]]) -> list[Panel]:
    """The default panels that at least one run has a value for: the reward, each reward
    component's mean (by name), accuracy, tool-use rate, crop IoU, hops, response length,
    entropy, KL, clip fraction, gradient norm, the groups without signal, the truncated share,
    and rollout and update throughput."""
    names = sorted({m.group("name") for rows in runs.values() for row in rows for k in row
                    if (m := _COMPONENT.match(k))})
    components = [Panel(f"reward/{n}/mean", f"reward: {n} (mean, +-std)", band=f"reward/{n}/std") for n in names]
    return [p for p in HEAD + components + TAIL if _has(runs, p.key)]


def panels_for(runs: dict[str, list[dict]], metrics: list[str] | None) -> list[Panel]:
    """The panels to draw: ``metrics`` (telemetry keys, in that order), else :func:`default_panels`.
    A metric's band and floor are the default panel's. Raises :class:`~perceive.errors.InputError`
    for a metric no run has."""
    if metrics is None:
        return default_panels(runs)
    known = {p.key: p for p in HEAD + TAIL}
    panels = []
    for key in metrics:
        if not _has(runs, key):
            have = sorted({k for rows in runs.values() for row in rows for k in row if _has(runs, k)} - {"step"})
            raise InputError(f"no run has a value for the metric {key!r}", hint=f"the runs have: {', '.join(have)}")
        m = _COMPONENT.match(key)
        band = f"reward/{m.group('name')}/std" if m else None
        panels.append(known.get(key) or Panel(key, key, band=band))
    return panels


def run_labels(runs: list[Path]) -> list[str]:
    """Each run's label: its folder's name; with the folder above where two names are the same,
    and ``#k`` where even that is."""
    names = [Path(r).name for r in runs]
    labels = [n if names.count(n) == 1 else "/".join(Path(r).resolve().parts[-2:]) for n, r in zip(names, runs,
                                                                                                    strict=True)]
    seen: dict[str, int] = {}
    for i, label in enumerate(list(labels)):
        seen[label] = seen.get(label, 0) + 1
        labels[i] = label if seen[label] == 1 else f"{label} #{seen[label]}"
    return labels


def curves_figure(runs: dict[str, list[dict]], panels: list[Panel]) -> Figure:
    """The figure: one axes per panel, COLUMNS to a row, PANEL_SIZE inches each at DPI. In each
    axes ``lines`` holds first one line per run (in ``runs`` order, labelled with its name, x the
    steps, y the metric with NaN gaps), then the runs' dashed floors."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("drawing the curves needs matplotlib (the rl extra)",
                          hint="pip install 'perceive[rl]'") from None
    cols = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes, panels, strict=False):
        for i, (label, lines) in enumerate(runs.items()):
            steps = [row["step"] for row in lines]
            ys = [_value(row, panel.key) for row in lines]
            ax.plot(steps, ys, color=f"C{i % 10}", label=label, marker="." if len(steps) < 30 else None)
            if panel.band:
                std = [_value(row, panel.band) for row in lines]
                ax.fill_between(steps, [y - s for y, s in zip(ys, std, strict=True)],
                                [y + s for y, s in zip(ys, std, strict=True)], color=f"C{i % 10}", alpha=0.2)
        for i, lines in enumerate(runs.values()):
            floors = [f for row in lines if not math.isnan(f := _value(row, panel.floor))]
            if floors:  # the configured floor: constant over a run, its last value
                ax.axhline(floors[-1], color=f"C{i % 10}", linestyle="--", linewidth=1)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=9)
    return fig


def plot_runs(runs: list[Path], out: Path, metrics: list[str] | None = None) -> Path:
    """Draw the curves of the GRPO run folders ``runs`` to the PNG ``out`` (its folder created if
    missing) and return ``out``. ``metrics``: the telemetry keys to draw, one panel each, in that
    order; default: :func:`default_panels`. Raises :class:`~perceive.errors.InputError` (no run, a
    folder without telemetry, a metric no run has, ``out`` not a .png) or
    :class:`~perceive.errors.OutputError` (``out`` cannot be written)."""
    out = Path(out)
    if not runs:
        raise InputError("no run to plot", hint="give one or more GRPO run folders")
    if out.suffix.lower() != ".png":
        raise InputError(f"the curves are a PNG picture, and {out} does not end in .png",
                         hint=f"give a path such as {out.with_suffix('.png')}")
    telemetry = dict(zip(run_labels(runs), (read_telemetry(Path(r)) for r in runs), strict=True))
    fig = curves_figure(telemetry, panels_for(telemetry, metrics))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
    except OSError as exc:
        raise OutputError(f"cannot write the curves to {out}: {exc.strerror or exc}",
                          hint="give a path in a folder you may write in") from None
    return out
