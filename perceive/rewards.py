"""Reward functions: what an RL run (``perceive train`` with ``method: grpo``) scores rollouts with.

A reward has the signature of TRL's reward functions, so one written for either ports to the
other; every argument is passed by keyword, as TRL passes them::

    def my_reward(prompts: list[str], completions: list[str], **kwargs) -> list[float | None]
    def my_reward(completions, answer, **kwargs) -> list[float | None]   # as well

``prompts`` are the questions, ``completions`` the final answers (the text a user sees: calls and
perception tokens left out), one per rollout; ``kwargs`` hold, per rollout, ``answer`` (the
ground truth), ``trace`` (the :class:`perceive.trace.Trace`: hops with their boxes in root
pixels, events such as ``parse_error``), ``raw`` (every assistant turn as the model wrote it,
special tokens kept), ``finish_reason``, ``completion_ids`` (the generated and forced ids) and
``box`` (the item's ground-truth box, root pixels ``[x0, y0, x1, y1]``, or None). Return one
float per rollout, or None where the reward does not apply (it then counts 0 in the sum, and is
left out of its own mean in the telemetry), as TRL reads None. Accept ``**kwargs``: keywords
are added over time.

Plugins register rewards with the ``perceive_register_rewards`` hook; a run names them with
weights (``rewards: {exact_match: 1.0, my_reward: 0.5}``). The built-ins (exact match, ANLS,
format, tool bonus, hop cost, crop IoU) are :mod:`perceive.rl.rewards`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RewardFn = Callable[..., list]
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Reward:
    """A named reward function (see the module docstring for its signature). ``description``: one
    line, shown by ``perceive plugins list``."""

    name: str
    fn: RewardFn
    description: str = ""

    def __call__(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list:
        # by keyword, as TRL calls reward functions: f(completions, **kwargs) and
        # f(prompts, completions, answer, **kwargs) both work
        return self.fn(prompts=prompts, completions=completions, **kwargs)


def reward_problems(reward: Any) -> list[str]:
    """Everything wrong with a reward's declaration (empty when well formed)."""
    if not isinstance(reward, Reward):
        return [f"{reward!r} is not a perceive.rewards.Reward instance"]
    problems = []
    if not isinstance(reward.name, str) or not _NAME.fullmatch(reward.name or ""):
        problems.append(f"name {reward.name!r} must match [a-z][a-z0-9_]*")
    if not callable(reward.fn):
        problems.append("fn must be callable: fn(prompts, completions, **kwargs) -> list")
        return problems
    try:
        params = inspect.signature(reward.fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return problems
    params = list(params)
    if any(p.kind is p.POSITIONAL_ONLY for p in params):
        problems.append("fn's arguments are passed by keyword (prompts=, completions=, ...), as TRL passes "
                        "them: drop the positional-only marker")
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        problems.append("fn must accept **kwargs (prompts, completions, answer, trace, ... are passed by keyword)")
    return problems


__all__ = ["Reward", "RewardFn", "reward_problems"]
