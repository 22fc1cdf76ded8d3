"""The one rule that turns a controller's decision into what happens to the sample.

A pure function of the decision, the moment it was asked at, the call the model made and which
actions the model can be shown: no sample, no model, no I/O. The local session and the remote
engine both carry out its :data:`Effect`, so the two cannot drift. Every decision kind is matched
(``assert_never`` checks the match statically); a value outside :data:`perceive.control.Decision`
is refused with a message, never a silent no-op.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, assert_never

from perceive.actions import ActionCall
from perceive.control import Decision, Dispatch, Finish, Force, Ignore, Stop
from perceive.protocols.calls import PerceptionCall
from perceive.trace import FinishReason


class Moment(str, Enum):
    """When the controller was asked."""

    CALL = "call"  # the model closed a view or text call
    REENCODE = "reencode"  # the model closed a re-encode span (its control state is known)
    ANSWER = "answer"  # the model ended its answer


@dataclass(frozen=True)
class Observe:
    """Run ``call`` on the ``target`` view (None: the run's default) with ``options`` and show the
    observation."""

    call: ActionCall
    options: Mapping[str, Any]
    target: str | None
    node: str | None


@dataclass(frozen=True)
class Unanswered:
    """The call goes unanswered: the model keeps generating after it."""


@dataclass(frozen=True)
class End:
    """The sample finishes with ``reason``."""

    reason: FinishReason


@dataclass(frozen=True)
class Refuse:
    """The decision cannot be carried out here: the sample finishes with ``graph_error``."""

    message: str


Effect = Observe | Unanswered | End | Refuse


def ending(effect: End | Refuse) -> tuple[FinishReason, dict | None]:
    """How an ``End`` or a ``Refuse`` finishes the sample: ``(reason, trace error or None)``."""
    if isinstance(effect, End):
        return effect.reason, None
    return FinishReason.GRAPH_ERROR, {"type": "graph_error", "message": effect.message}

_DECISIONS = (Dispatch, Force, Ignore, Stop, Finish)


def resolve(decision: Decision, moment: Moment, call: PerceptionCall | None,
            showable: Callable[[str], bool]) -> Effect:
    """What ``decision``, taken at ``moment`` about ``call`` (None at an answer), does.
    ``showable(action)``: the model can be shown that action's observation as a turn (views and
    text; features only through the model's own re-encode span)."""
    if not isinstance(decision, _DECISIONS):
        return Refuse(f"the controller returned {decision!r}, which is not a decision: expected one of "
                      "perceive.control.Dispatch, Force, Ignore, Stop, Finish")
    match decision:
        case Stop() | Finish():
            return End(decision.reason)
        case Dispatch() if moment is Moment.ANSWER:  # nothing to run after an answer: it stands
            return End(FinishReason.EOS)
        case Dispatch():
            assert call is not None
            if moment is Moment.CALL and not showable(call.action):
                return Refuse(f"{call.action!r} returns encoder features, which this model cannot be shown after "
                              "a call")
            run = call.to_call()
            if decision.args is not None:  # the controller's arguments replace the model's
                run = dataclasses.replace(run, args=decision.args, forced=True)
            # a call that names its view (a tool-call protocol's img_idx, source) runs on it
            target = call.target if call.target is not None and moment is Moment.CALL else decision.target
            return Observe(run, decision.options, target, decision.node)
        case Force() if moment is Moment.REENCODE:  # its turn would have to follow the span's forced tokens
            return Refuse(f"cannot force {decision.action!r} after a {call.action!r} call: only after a view call "
                          "or an answer")
        case Force() if not showable(decision.action):
            after = "an answer" if call is None else f"a {call.action!r} call"
            return Refuse(f"cannot force {decision.action!r} after {after}: only view and text actions (a "
                          "re-encode runs on the model's own span, its hidden state)")
        case Force():
            return Observe(ActionCall(decision.action, decision.args, forced=True), decision.options,
                           decision.target, decision.node)
        case Ignore() if moment is Moment.ANSWER:  # nothing to leave unanswered: the answer stands
            return End(FinishReason.EOS)
        case Ignore():
            return Unanswered()
        case _:
            assert_never(decision)
