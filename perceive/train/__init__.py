"""Supervised fine-tuning of VPT models in the paper's stages (vpt-paper.md §3)."""

from perceive.train.checkpoints import TrainingInterrupted
from perceive.train.config import TrainConfig, load_train_config
from perceive.train.trainer import Trainer, train

__all__ = ["TrainConfig", "Trainer", "TrainingInterrupted", "load_train_config", "train"]
