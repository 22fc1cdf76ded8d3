"""Evaluating models and graphs on datasets in the paper's layout."""

from perceive.eval.metrics import anls, exact_match, relaxed_accuracy
from perceive.eval.runner import EvalConfig, evaluate, load_eval_config

__all__ = ["EvalConfig", "anls", "evaluate", "exact_match", "load_eval_config", "relaxed_accuracy"]
