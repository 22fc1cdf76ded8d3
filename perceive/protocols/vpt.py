"""``vpt``: the paper's perception tokens (``<|region_token_start|>`` ... on an 8x8 grid).

The reader is :class:`perceive.protocols.vpt_stream.StreamParser`, the observation turn the paper's image
turn (``ChatLayout.observation_turn``), the system turn the run's own: today's behaviour, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from perceive.actions import Action
from perceive.geometry import Frame
from perceive.protocols.base import ToolProtocol, Views
from perceive.protocols.calls import Event
from perceive.protocols.codec import TokenCodec
from perceive.protocols.vpt_stream import StreamParser, parse_tokens, split_text


class VPTProtocol(ToolProtocol):
    name = "vpt"
    description = "The paper's perception tokens: special-token spans, grid cells of the view the call targets."

    def reader(self, actions: Sequence[Action], codec: TokenCodec, views: Views | None = None) -> StreamParser:
        return StreamParser(actions, codec)

    def calls_in_text(self, text: str, views: Sequence[Frame], actions: Sequence[Action]) -> list[Event]:
        # each <|...|> literal is one token, as the model's tokenizer has them
        return parse_tokens([a for a in actions if a.grammar is not None], split_text(text))
