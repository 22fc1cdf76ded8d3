"""The native branch's projector (the reference's MinimalCLIPProjector, vpt-paper.md §2.3)."""

from __future__ import annotations

import torch
from torch import nn

from perceive.reencode.projectors import ConditionedProjector, condition, xavier


class NativeProjector(ConditionedProjector):
    """The MLLM's own vision tower: the merged tokens are already d-wide; only the conditioning
    applies. ``features`` is ``(sum T_i, d)`` with ``sizes`` the per-image token counts."""

    def __init__(self, hidden: int, scale: int = 1):
        super().__init__(hidden, scale)
        self.layernorm_feature = nn.LayerNorm(hidden)  # in the reference's checkpoints, unused
        self.linear_feature = nn.Linear(hidden, hidden)  # unused
        xavier(self.linear_feature)
        xavier(self.linear_condition)

    def forward(self, features: torch.Tensor, control: torch.Tensor | None = None,
                sizes: list[int] | None = None) -> torch.Tensor:
        if control is None:
            return features
        c = self.cond(control)
        parts = torch.split(features, sizes or [features.shape[0]])
        return torch.cat([condition(p.unsqueeze(0), c[i:i + 1])[0] for i, p in enumerate(parts)])
