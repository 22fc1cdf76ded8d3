"""The perception session and the engines it drives.

Public: the loops (:class:`PerceptionLoop` for a local model, :class:`TurnSession` under a chat
backend), their options, the events they emit (:mod:`perceive.loop.events`) and the answers built
from them. Everything else in this package is the engine side's own state: consumers read events.
"""

from perceive.loop.engine import Chunk, ChunkKind, Engine, NativeEngine, ReprefillEngine, StepOut
from perceive.loop.events import (
    Event,
    Finished,
    HopFinished,
    HopStarted,
    Notice,
    PendingCall,
    Provenance,
    TokenDelta,
    ToolCallsPending,
)
from perceive.loop.options import LoopOptions, options_from_config
from perceive.loop.sample import Answer, ToolResult, Turn, answer_each
from perceive.loop.scripted import ScriptedPolicy, span_tokens
from perceive.loop.session import PerceptionLoop
from perceive.loop.template import ChatLayout
from perceive.loop.turn_session import Generated, TurnBackend, TurnSession

__all__ = [
    "Answer", "ChatLayout", "Chunk", "ChunkKind", "Engine", "Event", "Finished", "Generated", "HopFinished",
    "HopStarted", "LoopOptions", "NativeEngine", "Notice", "PendingCall", "PerceptionLoop", "Provenance",
    "ReprefillEngine", "ScriptedPolicy", "StepOut", "TokenDelta", "ToolCallsPending", "ToolResult", "Turn",
    "TurnBackend", "TurnSession", "answer_each", "options_from_config", "span_tokens",
]


def __getattr__(name):
    if name == "Sample":  # the engine side's state: read events instead
        import sys
        import warnings

        from perceive.loop.sample import Sample

        if sys._getframe(1).f_globals.get("__name__") == "importlib._bootstrap":
            return Sample  # a from-import asks twice: warn once, at the statement
        warnings.warn("perceive.loop.Sample is internal: consumers read perceive.loop.events", DeprecationWarning,
                      stacklevel=2)
        return Sample
    raise AttributeError(f"module 'perceive.loop' has no attribute {name!r}")
