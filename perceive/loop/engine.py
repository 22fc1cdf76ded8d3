"""Engines: what runs the language model for the session (``perceive.loop.session``).

The session hands an engine *chunks* of tokens per sample (a prompt, one decoded token, forced
tokens, an observation turn) and gets back, per sample, the final hidden state of the chunk's
last token and, when asked, its next-token logits. It never sees a KV cache or a position id.

* :class:`NativeEngine` runs a transformers model: one KV cache for the running batch, M-RoPE (or
  sequential) positions, every active sample's chunk in one forward (right-padded, masked), and
  one vision-tower call for all the images due in a step (for Qwen3-VL, its deepstack features go
  to the language model with the step's visual mask). Samples join and leave the batch
  between steps (continuous batching): a joining sample's cache row is padded with masked,
  zero keys, so it sees exactly what it would alone.
* :class:`ReprefillEngine` is the reference-style baseline: after every prompt or observation
  the whole conversation is prefilled again from scratch, vision tower included (each image once
  per prefill), as the paper's offline second round does.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import torch

from perceive.errors import ObservationError
from perceive.model.positions import sequence_positions, text_positions


class ChunkKind(str, Enum):
    PROMPT = "prompt"  # the first turn
    DECODE = "decode"  # the token the session just chose
    FORCE = "force"  # tokens the model did not choose (a re-encode span's action and end tokens)
    OBSERVE = "observe"  # an observation turn after a perception call


@dataclass
class Chunk:
    """Tokens one sample feeds in one step.

    ``images``: ``(pixel_values, grid_thw)`` pairs (grid ``(3,)`` or ``(k, 3)``) filling the
    image-pad runs in order. ``overrides``: embeddings ``(d,)`` replacing the token embedding at
    local indices (control states, projected features). ``logits``: whether the step computes
    next-token logits (False when the next token is forced)."""

    ids: list[int]
    kind: ChunkKind
    images: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    overrides: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: bool = True


@dataclass
class StepOut:
    hidden: torch.Tensor  # (d,) final-norm state of the chunk's last token
    logits: torch.Tensor | None  # (V,) float32, when the chunk asked for them
    ms: float  # the forward's wall time (shared by the batch)


class Engine(Protocol):
    """What the session needs of a model runner. Keys identify samples."""

    max_positions: int

    def open(self, key: Hashable) -> None:
        """A sample joins (its first chunk is its prompt)."""

    def feed(self, key: Hashable, chunk: Chunk) -> None:
        """Queue the sample's next chunk; every open sample has one before each step."""

    def step(self) -> dict[Hashable, StepOut]:
        """Run every queued chunk; one output per sample."""

    def close(self, key: Hashable) -> None:
        """The sample leaves; its cache is freed."""


def _grids(chunk: Chunk) -> list[torch.Tensor]:
    return [g.reshape(-1, 3) for _, g in chunk.images]


