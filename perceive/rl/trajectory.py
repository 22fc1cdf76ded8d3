"""A rollout as the loss sees it: every token fed to the model, where each came from, and the
log-probability of each generated one, read from the loop's event stream; and the
teacher-forced forward that recomputes those log-probabilities with gradients.

The forward is supervised training's: :meth:`perceive.model.vpt.VPTModel.forward` on the exact
ids, with the same images and crops (the pixel rows the loop fed) and the same re-encode
features in the same places, and positions from the same function the engines use. For a fresh
policy it gives the rollout's log-probabilities back (tests/test_rl_ratio.py): the importance
ratio starts at 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from perceive.loop.events import Event, Finished, Provenance, TokenDelta
from perceive.model.positions import sequence_positions, text_positions


@dataclass
class Trajectory:
    """One rollout. ``ids`` ``(L,)``: every token fed to the model, in order; ``provenance`` one
    per id; ``old_logprobs``: for each ``GENERATED`` id, in order, its log-probability under the
    sampling distribution it was drawn from (float); ``images``: ``(pixel_values, grid_thw)`` in
    order; ``features``: ``(branch, raw features)`` in order. ``finished``: the sample's last event
    (answer, trace, finish reason)."""

    ids: list[int] = field(default_factory=list)
    provenance: list[Provenance] = field(default_factory=list)
    old_logprobs: list[float] = field(default_factory=list)
    images: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    features: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    #: the ids of each delta, with its image grids: positions continue delta by delta as the
    #: engines compute them chunk by chunk (a generated id is text, whatever it is)
    segments: list[tuple[int, list[list[int]]]] = field(default_factory=list)
    #: where each delta that carried re-encode features starts (an index into ``ids``): the span's
    #: action token is two before it (action, end, then the observation)
    features_at: list[int] = field(default_factory=list)
    finished: Finished | None = None

    @classmethod
    def from_events(cls, events: list[Event]) -> Trajectory:
        t = cls()
        for ev in events:
            if isinstance(ev, TokenDelta):
                if ev.features:
                    t.features_at.append(len(t.ids))
                t.ids += ev.ids
                t.provenance += [ev.provenance] * len(ev.ids)
                if ev.provenance is Provenance.GENERATED:
                    t.old_logprobs += list(ev.logprobs or ())
                t.images += ev.images
                t.features += ev.features
                t.segments.append((len(ev.ids), [r.tolist() for _, g in ev.images for r in g.reshape(-1, 3)]))
            elif isinstance(ev, Finished):
                t.finished = ev
        return t

    @property
    def generated_mask(self) -> torch.Tensor:
        """``(L,)`` bool: the tokens the policy chose (the only ones the loss counts)."""
        return torch.tensor([p is Provenance.GENERATED for p in self.provenance], dtype=torch.bool)

    @property
    def fed_mask(self) -> torch.Tensor:
        """``(L,)`` bool: the tokens the loop placed (everything the policy did not generate)."""
        return ~self.generated_mask

    def positions(self, model) -> torch.Tensor:
        """``(3, L)`` long: the position ids the engines gave these tokens, segment by segment."""
        parts, start, at = [], 0, 0
        pad, merge, mode = model.config.special.image_pad, model.spatial_merge_size, model.config.positions
        for n, grids in self.segments:
            ids = self.ids[at:at + n]
            at += n
            if grids:
                p, start = sequence_positions(ids, pad, grids, merge, start, positions=mode)
            else:
                p, start = text_positions(n, start)
            parts.append(p)
        return torch.cat(parts, dim=1) if parts else torch.zeros(3, 0, dtype=torch.long)

    @property
    def num_generated(self) -> int:
        return len(self.old_logprobs)


def forward_inputs(model, trajs: list[Trajectory]) -> dict:
    """The keyword arguments of ``model.forward`` for a batch of trajectories, right-padded:
    ``input_ids`` ``(B, L)`` long, ``attention_mask`` ``(B, L)``, ``position_ids`` ``(3, B, L)``
    (the model's M-RoPE or sequential positions), ``pixel_values``/``image_grid_thw`` of every
    image in batch order, ``features`` per branch in placeholder order."""
    B, L = len(trajs), max(len(t.ids) for t in trajs)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((B, L), pad, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    positions = torch.zeros(3, B, L, dtype=torch.long)
    fed = torch.zeros(B, L, dtype=torch.bool)
    pixels, grids, features = [], [], {}
    shown: dict[str, list[bool]] = {}
    branches = {b.action_id: name for name, b in model.config.branches.items()}
    for i, t in enumerate(trajs):
        n = len(t.ids)
        input_ids[i, :n] = torch.tensor(t.ids)
        mask[i, :n] = 1
        fed[i, :n] = t.fed_mask
        positions[:, i, :n] = t.positions(model)
        pixels += [p for p, _ in t.images]
        grids += [g.reshape(-1, 3) for _, g in t.images]
        for branch, f in t.features:
            features.setdefault(branch, []).append(f.clone())  # made under inference_mode: not saveable
        fed_here = t.fed_mask
        for j, tok in enumerate(t.ids):  # each span the loop placed: were its features shown?
            if tok in branches and fed_here[j]:
                shown.setdefault(branches[tok], []).append(j + 2 in t.features_at)
    dev = model.device
    out = {"input_ids": input_ids.to(dev), "attention_mask": mask.to(dev), "position_ids": positions.to(dev),
           "fed": fed.to(dev)}
    if pixels:
        out["pixel_values"] = torch.cat(pixels).to(dev)
        out["image_grid_thw"] = torch.cat(grids).to(dev)
    if features:
        out["features"] = features
    if shown:
        out["shown"] = {k: torch.tensor(v, dtype=torch.bool) for k, v in shown.items()}
    return out


def warp(logits: torch.Tensor, warpers) -> torch.Tensor:
    """``(N, V)`` float logits -> the log-probabilities of the distribution the loop samples from
    (temperature, then top-k and top-p: :class:`perceive.loop.sampling.Sampler`'s warpers; none:
    greedy's ``log_softmax``). Differentiable in the logits that stay."""
    scores = warpers(None, logits.float()) if warpers else logits.float()
    return torch.log_softmax(scores, -1)


@dataclass
class Scored:
    """The teacher-forced forward's reading of a batch: per trajectory, ``logprobs`` ``(n_i,)`` of
    its generated tokens (float32, with gradients) and their ``entropy`` ``(n_i,)`` (no gradient)."""

    logprobs: list[torch.Tensor]
    entropy: list[torch.Tensor]


def score(model, trajs: list[Trajectory], warpers=None, forward=None) -> Scored:
    """Recompute the log-probabilities of each trajectory's generated tokens under ``model``
    (the policy being trained, or the reference) by one teacher-forced forward of the batch.
    ``forward``: what runs the model (default ``model.forward``; a trainer passes its wrapped,
    possibly distributed, module)."""
    inputs = forward_inputs(model, trajs)
    run = forward or model
    actions = {b.action_id for b in model.config.branches.values()}
    spans = max((sum(1 for j, a in enumerate(t.ids) if a in actions and t.provenance[j] is not Provenance.GENERATED)
                 for t in trajs), default=0)
    out = run(**inputs, para_mask_id=0, para_mask_ratio=0.0,
              num_inner_forward_run=max(model.config.num_inner_forward_run, 1 + spans))
    logprobs, entropy = [], []
    for i, t in enumerate(trajs):
        where = t.generated_mask.nonzero().flatten()
        rows = out.logits[i, where - 1]  # the logits each generated token was drawn from
        lp = warp(rows, warpers)
        logprobs.append(lp.gather(-1, inputs["input_ids"][i, where].unsqueeze(-1)).squeeze(-1))
        with torch.no_grad():
            entropy.append(torch.special.entr(lp.exp()).sum(-1))
    return Scored(logprobs, entropy)
