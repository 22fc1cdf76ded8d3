"""The perception session and the engines it drives."""

from perceive.loop.engine import Chunk, ChunkKind, Engine, NativeEngine, ReprefillEngine, StepOut
from perceive.loop.options import LoopOptions
from perceive.loop.session import Answer, PerceptionLoop, Sample
from perceive.loop.template import ChatLayout

__all__ = ["Answer", "ChatLayout", "Chunk", "ChunkKind", "Engine", "LoopOptions", "NativeEngine", "PerceptionLoop",
           "ReprefillEngine", "Sample", "StepOut"]
