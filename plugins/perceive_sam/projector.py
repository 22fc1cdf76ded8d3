"""The SAM branch's projector (the reference's MinimalSamProjector, vpt-paper.md §2.3)."""

from __future__ import annotations

import torch
from torch import nn

from perceive.reencode.projectors import ConditionedProjector, condition, xavier


class SamProjector(ConditionedProjector):
    """``(N, C, H, W)`` neck maps -> LN over channels -> 4x4 stride-4 conv -> channels-last
    row-major ``(N * H/4 * W/4, d)``, conditioned on the control vector."""

    def __init__(self, hidden: int, scale: int = 1, channels: int = 256):
        super().__init__(hidden, scale)
        self.layernorm_feature = nn.LayerNorm(channels)
        self.conv_feature = nn.Conv2d(channels, hidden, kernel_size=4, stride=4)
        self.linear_feature = nn.Linear(channels, hidden)  # in the reference's checkpoints, unused
        xavier(self.linear_feature)
        xavier(self.linear_condition)

    def forward(self, features: torch.Tensor, control: torch.Tensor | None = None) -> torch.Tensor:
        x = self.layernorm_feature(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.conv_feature(x).flatten(2).transpose(1, 2)  # (N, H/4*W/4, d)
        return condition(x, self.cond(control)).flatten(0, 1)
