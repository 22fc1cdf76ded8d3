"""The perception-token vocabulary of the VPT paper (vpt-paper.md §1.1).

Token strings are exact. The grid size is a parameter (the paper hard-wires 8). The re-encode
tokens belong to the branches plugins register (:class:`perceive.reencode.BranchTokens`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from perceive.reencode.branch_spec import BranchTokens

REGION_START = "<|region_token_start|>"
REGION_END = "<|region_token_end|>"

# The placeholder of an image in dataset message text (§1.5); each branch adds its own.
IMAGE_PLACEHOLDER = "<image>"

GRID_TOKEN_RE = re.compile(r"<\|([xy])_(\d+)\|>")


@dataclass(frozen=True)
class Vocabulary:
    """The VPT tokens for one grid size."""

    grid: int = 8

    def __post_init__(self):
        if self.grid < 1:
            raise ValueError(f"grid must be >= 1, got {self.grid}")

    def x(self, i: int) -> str:
        return f"<|x_{i}|>"

    def y(self, i: int) -> str:
        return f"<|y_{i}|>"

    @property
    def x_tokens(self) -> tuple[str, ...]:
        return tuple(self.x(i) for i in range(self.grid))

    @property
    def y_tokens(self) -> tuple[str, ...]:
        return tuple(self.y(i) for i in range(self.grid))

    @property
    def region_tokens(self) -> tuple[str, ...]:
        """The 2 + 2*grid Region Selection tokens in the paper's add order."""
        return (REGION_START, REGION_END, *self.x_tokens, *self.y_tokens)

    def model_tokens(self, branch: BranchTokens | None) -> tuple[list[str], list[str]]:
        """The tokens one VPT model adds, as ``(special_tokens, ordinary_tokens)``.

        Special tokens (the feature pad) are added first, then the ordinary ones: region
        tokens, then the branch's action triple. That order reproduces the released models'
        ids (pad 151657, region start 151658, ...).
        """
        special: list[str] = []
        ordinary = list(self.region_tokens)
        if branch is not None:
            special.append(branch.pad)
            ordinary += list(branch.span)
        return special, ordinary


def grid_index(token: str) -> tuple[str, int] | None:
    """``"<|x_3|>" -> ("x", 3)``; ``None`` for anything else. Any index, even out of range."""
    m = GRID_TOKEN_RE.fullmatch(token)
    return (m.group(1), int(m.group(2))) if m else None
