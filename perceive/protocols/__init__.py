"""Tool-call protocols: how each model family calls perception actions (see
:mod:`perceive.protocols.base`). Built in: ``vpt``, ``hermes_json``, ``mini_o3_grounding``; more
arrive through the ``perceive_register_protocols`` hook."""

from perceive.protocols.base import (
    IncrementalDetokenizer,
    Resolved,
    TextCallReader,
    TextToolProtocol,
    ToolProtocol,
    protocol_problems,
    read_box,
)
from perceive.protocols.hermes import HermesJSON, HermesOptions
from perceive.protocols.mini_o3 import MiniO3Grounding, MiniO3Options
from perceive.protocols.vpt import VPTProtocol


def builtin_protocols() -> list[ToolProtocol]:
    return [VPTProtocol(), HermesJSON(), MiniO3Grounding()]


__all__ = ["HermesJSON", "HermesOptions", "IncrementalDetokenizer", "MiniO3Grounding", "MiniO3Options", "Resolved",
           "TextCallReader", "TextToolProtocol", "ToolProtocol", "VPTProtocol", "builtin_protocols",
           "protocol_problems", "read_box"]
