"""`perceive.rl.plot`: a GRPO run's telemetry.jsonl drawn to a PNG, one panel per metric, one line per run."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from perceive.errors import InputError  # noqa: E402
from perceive.rl.plot import (  # noqa: E402
    COLUMNS,
    DPI,
    PANEL_SIZE,
    TELEMETRY,
    curves_figure,
    panels_for,
    plot_runs,
    read_telemetry,
)


def _line(step: int, floor: float | None = 0.05) -> dict:
    """A telemetry line of step ``step``, as the GRPO trainer writes it (crop IoU not measured)."""
    return {"step": step, "wall_s": 2.0 * step, "lr": 1e-5, "reward/mean": 0.1 * step, "reward/std": 0.05,
            "reward/exact_match/mean": 0.08 * step, "reward/exact_match/std": 0.4,
            "reward/format/mean": 1.0, "reward/format/std": 0.0, "accuracy": 0.05 * step,
            "tool_use_rate": 1.0 - 0.05 * step, "tool_use_floor": floor, "hops_per_sample": 1.0 - 0.02 * step,
            "response_length": 12.0 + step, "entropy": 0.9 - 0.01 * step, "kl": 0.001 * step,
            "clip_fraction": 0.01, "grad_norm": 1.5, "crop_iou": None, "rollout_samples_per_s": 3.0,
            "update_samples_per_s": 9.0, "truncated_fraction": 0.0, "zero_advantage_fraction": 0.25}


def _run(folder, lines) -> object:
    folder.mkdir(parents=True)
    (folder / TELEMETRY).write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


# the default panels of _line: reward, its two components, then accuracy .. throughput without crop IoU
PANELS = ["reward/mean", "reward/exact_match/mean", "reward/format/mean", "accuracy", "tool_use_rate",
          "hops_per_sample", "response_length", "entropy", "kl", "clip_fraction", "grad_norm",
          "zero_advantage_fraction", "truncated_fraction", "rollout_samples_per_s", "update_samples_per_s"]


def test_the_png_has_a_panel_per_metric_and_a_line_per_run(tmp_path):
    a = _run(tmp_path / "runs/grpo-a", [_line(s) for s in range(10)])
    b = _run(tmp_path / "runs/grpo-b", [_line(s, floor=None) for s in range(0, 10, 2)])
    out = plot_runs([a, b], tmp_path / "plots/curves.png")
    assert out == tmp_path / "plots/curves.png"
    rows = math.ceil(len(PANELS) / COLUMNS)
    with Image.open(out) as img:
        img.load()
        assert img.format == "PNG"
        assert img.size == (round(PANEL_SIZE[0] * COLUMNS * DPI), round(PANEL_SIZE[1] * rows * DPI))


def test_each_line_holds_the_files_values(tmp_path):
    lines = [_line(s) for s in range(10)]
    a = _run(tmp_path / "grpo-a", lines)
    runs = {"grpo-a": read_telemetry(a), "grpo-b": read_telemetry(_run(tmp_path / "grpo-b", lines[::3]))}
    panels = panels_for(runs, None)
    assert [p.key for p in panels] == PANELS  # crop IoU is null in every line: no panel
    fig = curves_figure(runs, panels)
    axes = {p.key: ax for p, ax in zip(panels, fig.axes, strict=False)}
    acc = axes["accuracy"].lines
    assert list(acc[0].get_xdata()) == list(range(10)) and acc[0].get_label() == "grpo-a"
    assert list(acc[0].get_ydata()) == [x["accuracy"] for x in lines]
    assert list(acc[1].get_ydata()) == [x["accuracy"] for x in lines[::3]] and acc[1].get_label() == "grpo-b"
    assert list(axes["reward/exact_match/mean"].lines[0].get_ydata()) == [x["reward/exact_match/mean"] for x in lines]
    # the reward's band is mean +- std; the tool-use floor a dashed line at the configured value
    band = axes["reward/mean"].collections[0].get_paths()[0].vertices[:, 1]
    assert min(band) == pytest.approx(-0.05) and max(band) == pytest.approx(0.9 + 0.05)
    floor = axes["tool_use_rate"].lines[2]
    assert floor.get_linestyle() == "--" and list(floor.get_ydata()) == [0.05, 0.05]
    assert len(axes["accuracy"].lines) == 2  # no floor on a panel without one
    assert sum(ax.get_visible() for ax in fig.axes) == len(PANELS)


def test_a_null_value_is_a_gap_and_a_step_logged_twice_keeps_its_last_line(tmp_path):
    lines = [_line(s) for s in range(4)]
    lines[1]["kl"] = None
    del lines[0]["entropy"]
    resumed = {**_line(2), "accuracy": 0.99}  # a run resumed from step 1 logs steps 2 and 3 again
    rows = read_telemetry(_run(tmp_path / "r", [*lines, resumed, lines[3]]))
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and rows[2]["accuracy"] == 0.99
    fig = curves_figure({"r": rows}, panels_for({"r": rows}, ["kl", "accuracy", "entropy"]))
    kl, acc, entropy = (ax.lines[0].get_ydata() for ax in fig.axes)
    assert [math.isnan(v) for v in kl] == [False, True, False, False]
    assert list(acc) == [lines[0]["accuracy"], lines[1]["accuracy"], 0.99, lines[3]["accuracy"]]
    assert math.isnan(entropy[0]) and list(entropy[1:]) == [x["entropy"] for x in lines[1:]]


def test_chosen_metrics_are_drawn_in_order_and_an_unknown_one_is_an_error(tmp_path):
    run = _run(tmp_path / "r", [_line(s) for s in range(3)])
    out = plot_runs([run], tmp_path / "two.png", metrics=["kl", "reward/format/mean"])
    with Image.open(out) as img:
        assert img.size == (round(PANEL_SIZE[0] * 2 * DPI), round(PANEL_SIZE[1] * DPI))
    with pytest.raises(InputError, match="no run has a value for the metric 'crop_iou'") as e:
        plot_runs([run], tmp_path / "x.png", metrics=["crop_iou"])
    assert "accuracy" in e.value.hint and "step" not in e.value.hint.split(": ")[1].split(", ")


def test_a_folder_without_telemetry_is_a_typed_error_that_says_what_writes_it(tmp_path):
    (tmp_path / "sft").mkdir()
    with pytest.raises(InputError, match=f"the run folder {tmp_path / 'sft'} has no telemetry.jsonl") as e:
        plot_runs([tmp_path / "sft"], tmp_path / "c.png")
    assert "perceive train CONFIG" in e.value.hint and "method: grpo" in e.value.hint
    (tmp_path / "sft" / TELEMETRY).write_text("\n")
    with pytest.raises(InputError, match="is empty: the run logged no step") as e:
        plot_runs([tmp_path / "sft"], tmp_path / "c.png")
    assert "method: grpo" in e.value.hint
    (tmp_path / "sft" / TELEMETRY).write_text(json.dumps(_line(0)) + "\n{\"step\": 1, \"kl\"")
    with pytest.raises(InputError, match="line 2: not JSON"):
        plot_runs([tmp_path / "sft"], tmp_path / "c.png")
    with pytest.raises(InputError, match="is not a run folder"):
        plot_runs([tmp_path / "nowhere"], tmp_path / "c.png")
    with pytest.raises(InputError, match="does not end in .png"):
        plot_runs([tmp_path / "sft"], tmp_path / "c.pdf")
    assert not (tmp_path / "c.png").exists()


def test_runs_with_the_same_folder_name_are_told_apart(tmp_path):
    from perceive.rl.plot import run_labels

    assert run_labels([tmp_path / "x/run", tmp_path / "y/run", tmp_path / "z"]) == ["x/run", "y/run", "z"]
    assert run_labels([tmp_path / "x/run", tmp_path / "x/run"]) == ["x/run", "x/run #2"]
