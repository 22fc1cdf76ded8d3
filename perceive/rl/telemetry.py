"""What a GRPO run reports each step: one JSON object per line in ``OUTPUT/telemetry.jsonl``
(the format ``perceive train plot`` reads), and a short line on the console.

Keys (floats unless said; a metric that was not measured is left out or null): ``step`` (int),
``wall_s``, ``lr``, ``reward/mean``, ``reward/std``, ``reward/<name>/mean`` and
``reward/<name>/std`` per reward, ``accuracy`` (exact match of the sampled answers), ``tool_use_rate``
(the share of rollouts that made a hop), ``tool_use_floor``, ``hops_per_sample``,
``response_length`` (generated and forced tokens), ``entropy`` (per generated token, of the
sampling distribution), ``kl``, ``clip_fraction``, ``grad_norm``, ``crop_iou`` (first region hop
against the item's box; measured, never rewarded unless named), ``rollout_samples_per_s``,
``update_samples_per_s``, ``truncated_fraction`` (cut by a budget), ``failed_fraction`` (ended by a
perception action), ``unreadable_prompts``, ``zero_advantage_fraction``
(groups whose rewards were all equal) and ``warnings`` (a list of strings).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from perceive.eval.metrics import crop_iou, exact_match

TELEMETRY_FILE = "telemetry.jsonl"


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _std(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return statistics.pstdev(values) if len(values) > 1 else (0.0 if values else None)


def rollout_metrics(prompts: list, trajs: list, total: list[float], parts: dict[str, list]) -> dict:
    """The rollout side of a step's record: rewards, accuracy, tool use, hops, lengths, crop IoU."""
    done = [t.finished for t in trajs]
    rec: dict = {"reward/mean": _mean(total), "reward/std": _std(total)}
    for name, values in parts.items():
        rec[f"reward/{name}/mean"] = _mean(values)
        rec[f"reward/{name}/std"] = _std(values)
    rec["accuracy"] = _mean(exact_match(d.answer, p.answer) for d, p in zip(done, prompts, strict=True))
    rec["tool_use_rate"] = _mean(float(bool(d.trace.hops)) for d in done)
    rec["hops_per_sample"] = _mean(len(d.trace.hops) for d in done)
    rec["response_length"] = _mean(len(d.token_ids) for d in done)
    rec["crop_iou"] = _mean(crop_iou(d.trace, p.box, no_hop=0.0) for d, p in zip(done, prompts, strict=True))
    return rec


def floor_warning(rate: float | None, floor: float | None, step: int, rewards=()) -> str | None:
    """A warning when tool use fell below the floor: the policy is learning to answer blind.
    ``rewards``: the run's reward names (the advice fits them)."""
    if rate is None or floor is None or rate >= floor:
        return None
    advice = ["raise tool_bonus's weight" if "tool_bonus" in rewards else "add tool_bonus to the rewards"]
    advice += ["lower hop_cost's weight"] if "hop_cost" in rewards else []
    advice += ["raise the temperature"]
    return (f"step {step}: tool use {rate:.3f} is below the floor {floor:.3f}: the policy is learning to answer "
            f"without looking ({', '.join(advice[:-1])} or {advice[-1]})")


def console_line(rec: dict) -> str:
    """``step 12  reward 0.812 +- 0.301  acc 0.750  tools 1.000  hops 1.00  kl 0.0012  clipped 0.031``."""
    parts = [f"step {rec['step']}"]
    for key, label, fmt in (("reward/mean", "reward", ".3f"), ("accuracy", "acc", ".3f"),
                            ("tool_use_rate", "tools", ".3f"), ("hops_per_sample", "hops", ".2f"),
                            ("crop_iou", "iou", ".3f"), ("kl", "kl", ".4f"), ("clip_fraction", "clipped", ".3f")):
        if rec.get(key) is not None:
            text = f"{label} {rec[key]:{fmt}}"
            if key == "reward/mean" and rec.get("reward/std") is not None:
                text += f" +- {rec['reward/std']:.3f}"
            parts.append(text)
    return "  ".join(parts)


def write_telemetry(output: Path, records: list[dict]) -> None:
    """``output/telemetry.jsonl`` from ``records`` (after a resume: the checkpoint's, so a step the
    interrupted run made after its checkpoint is not listed twice)."""
    output.mkdir(parents=True, exist_ok=True)
    (output / TELEMETRY_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))


def append_telemetry(output: Path, rec: dict) -> None:
    output.mkdir(parents=True, exist_ok=True)
    with (output / TELEMETRY_FILE).open("a") as f:
        f.write(json.dumps(rec) + "\n")
