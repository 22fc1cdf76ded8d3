"""The GRPO training config: ``perceive train CONFIG`` with ``method: grpo``.

One schema with supervised training (:class:`perceive.train.config.TrainConfig`: the model,
LoRA, freezing, the optimizer, checkpoints, output), plus what reinforcement learning adds:
``rollout`` (the loop that samples), ``loss`` (GRPO's objective) and ``rewards`` (registered
reward names and their weights). ``data.train`` is any dataset ``perceive eval`` reads; only each
item's image, question and answer are used (no spans).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from perceive.errors import ConfigError
from perceive.strict import StrictModel
from perceive.train.config import TrainConfig, load_train_config


class Aggregation(str, Enum):
    """How per-token losses become the batch's loss (their denominators are global: every
    process and micro-batch of a step together)."""

    __str__ = str.__str__

    TOKEN_MEAN = "token_mean"  # sum over every generated token / their count (DAPO)
    SEQUENCE_MEAN = "sequence_mean"  # each trajectory's token mean, then the mean over trajectories (GRPO)
    DR_GRPO = "dr_grpo"  # sum / (trajectories x max_new_tokens): no length bias (Dr. GRPO)


class AdvantageNorm(str, Enum):
    """A reward's advantage is its distance from its group's mean, divided by..."""

    __str__ = str.__str__

    GROUP_STD = "group_std"  # ...the group's standard deviation (GRPO)
    NONE = "none"  # ...nothing (Dr. GRPO: no difficulty bias)


class Reference(str, Enum):
    """The policy the KL term is measured against."""

    __str__ = str.__str__

    FROZEN = "frozen"  # a frozen copy of the starting model
    ADAPTER_DISABLED = "adapter_disabled"  # the policy with its LoRA adapters switched off (lora: only)


class RolloutConfig(StrictModel):
    """How rollouts are sampled: the perception loop itself (the same engine, graph, protocol,
    plugins and continuous batching as ``perceive ask``), ``group_size`` samples per prompt,
    each seeded by (seed, step, its index)."""

    group_size: int = Field(8, ge=2)
    prompts_per_step: int = Field(8, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    #: the hop budget (a sample cut by it is over-turn: see ``loss.mask_truncated``)
    max_hops: int = Field(3, ge=0)
    graph: str = "free_choice"
    params: dict[str, Any] = Field(default_factory=dict)
    #: samples decoded together (continuous batching)
    max_batch_size: int = Field(64, ge=1)
    #: a perception call that runs longer fails (its rollout is masked and counted, not waited on)
    action_timeout_s: float | None = Field(30.0, gt=0)
    #: per-action options over the model's own (e.g. {zoom: {size: 448}})
    action_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    seed: int = 0


class LossConfig(StrictModel):
    #: the KL penalty's weight (0: no reference model is kept)
    kl_coef: float = Field(0.0, ge=0)
    #: None: ``adapter_disabled`` with ``lora:``, else ``frozen``
    reference: Reference | None = None
    #: the ratio is clipped to [1 - epsilon_low, 1 + epsilon_high] (DAPO's clip-higher when high > low)
    epsilon_low: float = Field(0.2, gt=0, lt=1)
    epsilon_high: float = Field(0.28, gt=0)
    #: optimizer steps on each batch of rollouts (each a pass over all of it)
    inner_epochs: int = Field(1, ge=1)
    aggregation: Aggregation = Aggregation.TOKEN_MEAN
    advantage: AdvantageNorm = AdvantageNorm.GROUP_STD
    #: Mini-o3's over-turn masking: a trajectory cut by the hop, token or context budget is left
    #: out of the loss instead of being punished for not answering
    mask_truncated: bool = True


class TelemetryConfig(StrictModel):
    #: warn when the share of rollouts that make a hop falls below this (None: never); DeepEyes
    #: users report tool calls collapsing to zero after ~20 steps
    tool_use_floor: float | None = Field(0.05, ge=0, le=1)


class GRPOConfig(TrainConfig):
    """``method: grpo``: every :class:`TrainConfig` field, plus ``rollout``, ``loss``, ``rewards``
    (registered reward name -> weight; the reward is their weighted sum) and ``telemetry``.
    ``optim.steps`` counts rollout steps (each ``prompts_per_step`` x ``group_size`` rollouts and
    ``loss.inner_epochs`` optimizer steps); ``optim.batch_size`` is the number of trajectories per
    micro-batch of the update's forward."""

    method: Literal["grpo"] = "grpo"
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    rewards: dict[str, float] = Field(default_factory=lambda: {"exact_match": 1.0, "format": 1.0})
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)

    @model_validator(mode="after")
    def _consistent(self) -> GRPOConfig:
        if not self.rewards:
            raise ValueError("rewards: name at least one reward (e.g. {exact_match: 1.0, format: 1.0})")
        if self.loss.reference is Reference.ADAPTER_DISABLED and self.lora is None:
            raise ValueError("loss.reference: adapter_disabled needs lora: (there is no adapter to disable); "
                             "use reference: frozen")
        if self.optim.grad_accum != 1:
            raise ValueError("optim.grad_accum: GRPO accumulates over a step's micro-batches itself (optim.batch_size "
                             "trajectories each); leave grad_accum at 1")
        if self.stage != "instruct":
            raise ValueError("stage: GRPO trains the whole policy forward (stage: instruct)")
        return self

    @property
    def reference(self) -> Reference | None:
        """The KL reference this run keeps (None without a KL term)."""
        if not self.loss.kl_coef:
            return None
        if self.loss.reference is not None:
            return self.loss.reference
        return Reference.ADAPTER_DISABLED if self.lora is not None else Reference.FROZEN


def load_training_config(path: str | Path, *, overrides=(), **fields: Any) -> TrainConfig:
    """A training config of either method: ``method: grpo`` gives a :class:`GRPOConfig`, no
    ``method`` (or ``method: sft``) a supervised :class:`TrainConfig`."""
    from perceive.config import compose

    method = compose(path, overrides).get("method", "sft")
    if method not in ("sft", "grpo"):
        raise ConfigError(f"{path}: method: {method!r} is not a training method",
                          hint="use method: sft (supervised, the default) or method: grpo (reinforcement learning)")
    cls = GRPOConfig if method == "grpo" else TrainConfig
    return load_train_config(path, overrides=overrides, cls=cls, **fields)


__all__ = ["AdvantageNorm", "Aggregation", "GRPOConfig", "LossConfig", "Reference", "RolloutConfig",
           "TelemetryConfig", "ValidationError", "load_training_config"]
