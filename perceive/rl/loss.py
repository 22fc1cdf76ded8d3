"""GRPO's arithmetic: group advantages and the clipped policy loss with its KL term.

Shapes: a step's ``N`` trajectories come in groups of ``G`` (one prompt each); per-token tensors
are ``(n_i,)`` float32, one per trajectory, over its generated tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perceive.rl.config import AdvantageNorm, Aggregation, LossConfig


def advantages(rewards: torch.Tensor, group_size: int, norm: AdvantageNorm, keep: torch.Tensor | None = None,
               eps: float = 1e-4) -> torch.Tensor:
    """``rewards`` ``(N,)`` in groups of ``group_size`` -> ``(N,)``: each reward minus its group's
    mean, divided by the group's (unbiased) standard deviation plus ``eps`` for ``group_std``. A
    group whose rewards are all equal has advantage 0: it teaches nothing. ``keep`` ``(N,)`` bool:
    the members that count (over-turn masking: a cut trajectory is out of its group's mean and
    spread, as out of the loss); the others get advantage 0."""
    keep = torch.ones_like(rewards, dtype=torch.bool) if keep is None else keep
    r, k = rewards.view(-1, group_size), keep.view(-1, group_size).to(rewards.dtype)
    n = k.sum(1, keepdim=True)
    mean = (r * k).sum(1, keepdim=True) / n.clamp(min=1)
    a = (r - mean) * k
    if norm is AdvantageNorm.GROUP_STD:
        std = ((a**2).sum(1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
        a = a / (std + eps)
    return a.reshape(-1)


@dataclass
class Denominators:
    """The loss's normalisers over the whole step (every process and micro-batch): the kept
    trajectories and their generated tokens, and the token budget (Dr. GRPO's constant)."""

    sequences: int
    tokens: int
    max_new_tokens: int


@dataclass
class TokenStats:
    """Sums over a micro-batch's kept tokens, for telemetry: clipped tokens, KL, tokens."""

    clipped: float = 0.0
    kl: float = 0.0
    tokens: int = 0


def policy_loss(logprobs: list[torch.Tensor], old: list[torch.Tensor], adv: torch.Tensor, keep: list[bool],
                cfg: LossConfig, den: Denominators, ref: list[torch.Tensor] | None = None,
                stats: TokenStats | None = None) -> torch.Tensor:
    """This micro-batch's share of the step's loss (a scalar; the shares of every micro-batch and
    process add up to the step's loss). Per token: ``-min(ratio * A, clip(ratio, 1 - eps_low,
    1 + eps_high) * A) + kl_coef * KL``, ``ratio = exp(logp - old)``, KL the k3 estimator
    ``exp(ref - logp) - (ref - logp) - 1``. ``keep[i]`` False leaves trajectory ``i`` out
    (over-turn masking)."""
    total = logprobs[0].new_zeros(())
    for i, (lp, o) in enumerate(zip(logprobs, old, strict=True)):
        if not keep[i] or lp.numel() == 0:
            continue
        ratio = torch.exp(lp - o)  # 0 for a token that left the top-k/top-p set: clipped, no gradient
        a = adv[i]
        per = -torch.minimum(ratio * a, ratio.clamp(1 - cfg.epsilon_low, 1 + cfg.epsilon_high) * a)
        kl = None
        if ref is not None and cfg.kl_coef:
            # a token outside the top-k/top-p set of the policy or the reference has log-prob -inf:
            # no KL is measured there (it would be inf, and its gradient NaN)
            finite = torch.isfinite(lp) & torch.isfinite(ref[i])
            d = torch.where(finite, ref[i] - lp, torch.zeros_like(lp))
            kl = torch.exp(d) - d - 1
            per = per + cfg.kl_coef * kl
        if cfg.aggregation is Aggregation.SEQUENCE_MEAN:
            total = total + per.mean() / den.sequences
        elif cfg.aggregation is Aggregation.TOKEN_MEAN:
            total = total + per.sum() / den.tokens
        else:  # Dr. GRPO: a constant normaliser, so a long answer is not worth less per token
            total = total + per.sum() / (den.sequences * den.max_new_tokens)
        if stats is not None:
            with torch.no_grad():
                clipped = (ratio < 1 - cfg.epsilon_low) | (ratio > 1 + cfg.epsilon_high)
                stats.clipped += float(clipped.sum())
                stats.kl += float(kl.sum()) if kl is not None else 0.0
                stats.tokens += lp.numel()
    return total