class _Embedder:
    """Chunk embeddings for a model, with one vision-tower call for all the images of a step.

    For a Qwen3-VL model it also gives each chunk's deepstack features: ``(mask, feats)`` with
    ``mask`` the chunk's image-pad positions ``(n,)`` and ``feats`` one ``(mask.sum(), d)`` tensor
    per deepstack layer (None for a chunk without images, and for Qwen2-VL models)."""

    def __init__(self, model):
        self.model = model
        self.image_pad = model.config.special.image_pad
        self.merge = model.spatial_merge_size
        self.deepstack = int(getattr(model, "deepstack_layers", 0) or 0)

    def __call__(self, chunks: list[Chunk]) -> list[torch.Tensor]:
        return self.with_visual(chunks)[0]

    @torch.no_grad()
    def with_visual(self, chunks: list[Chunk]):
        m = self.model
        grids = [g for c in chunks for g in _grids(c)]
        feats: list[torch.Tensor] = []
        deep: list[list[torch.Tensor]] | None = None  # per image: one tensor per deepstack layer
        if grids:
            pv = torch.cat([p for c in chunks for p, _ in c.images]).to(m.device)
            grid = torch.cat(grids).to(m.device)
            counts = [int(r.prod()) // self.merge**2 for r in grid]
            if self.deepstack:
                img, ds = m.image_features(pv, grid)
                deep = list(zip(*[torch.split(f, counts) for f in ds], strict=True))
            else:
                img = m.image_embeds(pv, grid)
            feats = list(torch.split(img, counts))
        out, vis, k = [], [], 0
        for c in chunks:
            ids = torch.tensor(c.ids, device=m.device)
            e = m.embed(ids)
            n_img = sum(g.shape[0] for g in _grids(c))
            v = None
            if n_img:
                img = torch.cat(feats[k:k + n_img])
                mask = ids == self.image_pad
                if int(mask.sum()) != img.shape[0]:
                    raise ObservationError(f"{int(mask.sum())} image tokens for {img.shape[0]} image features")
                e = e.masked_scatter(mask.unsqueeze(-1), img.to(e.dtype))
                if deep is not None:
                    v = (mask, [torch.cat([d[layer] for d in deep[k:k + n_img]]) for layer in range(self.deepstack)])
                k += n_img
            for i, vec in c.overrides.items():
                e[i] = vec.to(e.dtype)
            out.append(e)
            vis.append(v)
        return out, vis


def _deepstack(rows: list[tuple[int, tuple[torch.Tensor, list[torch.Tensor]] | None]], B: int, T: int,
               layers: int, device) -> dict:
    """The language model's deepstack keywords for a (B, T) batch whose row ``i`` starts with the
    tokens of a chunk (``(row, visual)`` pairs): the visual mask with each chunk's image-pad
    positions at its row and columns, and per layer the features in the mask's row-major order.
    Empty when no row has images (or the model has no deepstack layers)."""
    rows = [(i, v) for i, v in rows if v is not None]
    if not rows or not layers:
        return {}
    mask = torch.zeros(B, T, dtype=torch.bool, device=device)
    for i, (m, _) in rows:
        mask[i, :m.shape[0]] = m.to(device)
    feats = [torch.cat([v[1][layer] for _, v in rows]) for layer in range(layers)]  # rows ascend: row-major
    return {"visual_pos_masks": mask, "deepstack_visual_embeds": feats}


class Positions:
    """Position ids of a chunk, continuing a sample's sequence at ``start``: ``((3, n) long,
    next start)``. M-RoPE for image tokens (or 1-D sequential, as the model's config says);
    generated tokens are text, whatever their id."""

    def __init__(self, model):
        self.image_pad = model.config.special.image_pad
        self.merge = model.spatial_merge_size
        self.mode = model.config.positions

    def __call__(self, start: int, chunk: Chunk) -> tuple[torch.Tensor, int]:
        grids = [r.tolist() for g in _grids(chunk) for r in g]
        if grids:
            return sequence_positions(chunk.ids, self.image_pad, grids, self.merge, start, positions=self.mode)
        return text_positions(len(chunk.ids), start)


def _logits(model, hidden: torch.Tensor, rows: list[int]) -> dict[int, torch.Tensor]:
    """One lm_head call for every row that picks a token this step."""
    return dict(zip(rows, model.logits(hidden[rows]), strict=True)) if rows else {}


class NativeEngine:
    """The transformers engine: one KV cache for a running batch that samples join and leave."""

    def __init__(self, model):
        from transformers import DynamicCache

        self.model = model
        self._new_cache = DynamicCache
        self._embed = _Embedder(model)
        self.positions = Positions(model)
        self.rows: list[Hashable] = []  # samples with a cache row, in row order
        self.leaving: set[Hashable] = set()  # closed samples whose rows go at the next step
        self.next_pos: dict[Hashable, int] = {}
        self.queued: dict[Hashable, Chunk] = {}
        self.cache = None
        self.mask: torch.Tensor | None = None  # (B, past) 1 where a key is real

    @property
    def max_positions(self) -> int:
        return self.model.max_positions

    def open(self, key: Hashable) -> None:
        self.next_pos[key] = 0

    def feed(self, key: Hashable, chunk: Chunk) -> None:
        self.queued[key] = chunk

    def close(self, key: Hashable) -> None:
        self.next_pos.pop(key, None)
        self.queued.pop(key, None)
        if key in self.rows:
            self.leaving.add(key)  # its row goes at the next step, with any others that leave

    def _compact(self) -> None:
        """Drop the rows of samples that left, then the cache columns no remaining row uses (a
        long-finished sample's prompt, padding), so the cache stays as long as the longest
        running sample's context. Exact: positions are explicit and cached keys carry their
        rotary embedding."""
        keep = [i for i, k in enumerate(self.rows) if k not in self.leaving]
        self.rows = [self.rows[i] for i in keep]
        self.leaving.clear()
        if not keep:
            self.cache, self.mask = None, None
            return
        rows = torch.tensor(keep, device=self.model.device)
        self.mask = self.mask[rows]
        used = self.mask.any(0)
        cols = None if bool(used.all()) else used.nonzero().flatten()
        for layer in self.cache.layers:
            if layer.get_seq_length() > 0:
                k, v = layer.keys[rows], layer.values[rows]
                layer.keys, layer.values = (k, v) if cols is None else (k[:, :, cols], v[:, :, cols])
        if cols is not None:
            self.mask = self.mask[:, cols]

    def _join(self, keys: list[Hashable]) -> None:
        """New rows: masked zero keys for the past the batch already has."""
        dev = self.model.device
        if self.cache is None:
            self.cache = self._new_cache()
        past = 0 if self.mask is None else self.mask.shape[1]
        if past:
            for layer in self.cache.layers:
                if layer.get_seq_length() > 0:
                    zk = layer.keys.new_zeros((len(keys), *layer.keys.shape[1:]))
                    zv = layer.values.new_zeros((len(keys), *layer.values.shape[1:]))
                    layer.keys, layer.values = torch.cat([layer.keys, zk]), torch.cat([layer.values, zv])
        fresh = torch.zeros(len(keys), past, dtype=torch.long, device=dev)
        self.mask = fresh if self.mask is None else torch.cat([self.mask, fresh])
        self.rows += keys

    @torch.no_grad()
    def step(self) -> dict[Hashable, StepOut]:
        if self.leaving:
            self._compact()
        joining = [k for k in self.queued if k not in self.rows]
        if joining:
            self._join(joining)
        missing = [k for k in self.rows if k not in self.queued]
        if missing:
            raise RuntimeError(f"no chunk queued for {len(missing)} open sample(s)")
        dev = self.model.device
        chunks = [self.queued.pop(k) for k in self.rows]
        embeds, visual = self._embed.with_visual(chunks)
        lens = [len(c.ids) for c in chunks]
        T, B, d = max(lens), len(chunks), embeds[0].shape[-1]
        E = torch.zeros(B, T, d, dtype=embeds[0].dtype, device=dev)
        P = torch.zeros(3, B, T, dtype=torch.long, device=dev)
        M = torch.zeros(B, T, dtype=torch.long, device=dev)
        for i, (key, c) in enumerate(zip(self.rows, chunks, strict=True)):
            pos, self.next_pos[key] = self.positions(self.next_pos[key], c)
            n = lens[i]
            E[i, :n] = embeds[i]
            P[:, i, :n] = pos.to(dev)
            P[:, i, n:] = pos[:, -1:].to(dev)
            M[i, :n] = 1
        self.mask = torch.cat([self.mask, M], dim=1)
        deep = _deepstack(list(enumerate(visual)), B, T, self._embed.deepstack, dev)
        t0 = time.perf_counter()
        hidden = self.model.lm(E, P, self.mask if not bool(self.mask.all()) else None, self.cache,
                               use_cache=True, **deep).last_hidden_state
        ms = (time.perf_counter() - t0) * 1000
        last = hidden[torch.arange(B, device=dev), torch.tensor(lens, device=dev) - 1]
        logits = _logits(self.model, last, [i for i, c in enumerate(chunks) if c.logits])
        return {k: StepOut(last[i], logits.get(i), ms) for i, k in enumerate(self.rows)}


class ReprefillEngine:
    """The reference-style baseline: one sample at a time, and after every prompt or
    observation the whole conversation is prefilled again from scratch (vision tower
    included); decode steps use the sample's own cache."""

    def __init__(self, model):
        from transformers import DynamicCache

        self.model = model
        self._new_cache = DynamicCache
        self._embed = _Embedder(model)
        self.positions = Positions(model)
        self.history: dict[Hashable, list[tuple[Chunk, torch.Tensor]]] = {}
        self.caches: dict[Hashable, object] = {}
        self.next_pos: dict[Hashable, int] = {}
        self.queued: dict[Hashable, Chunk] = {}

    @property
    def max_positions(self) -> int:
        return self.model.max_positions

    def open(self, key: Hashable) -> None:
        self.history[key], self.next_pos[key] = [], 0

    def feed(self, key: Hashable, chunk: Chunk) -> None:
        self.queued[key] = chunk

    def close(self, key: Hashable) -> None:
        for d in (self.history, self.caches, self.next_pos, self.queued):
            d.pop(key, None)

    @torch.no_grad()
    def step(self) -> dict[Hashable, StepOut]:
        out = {}
        for key in list(self.queued):
            c = self.queued.pop(key)
            pos, self.next_pos[key] = self.positions(self.next_pos[key], c)
            self.history[key].append((c, pos))
            t0 = time.perf_counter()
            if key not in self.caches or c.kind in (ChunkKind.PROMPT, ChunkKind.OBSERVE):
                chunks = [h for h, _ in self.history[key]]
                embeds, visual = self._embed.with_visual(chunks)
                E = torch.cat(embeds).unsqueeze(0)
                P = torch.cat([p for _, p in self.history[key]], dim=1).unsqueeze(1)
                self.caches[key] = self._new_cache()
                if any(v is not None for v in visual):  # the whole history is one row
                    mask = torch.cat([v[0] if v is not None else torch.zeros(e.shape[0], dtype=torch.bool,
                                                                             device=e.device)
                                      for e, v in zip(embeds, visual, strict=True)])
                    layers = self._embed.deepstack
                    visual = [(mask, [torch.cat([v[1][layer] for v in visual if v is not None])
                                      for layer in range(layers)])]
                else:
                    visual = [None]
            else:
                embeds, visual = self._embed.with_visual([c])
                E, P = embeds[0].unsqueeze(0), pos.unsqueeze(1)
            deep = _deepstack(list(enumerate(visual)), 1, E.shape[1], self._embed.deepstack, self.model.device)
            h = self.model.lm(E, P.to(self.model.device), None, self.caches[key], use_cache=True,
                              **deep).last_hidden_state
            last = h[0, -1].clone()  # not a view: a kept control state must not hold the whole prefill
            logits = self.model.logits(last.unsqueeze(0))[0] if c.logits else None
            out[key] = StepOut(last, logits, (time.perf_counter() - t0) * 1000)
        return out
