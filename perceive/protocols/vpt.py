"""``vpt``: the paper's perception tokens (``<|region_token_start|>`` ... on an 8x8 grid).

The reader is :class:`perceive.protocol.StreamParser`, the observation turn the paper's image
turn (``ChatLayout.observation_turn``), the system turn the run's own: today's behaviour, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from perceive.actions import Action
from perceive.protocol import StreamParser, TokenCodec
from perceive.protocols.base import ToolProtocol, Views


class VPTProtocol(ToolProtocol):
    name = "vpt"
    description = "The paper's perception tokens: special-token spans, grid cells of the view the call targets."

    def reader(self, actions: Sequence[Action], codec: TokenCodec, views: Views | None = None) -> StreamParser:
        return StreamParser(actions, codec)
