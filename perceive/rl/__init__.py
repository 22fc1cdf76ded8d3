"""Reinforcement learning for perception loops: GRPO (``perceive train`` with ``method: grpo``).

Rollouts are the perception loop itself (:mod:`perceive.rl.rollout`); the loss recomputes each
rollout's log-probabilities by a teacher-forced forward of the exact trajectory
(:mod:`perceive.rl.trajectory`); rewards are plugins (:mod:`perceive.rewards`, built-ins in
:mod:`perceive.rl.rewards`); each step is a line of ``telemetry.jsonl`` (:mod:`perceive.rl.telemetry`).
See docs/how-to/train-with-rewards.md.
"""

from perceive.rl.config import GRPOConfig, load_training_config
from perceive.rl.trainer import GRPOTrainer, train_grpo

__all__ = ["GRPOConfig", "GRPOTrainer", "load_training_config", "train_grpo"]
