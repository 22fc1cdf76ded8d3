"""perceive: let a multimodal LLM control its own visual perception.

Perception tokens are tool calls: a span the model emits is parsed into a typed call,
dispatched through a pluggy registry of perception actions, and the observation (a new view,
encoder features, or text) is fed back to the model.
"""

from perceive.actions import Action, ActionCall, ActionContext, SpanError, TriggerGrammar
from perceive.config import PerceiveConfig, load_config
from perceive.dispatch import ActionFailure, DispatchResult, dispatch
from perceive.encoders import EncoderHub, EncoderSpec
from perceive.errors import PerceiveError
from perceive.geometry import Box, Frame
from perceive.hookspecs import hookimpl
from perceive.observations import Features, Text, View
from perceive.plugins import Registry, get_registry, load_registry
from perceive.protocols import ParseError, PerceptionCall, StreamParser, TextToolProtocol, ToolProtocol
from perceive.reencode import BranchInput, BranchSpec, BranchTokens, ModelBranchEncoder, PaperLayout, ReencodeAction

__version__ = "0.1.0"

# Model-side names import torch and transformers: load them on first use so that plugin
# discovery and the CLI's light commands stay fast.
_LAZY = {
    "load_model": "perceive.model",
    "save_model": "perceive.model",
    "VPTModel": "perceive.model",
    "PerceptionLoop": "perceive.loop",
    "LoopOptions": "perceive.loop",
    "Answer": "perceive.loop",
    "Trace": "perceive.trace",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'perceive' has no attribute {name!r}")

__all__ = [
    "Action",
    "Answer",
    "LoopOptions",
    "PerceptionLoop",
    "Trace",
    "VPTModel",
    "load_model",
    "save_model",
    "ActionCall",
    "ActionContext",
    "ActionFailure",
    "Box",
    "BranchInput",
    "BranchSpec",
    "BranchTokens",
    "DispatchResult",
    "EncoderHub",
    "EncoderSpec",
    "Features",
    "Frame",
    "ModelBranchEncoder",
    "PaperLayout",
    "ParseError",
    "PerceiveConfig",
    "PerceiveError",
    "PerceptionCall",
    "ReencodeAction",
    "Registry",
    "SpanError",
    "StreamParser",
    "TextToolProtocol",
    "ToolProtocol",
    "Text",
    "TriggerGrammar",
    "View",
    "dispatch",
    "get_registry",
    "hookimpl",
    "load_config",
    "load_registry",
]
