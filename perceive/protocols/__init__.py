"""Tool-call protocols: how each model family calls perception actions (see
:mod:`perceive.protocols.base`). Built in: ``vpt``, ``hermes_json``, ``mini_o3_grounding``; more
arrive through the ``perceive_register_protocols`` hook.

What every reader yields is in :mod:`perceive.protocols.calls` (``PerceptionCall``, ``ParseError``),
how a reader sees token ids in :mod:`perceive.protocols.codec`, and the VPT stream parser in
:mod:`perceive.protocols.vpt_stream`."""

from perceive.protocols.base import (
    IncrementalDetokenizer,
    Resolved,
    TextCallReader,
    TextToolProtocol,
    ToolProtocol,
    protocol_problems,
    read_box,
)
from perceive.protocols.calls import Event, ParseError, ParseErrorKind, PerceptionCall
from perceive.protocols.codec import DictCodec, TokenCodec, codec_from_tokenizer
from perceive.protocols.hermes import HermesJSON, HermesOptions
from perceive.protocols.mini_o3 import MiniO3Grounding, MiniO3Options
from perceive.protocols.vpt import VPTProtocol
from perceive.protocols.vpt_stream import StreamParser, parse_tokens, split_text


def builtin_protocols() -> list[ToolProtocol]:
    return [VPTProtocol(), HermesJSON(), MiniO3Grounding()]


__all__ = ["DictCodec", "Event", "HermesJSON", "HermesOptions", "IncrementalDetokenizer", "MiniO3Grounding",
           "MiniO3Options", "ParseError", "ParseErrorKind", "PerceptionCall", "Resolved", "StreamParser",
           "TextCallReader", "TextToolProtocol", "TokenCodec", "ToolProtocol", "VPTProtocol", "builtin_protocols",
           "codec_from_tokenizer", "parse_tokens", "protocol_problems", "read_box", "split_text"]
