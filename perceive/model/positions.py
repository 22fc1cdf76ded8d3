"""M-RoPE positions, incrementally (vpt-paper.md §1.5; transformers' ``get_rope_index``).

Text tokens take one position each, the same on all three axes. An image block of merged grid
``(t, h, w)`` starting at position ``p`` takes ``(p + t_i, p + h_i, p + w_i)`` and moves the
next position to ``p + max(h, w)``. Feature placeholders of the re-encode families are text
tokens here, as in the paper. Computing segment by segment gives exactly the positions a full
pass over the whole sequence gives.

Sequential positions give every token, image tokens included, its own 1-D index (row-major
over an image), as the reference's training does (vpt-paper.md §2.6). A model trained that way is
run that way: the setting lives in its ``perceive.json`` (``positions``). Under M-RoPE with a
narrow head an image's rows and columns get only the lowest rotary frequencies; 1-D positions are
one way round that (a smaller RoPE base is another; recipes/cards/NOTES.md compares them).
"""

from __future__ import annotations

from typing import Literal

import torch


def text_positions(n: int, start: int) -> tuple[torch.Tensor, int]:
    """``(3, n)`` positions of ``n`` text tokens from ``start``, and the next position."""
    p = torch.arange(start, start + n, dtype=torch.long)
    return p.expand(3, n).clone(), start + n


def image_positions(grid_thw, merge: int, start: int) -> tuple[torch.Tensor, int]:
    """``(3, t*h*w/merge^2)`` positions of one image block and the next position."""
    t, h, w = (int(x) for x in grid_thw)
    h, w = h // merge, w // merge
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([tt, hh, ww]).reshape(3, -1) + start
    return pos, start + max(h, w)


def sequence_positions(ids: list[int], image_pad: int, grids, merge: int, start: int = 0,
                       positions: Literal["mrope", "sequential"] = "mrope") -> tuple[torch.Tensor, int]:
    """Positions of a whole id sequence whose runs of ``image_pad`` are images with ``grids``
    (one ``(t, h, w)`` per run, in order); ``positions="sequential"``: 1-D for images too."""
    if positions not in ("mrope", "sequential"):  # a typo would silently run M-RoPE
        raise ValueError(f"positions must be 'mrope' or 'sequential', not {positions!r}")
    parts, pos, i, g = [], start, 0, iter(grids)
    n = len(ids)
    while i < n:
        j = i
        if ids[i] == image_pad:
            while j < n and ids[j] == image_pad:
                j += 1
            grid = next(g)
            p, after = image_positions(grid, merge, pos)
            if p.shape[1] != j - i:
                raise ValueError(f"{j - i} image tokens for a grid of {p.shape[1]}")
            if positions == "sequential":
                p, after = text_positions(j - i, pos)
            pos = after
        else:
            while j < n and ids[j] != image_pad:
                j += 1
            p, pos = text_positions(j - i, pos)
        parts.append(p)
        i = j
    return (torch.cat(parts, dim=1) if parts else torch.zeros(3, 0, dtype=torch.long)), pos
