"""Rollouts: the perception loop itself samples ``group_size`` answers to each prompt.

The same :class:`~perceive.loop.PerceptionLoop` as ``perceive ask`` (engine, graph, protocol,
plugins, continuous batching), with sampling on. A rollout's seed is the run's, the step's and its
index in the step's batch, so a step's rollouts are the same whichever process runs them and
whether or not the run was resumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from perceive.loop import LoopOptions, PerceptionLoop
from perceive.rl.config import GRPOConfig
from perceive.rl.trajectory import Trajectory

#: rollout seeds of consecutive steps lie this far apart (more than any step's rollouts)
STEP_SEED_STRIDE = 1_000_003


@dataclass
class Prompt:
    """One item of the prompts set: ``index`` its position in the set, ``slot`` its place in the
    step's batch (its rollouts are samples ``slot * G .. slot * G + G - 1``), ``box`` the item's
    ground-truth box in root pixels ``[x0, y0, x1, y1]`` (None when the item has no crop)."""

    index: int
    image: Image.Image
    question: str
    answer: str
    box: list[int] | None = None
    slot: int = 0
    extra: dict[str, Any] | None = None


def read_prompt(ds, k: int, slot: int = 0) -> Prompt:
    """Item ``k`` of a :class:`~perceive.data.dataset.VPTDataset` as a prompt: its first image,
    its first user turn's question (placeholders and trigger prompts removed), its last turn's
    answer, and the box of its crop when it names one (``image.png#x0,y0,x1,y1``)."""
    from perceive.data.dataset import load_ref, split_crop
    from perceive.eval.runner import question_of

    _, item = ds.items[k]
    refs = [str(r) for r in item.get("images") or []]
    box = split_crop(refs[1])[1] if len(refs) > 1 else None
    image = load_ref(refs[0], ds.root)  # only the first image: crops in the data are labels RL does without
    extra = {key: v for key, v in item.items()
             if key not in ("messages", "images") and isinstance(v, str | int | float)}
    question = next(m["content"] for m in item["messages"] if m["role"] == "user")
    return Prompt(k, image, question_of(question), item["messages"][-1]["content"], list(box) if box else None,
                  slot, extra)


def rollout_loop(model, cfg: GRPOConfig, registry, greedy: bool = False) -> PerceptionLoop:
    """The loop that samples the run's rollouts (``loop.options.seed`` is set per step);
    ``greedy``: the one that evaluates, decoding as ``perceive eval`` does."""
    from perceive.graph import compile_graph

    r = cfg.rollout
    protocol = cfg.protocol
    options = LoopOptions(do_sample=not greedy, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p, seed=r.seed,
                          max_new_tokens=r.max_new_tokens, max_hops=r.max_hops, max_batch_size=r.max_batch_size,
                          action_timeout_s=r.action_timeout_s, action_options=r.action_options,
                          **({"protocol": protocol.name, "protocol_options": protocol.options} if protocol else {}))
    graph = compile_graph(r.graph, registry=registry, params={"max_hops": r.max_hops, **r.params})
    return PerceptionLoop(model, registry, options=options, graph=graph)


def roll(loop: PerceptionLoop, prompts: list[Prompt], group_size: int, step: int, base_seed: int) -> list[Trajectory]:
    """``group_size`` rollouts of each prompt, in prompt order (a group's rollouts together)."""
    base = loop.options
    # runs with neighbouring seeds share no rollout: the run's seed spreads far apart
    loop.options = base.replace(seed=(base_seed * 7_919_000_009 + step * STEP_SEED_STRIDE) % 2**62)
    try:
        items = [(p.image, p.question) for p in prompts for _ in range(group_size)]
        indices = [p.slot * group_size + g for p in prompts for g in range(group_size)]
        events: dict[int, list] = {i: [] for i in indices}
        for ev in loop.stream(items, indices, text=False):
            events[ev.sample].append(ev)
    finally:
        loop.options = base
    return [Trajectory.from_events(events[i]) for i in indices]
