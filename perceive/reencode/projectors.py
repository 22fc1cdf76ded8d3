"""Projector building blocks for re-encode branches (vpt-paper.md §2.3, §2.5).

A projector maps one extra image's encoder features to ``(num_tokens, d)`` rows for the LLM and,
given a control vector ``h`` (``(d * s,)``, s = projector_scale), conditions them:

    c = W_c LN_c(h) + b_c;   a_j = <F_j, c>  (no softmax, no scaling);   O_j = F_j + a_j c

:class:`ConditionedProjector` holds the conditioning (``layernorm_condition``,
``linear_condition``); a branch's projector subclasses it and maps its features to ``d``-wide
rows first, then applies :func:`condition`. :class:`TokenProjector` does that for ``(N, T, C)``
token features (LayerNorm, then a linear layer: the reference's ``MinimalProjector``). Module and
parameter names follow the reference checkpoints so weights map one to one.

This module imports torch; import it where a projector is built (inside
:meth:`perceive.BranchSpec.build_projector`), not at plugin load.
"""

from __future__ import annotations

import torch
from torch import nn


def xavier(linear: nn.Linear) -> None:
    """Xavier-uniform weights and zero bias, as the reference initialises its projectors."""
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)


def condition(features: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """Rows conditioned on ``c``: ``features`` ``(N, T, d)`` (N images, T rows each, d the LLM's
    width), ``cond`` ``(N, d)`` (:meth:`ConditionedProjector.cond`) or None -> ``(N, T, d)``,
    ``o_j = F_j + <F_j, c> c``; unchanged when ``cond`` is None."""
    if cond is None:
        return features
    attn = torch.einsum("ntd,nd->nt", features, cond)
    return features + attn.unsqueeze(-1) * cond.unsqueeze(1)


class ConditionedProjector(nn.Module):
    """Base of every branch projector: ``cond(control)`` is ``c = W_c LN_c(h) + b_c`` (None for
    no control); :func:`condition` applies it to ``d``-wide rows.

    ``hidden`` is the language model's width d and ``scale`` the model's ``projector_scale``
    (1 unless a paper checkpoint says otherwise): the control input is ``hidden * scale`` wide
    (``layernorm_condition``, ``linear_condition``: ``hidden * scale -> hidden``). A subclass's
    ``forward(features, control=None)`` takes the features as its branch's ``encode`` gives
    them (a batch of N images) and ``control`` ``(N, hidden * scale)`` (one row per image) or
    None, and returns ``(N * T, hidden)``: image 0's T rows, then image 1's, each in the order
    of its pad tokens (T: the placeholders per image). It maps the features to ``(N, T, hidden)``
    rows, then ends with ``condition(rows, self.cond(control)).flatten(0, 1)``."""

    def __init__(self, hidden: int, scale: int = 1):
        super().__init__()
        self.layernorm_condition = nn.LayerNorm(hidden * scale)
        self.linear_condition = nn.Linear(hidden * scale, hidden)

    def cond(self, control: torch.Tensor | None) -> torch.Tensor | None:
        """``(N, hidden * scale)`` -> ``(N, hidden)``; None -> None."""
        if control is None:
            return None
        return self.linear_condition(self.layernorm_condition(control))


class TokenProjector(ConditionedProjector):
    """Token features (the reference's MinimalProjector): ``(N, T, C)`` -> LayerNorm -> linear ->
    conditioned -> ``(N*T, d)``."""

    def __init__(self, feature_dim: int, hidden: int, scale: int = 1):
        super().__init__(hidden, scale)
        self.layernorm_feature = nn.LayerNorm(feature_dim)
        self.linear_feature = nn.Linear(feature_dim, hidden)
        xavier(self.linear_feature)
        xavier(self.linear_condition)

    def forward(self, features: torch.Tensor, control: torch.Tensor | None = None) -> torch.Tensor:
        f = self.linear_feature(self.layernorm_feature(features))
        return condition(f, self.cond(control)).flatten(0, 1)


__all__ = ["ConditionedProjector", "TokenProjector", "condition", "xavier"]
