"""How a controller steers a sample: the protocol the session calls, and the decisions it can
return.

The session (``perceive.loop``) asks its controller at three moments: before the model speaks
(``start``: forced calls), when a perception call closes (``on_call``) and when the model ends
its answer (``on_answer``). Every decision is one of a closed set of frozen types, and the
session matches on them exhaustively, so a decision it does not know is an error, never a
silent no-op. The graph executor (``perceive.graph``) is the controller every run uses;
``free_choice`` is one graph among others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from perceive.protocols.calls import PerceptionCall
from perceive.trace import EventType, FinishReason, Trace


@dataclass(frozen=True)
class Dispatch:
    """Run the call the model made: with ``options``, on the ``target`` view ("latest", "root",
    or None for the run's default), with ``args`` replacing the parsed ones when given."""

    options: Mapping[str, Any] = field(default_factory=dict)
    target: str | None = None
    args: BaseModel | None = None
    node: str | None = None  # the graph node that decided (recorded on the hop)


@dataclass(frozen=True)
class Force:
    """Run ``action`` with ``args`` although the model did not call it (no tokens of its own)."""

    action: str
    args: BaseModel
    options: Mapping[str, Any] = field(default_factory=dict)
    target: str | None = None
    node: str | None = None


@dataclass(frozen=True)
class Ignore:
    """No observation: the call goes unanswered and the model keeps generating."""


@dataclass(frozen=True)
class Stop:
    """Finish the sample now (a call that will not be answered ends it)."""

    reason: FinishReason = FinishReason.STOPPED

    def __post_init__(self):  # an unknown reason fails here, in the controller, not mid-batch
        object.__setattr__(self, "reason", FinishReason(self.reason))


@dataclass(frozen=True)
class Finish:
    """The answer stands."""

    reason: FinishReason = FinishReason.EOS

    def __post_init__(self):
        object.__setattr__(self, "reason", FinishReason(self.reason))


Decision = Dispatch | Force | Ignore | Stop | Finish


@dataclass(frozen=True)
class RunLimits:
    """What a controller may read of the run: its hop budget and the merged action options."""

    max_hops: int
    action_options: Mapping[str, Mapping[str, Any]]


class SampleView(Protocol):
    """The part of a running sample a controller sees."""

    index: int
    hops: int  # perception calls run so far
    generated: list[int]  # token ids generated and forced so far
    state: dict[str, Any]  # the controller's own per-sample state
    trace: Trace
    node: str | None  # the graph node running (recorded on hops)
    question: str  # the text the model is asked; ``start`` may extend it (a trigger prompt)

    def event(self, type: EventType, **fields: Any) -> None:
        """Record a trace event."""


class Controller(Protocol):
    def start(self, run: RunLimits, s: SampleView) -> list[Force]:
        """Calls to make before the model speaks (views join the first user turn; a re-encode
        opens the first assistant turn)."""

    def on_call(self, run: RunLimits, s: SampleView, call: PerceptionCall) -> Decision:
        """The model closed a perception call."""

    def on_answer(self, run: RunLimits, s: SampleView) -> Decision:
        """The model ended its answer: ``Finish`` lets it stand; ``Force`` shows a view and lets
        the model answer again."""


def merge_action_options(registry, *layers: Mapping[str, Mapping[str, Any]] | None,
                         source: str = "action options") -> dict[str, dict[str, Any]]:
    """Per-action options, later layers over earlier ones: the model's trained defaults
    (``perceive.json`` ``action_defaults``), then the run config, then the call (a graph node's
    options). Each installed action's ``Options`` model checks the result, so a bad option fails
    here, before anything runs."""
    from perceive.actions import validate_action_options

    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for action, opts in (layer or {}).items():
            merged[action] = {**merged.get(action, {}), **opts}
    return {a: validate_action_options(registry.action(a), o, source) if a in registry.actions else o
            for a, o in merged.items()}


__all__ = ["Controller", "Decision", "Dispatch", "Finish", "Force", "Ignore", "RunLimits", "SampleView", "Stop",
           "merge_action_options"]
