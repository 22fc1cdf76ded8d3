"""The paper's projectors (vpt-paper.md §2.3, §2.5).

Each maps one extra image's encoder features to ``(num_tokens, d)`` rows for the LLM and,
given a control vector ``h`` (``(d * s,)``, s = projector_scale), conditions them:

    c = W_c LN_c(h) + b_c;   a_j = <F_j, c>  (no softmax, no scaling);   O_j = F_j + a_j c

Module and parameter names follow the reference checkpoints so weights map one to one.
"""

from __future__ import annotations

import torch
from torch import nn


def _xavier(linear: nn.Linear) -> None:
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)


def condition(features: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """``features`` (N, T, d), ``cond`` (N, d) or None -> (N, T, d)."""
    if cond is None:
        return features
    attn = torch.einsum("ntd,nd->nt", features, cond)
    return features + attn.unsqueeze(-1) * cond.unsqueeze(1)


class _Conditioned(nn.Module):
    def __init__(self, hidden: int, scale: int):
        super().__init__()
        self.layernorm_condition = nn.LayerNorm(hidden * scale)
        self.linear_condition = nn.Linear(hidden * scale, hidden)

    def cond(self, control: torch.Tensor | None) -> torch.Tensor | None:
        if control is None:
            return None
        return self.linear_condition(self.layernorm_condition(control))


class TokenProjector(_Conditioned):
    """DINOv2 (the reference's MinimalProjector): ``(N, T, C)`` tokens -> ``(N*T, d)``."""

    def __init__(self, feature_dim: int, hidden: int, scale: int = 1):
        super().__init__(hidden, scale)
        self.layernorm_feature = nn.LayerNorm(feature_dim)
        self.linear_feature = nn.Linear(feature_dim, hidden)
        _xavier(self.linear_feature)
        _xavier(self.linear_condition)

    def forward(self, features: torch.Tensor, control: torch.Tensor | None = None) -> torch.Tensor:
        f = self.linear_feature(self.layernorm_feature(features))
        return condition(f, self.cond(control)).flatten(0, 1)


class SamProjector(_Conditioned):
    """SAM (MinimalSamProjector): ``(N, 256, H, W)`` neck maps -> LN over channels -> 4x4
    stride-4 conv -> channels-last row-major ``(N * H/4 * W/4, d)``."""

    def __init__(self, hidden: int, scale: int = 1, channels: int = 256):
        super().__init__(hidden, scale)
        self.layernorm_feature = nn.LayerNorm(channels)
        self.conv_feature = nn.Conv2d(channels, hidden, kernel_size=4, stride=4)
        self.linear_feature = nn.Linear(channels, hidden)  # in the reference's checkpoints, unused
        _xavier(self.linear_feature)
        _xavier(self.linear_condition)

    def forward(self, features: torch.Tensor, control: torch.Tensor | None = None) -> torch.Tensor:
        x = self.layernorm_feature(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.conv_feature(x).flatten(2).transpose(1, 2)  # (N, H/4*W/4, d)
        return condition(x, self.cond(control)).flatten(0, 1)


class NativeProjector(_Conditioned):
    """The MLLM's own vision tower (MinimalCLIPProjector): the merged tokens are already
    d-wide; only the conditioning applies. ``features`` is ``(sum T_i, d)`` with ``sizes``
    the per-image token counts."""

    def __init__(self, hidden: int, scale: int = 1):
        super().__init__(hidden, scale)
        self.layernorm_feature = nn.LayerNorm(hidden)  # in the reference's checkpoints, unused
        self.linear_feature = nn.Linear(hidden, hidden)  # unused
        _xavier(self.linear_feature)
        _xavier(self.linear_condition)

    def forward(self, features: torch.Tensor, control: torch.Tensor | None = None,
                sizes: list[int] | None = None) -> torch.Tensor:
        if control is None:
            return features
        c = self.cond(control)
        parts = torch.split(features, sizes or [features.shape[0]])
        return torch.cat([condition(p.unsqueeze(0), c[i:i + 1])[0] for i, p in enumerate(parts)])


def build_projector(action: str, feature_dim: int, hidden: int, scale: int) -> nn.Module:
    if action == "dino":
        return TokenProjector(feature_dim, hidden, scale)
    if action == "sam":
        return SamProjector(hidden, scale, channels=feature_dim)
    return NativeProjector(hidden, scale)
