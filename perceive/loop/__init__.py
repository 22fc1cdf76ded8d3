"""The online perception loop: generation with perception calls dispatched as they close."""

from perceive.loop.engine import Answer, Decision, FreeChoice, LoopOptions, PerceptionLoop
from perceive.loop.template import ChatLayout

__all__ = ["Answer", "ChatLayout", "Decision", "FreeChoice", "LoopOptions", "PerceptionLoop"]
