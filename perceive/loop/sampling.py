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

    def __call__(self, logits: torch.Tensor, generator: torch.Generator) -> tuple[int, float]:
        """``logits`` (V,) float32 -> ``(token id, its log-probability under the distribution it was
        drawn from)``: greedy reads ``log_softmax(logits)``; sampling, the warped logits' (temperature,
        then top-k and top-p masks)."""
        if not self.do_sample:
            t = int(torch.argmax(logits))
            return t, float(logits[t].float() - torch.logsumexp(logits.float(), -1))
        scores = self.warpers(None, logits.unsqueeze(0))[0].float()
        logp = torch.log_softmax(scores, -1)
        t = int(torch.multinomial(logp.exp().cpu(), 1, generator=generator))
        return t, float(logp[t])
