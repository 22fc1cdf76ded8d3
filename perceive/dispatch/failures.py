"""What a perception call gives back: a :class:`DispatchResult`, holding its observation or the
:class:`ActionFailure` that took its place. A plugin's failure is a value, never an exception
that reaches the loop."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from perceive.actions import ActionCall
from perceive.errors import ErrorCode, PerceiveError, error_code
from perceive.observations import Observation


class FailureStage(str, Enum):
    """Where in its path through the hooks a call failed."""

    __str__ = str.__str__
    BEFORE = "before"  # perceive_before_action raised, or the options do not fit the action's Options
    RUN = "run"  # the action (or a perceive_run_action hook) raised
    OBSERVATION = "observation"  # the action returned something that is not its observation
    TIMEOUT = "timeout"  # the call passed its timeout, or the action is quarantined


@dataclass(frozen=True)
class ActionFailure:
    """A call that did not produce an observation. ``code`` is the error's stable
    :class:`~perceive.errors.ErrorCode` value (``internal`` for an exception that is not a
    ``PerceiveError``: a bug); ``error_type`` its class name; ``invariant`` the
    :class:`~perceive.observations.Invariant` an observation broke (stage ``observation``)."""

    action: str
    stage: FailureStage
    error_type: str
    message: str
    typed: bool  # True when the error is a PerceiveError (the plugin reported bad input)
    code: str = ErrorCode.INTERNAL.value
    invariant: str | None = None

    @classmethod
    def of(cls, action: str, stage: FailureStage, exc: BaseException) -> ActionFailure:
        return cls(action, stage, type(exc).__name__, str(exc), isinstance(exc, PerceiveError), error_code(exc),
                   getattr(exc, "invariant", None))

    @property
    def timed_out(self) -> bool:
        return self.stage is FailureStage.TIMEOUT

    def to_dict(self) -> dict[str, Any]:
        d = {**self.__dict__, "stage": self.stage.value}
        if d["invariant"] is None:
            del d["invariant"]
        return d


@dataclass(frozen=True)
class DispatchResult:
    """One call's outcome: its ``observation`` or its ``failure`` (exactly one is set), and how long
    it took through every hook, in milliseconds."""

    call: ActionCall
    observation: Observation | None
    failure: ActionFailure | None
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return self.failure is None


#: what running a call's hooks gives: ``(observation, failure, error)``; either the observation or
#: the failure with the exception that caused it
Outcome = tuple[Observation | None, ActionFailure | None, BaseException | None]

__all__ = ["ActionFailure", "DispatchResult", "FailureStage", "Outcome"]
