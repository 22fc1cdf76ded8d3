"""The built-in rewards, and the table a run picks its rewards from (these plus every plugin's,
:mod:`perceive.rewards` has the signature). Each scores one rollout per entry of ``completions``.

* ``exact_match``, ``anls``: the answer against the ground truth (``perceive eval``'s metrics).
* ``format``: -1 for a rollout with a malformed span or call (a ``parse_error`` event, a call
  whose arguments the action refused, a ``malformed`` finish), else 0.
* ``tool_bonus``: DeepEyes' bonus: 1 when the answer is right *and* the rollout made a hop,
  else 0 (a hop alone earns nothing, so looking is paid only when it helped).
* ``hop_cost``: minus the number of hops (its weight is the price of one hop).
* ``crop_iou``: the IoU of the first region hop's box with the item's box (root pixels); None for
  an item without one. Off unless named: it needs box labels, which learning from the answer
  alone does without; telemetry measures it whatever the rewards.
"""

from __future__ import annotations

import math

from perceive.errors import ConfigError, ErrorCode, did_you_mean
from perceive.eval.metrics import anls, crop_iou, exact_match
from perceive.rewards import Reward
from perceive.trace import EventType, FinishReason, Trace


def _exact_match(completions, answer, **kwargs) -> list[float]:
    return [exact_match(c, a) for c, a in zip(completions, answer, strict=True)]


def _anls(completions, answer, **kwargs) -> list[float]:
    return [anls(c, a) for c, a in zip(completions, answer, strict=True)]


def malformed(trace: Trace, finish_reason: str) -> bool:
    """Whether the rollout wrote a span or call that could not be read or run as written."""
    if str(finish_reason) == FinishReason.MALFORMED:
        return True
    if any(ev.get("type") == EventType.PARSE_ERROR for ev in trace.events):
        return True
    return any(h.error and h.error.get("code") == ErrorCode.ACTION_INPUT for h in trace.hops)


def _format(trace, finish_reason, **kwargs) -> list[float]:
    return [-1.0 if malformed(t, f) else 0.0 for t, f in zip(trace, finish_reason, strict=True)]


def _tool_bonus(completions, answer, trace, **kwargs) -> list[float]:
    return [float(exact_match(c, a) == 1.0 and len(t.hops) > 0)
            for c, a, t in zip(completions, answer, trace, strict=True)]


def _hop_cost(trace, **kwargs) -> list[float]:
    return [-float(len(t.hops)) for t in trace]


def _crop_iou(trace, box, **kwargs) -> list[float | None]:
    return [crop_iou(t, b, no_hop=0.0) for t, b in zip(trace, box, strict=True)]


def builtin_rewards() -> list[Reward]:
    return [
        Reward("exact_match", _exact_match, "1 when the answer equals the ground truth (normalised), else 0"),
        Reward("anls", _anls, "average normalised Levenshtein similarity to the ground truth (0..1)"),
        Reward("format", _format, "-1 for a malformed span or call, else 0"),
        Reward("tool_bonus", _tool_bonus, "DeepEyes: 1 when the answer is right and a hop was made, else 0"),
        Reward("hop_cost", _hop_cost, "minus the number of hops (the weight is the price of a hop)"),
        Reward("crop_iou", _crop_iou, "IoU of the first region hop's box with the item's box (needs box labels)"),
    ]


def reward_table(registry) -> dict[str, Reward]:
    """Every reward a run can name: the built-ins, then each plugin's (a plugin's reward may not
    take a built-in's name)."""
    table = {r.name: r for r in builtin_rewards()}
    for name, reg in registry.rewards.items():
        if name in table:
            raise ConfigError(f"plugin {reg.plugin!r} registers a reward named {name!r}, which is built in",
                              hint="rename the plugin's reward")
        table[name] = reg.obj
    return table


def pick_rewards(weights: dict[str, float], registry, source: str = "the config") -> list[tuple[Reward, float]]:
    """``(reward, weight)`` for each name of ``weights``; an unknown name is a :class:`ConfigError`
    naming the installed ones."""
    table = reward_table(registry)
    out = []
    for name, w in weights.items():
        if name not in table:
            hint = did_you_mean(name, table)
            raise ConfigError(f"{source + ': ' if source else ''}rewards: no reward named {name!r}",
                              hint=(f"{hint}; " if hint else "") + f"installed: {', '.join(sorted(table))}")
        out.append((table[name], float(w)))
    return out


def _finite_number(v) -> bool:
    try:
        return math.isfinite(float(v)) and not isinstance(v, bool | str)
    except (TypeError, ValueError):
        return False


def rollout_rewards(picked: list[tuple[Reward, float]], prompts: list, trajs: list) -> tuple[list[float], dict]:
    """Score trajectories (``prompts[i]`` is trajectory ``i``'s :class:`~perceive.rl.rollout.Prompt`):
    ``(total per trajectory, {reward name: its values})``. The total is the weighted sum, a None
    counting 0. A reward that raises, or returns the wrong number of values, is a
    :class:`ConfigError` naming it: a broken reward must stop the run, not train on noise."""
    done = [t.finished for t in trajs]
    kwargs = {"answer": [p.answer for p in prompts], "trace": [d.trace for d in done],
              "raw": [d.raw for d in done], "finish_reason": [str(d.finish_reason) for d in done],
              "completion_ids": [list(d.token_ids) for d in done], "box": [p.box for p in prompts]}
    questions, answers = [p.question for p in prompts], [d.answer for d in done]
    total = [0.0] * len(trajs)
    parts: dict[str, list] = {}
    for reward, weight in picked:
        if not weight:  # weight 0 drops a reward (say, one a base config names)
            continue
        try:
            values = list(reward(questions, answers, **kwargs))
        except Exception as exc:  # a plugin's bug, reported with its name
            raise ConfigError(f"reward {reward.name!r} raised {type(exc).__name__}: {exc}",
                              hint="fix the reward function (it gets prompts, completions and keyword "
                                   "arguments: see perceive.rewards)") from exc
        if len(values) != len(trajs):
            raise ConfigError(f"reward {reward.name!r} returned {len(values)} values for {len(trajs)} rollouts",
                              hint="return one float (or None) per completion")
        bad = [v for v in values if v is not None and not _finite_number(v)]
        if bad:  # a NaN would poison the group's advantages and then the weights, silently
            raise ConfigError(f"reward {reward.name!r} returned {bad[0]!r}: not a finite number",
                              hint="return a finite float (or None where the reward does not apply)")
        parts[reward.name] = values
        for i, v in enumerate(values):
            total[i] += weight * float(v) if v is not None else 0.0
    return total, parts
