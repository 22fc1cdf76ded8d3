"""Choosing the next token from logits: greedy, or sampled through transformers' logits warpers
(temperature, top-k, top-p), seeded per sample."""

from __future__ import annotations

import torch


class Sampler:
    def __init__(self, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None):
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.do_sample = do_sample
        self.warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)] if do_sample else [])
        if do_sample and top_k:
            self.warpers.append(TopKLogitsWarper(top_k))
        if do_sample and top_p:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, logits: torch.Tensor, generator: torch.Generator) -> int:
        """``logits`` (V,) float32 -> a token id."""
        if not self.do_sample:
            return int(torch.argmax(logits))
        scores = self.warpers(None, logits.unsqueeze(0))
        return int(torch.multinomial(torch.softmax(scores, -1)[0].cpu(), 1, generator=generator))
