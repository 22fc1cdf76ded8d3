"""Running one perception call through the hooks, with failures recorded as values."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from perceive.actions import Action, ActionCall, ActionContext
from perceive.errors import ObservationError, PerceiveError
from perceive.hookspecs import hookimpl
from perceive.observations import Features, Observation, View

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActionFailure:
    """A call that did not produce an observation. ``stage`` is ``before``, ``run`` or
    ``observation`` (the action returned the wrong thing)."""

    action: str
    stage: str
    error_type: str
    message: str
    typed: bool  # True when the error is a PerceiveError (the plugin reported bad input)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DispatchResult:
    call: ActionCall
    observation: Observation | None
    failure: ActionFailure | None
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return self.failure is None


def normalise_observation(action: Action, result: Any) -> Observation:
    """Check an action's return value against its declaration; a tuple of one kind."""
    expected = View if action.observation == "view" else Features
    items = tuple(result) if isinstance(result, list | tuple) else (result,)
    if not items:
        raise ObservationError(f"action {action.name!r} returned no observation")
    for item in items:
        if not isinstance(item, expected):
            raise ObservationError(
                f"action {action.name!r} declares observation={action.observation!r} but "
                f"returned {type(item).__name__}",
                hint=f"return perceive.{expected.__name__} objects from run()",
            )
        if isinstance(item, View):
            if item.image.size != item.frame.size:
                raise ObservationError(
                    f"action {action.name!r} returned a {item.image.size} image whose frame "
                    f"says {item.frame.size}")
            if item.image.mode != "RGB":
                raise ObservationError(f"action {action.name!r} returned a {item.image.mode} "
                                       "image; views must be RGB")
    return items


def dispatch(pm, action: Action, call: ActionCall, context: ActionContext) -> DispatchResult:
    """Run ``call`` through ``perceive_before_action``, ``perceive_run_action`` and
    ``perceive_after_action``. Never raises for a plugin's fault: the failure is returned."""
    hook = pm.hook
    t0 = time.perf_counter()
    observation = failure = error = None
    stage = "before"
    try:
        hook.perceive_before_action(action=action, call=call, context=context)
        stage = "run"
        result = hook.perceive_run_action(action=action, call=call, context=context)
        stage = "observation"
        observation = normalise_observation(action, result)
    except Exception as exc:  # a plugin's failure is data, not a crash
        error = exc
        failure = ActionFailure(call.action, stage, type(exc).__name__, str(exc),
                                isinstance(exc, PerceiveError))
    elapsed = (time.perf_counter() - t0) * 1000
    try:
        hook.perceive_after_action(action=action, call=call, context=context,
                                   observation=observation, error=error, elapsed_ms=elapsed)
    except Exception:
        log.exception("perceive_after_action raised; ignored")
    return DispatchResult(call, observation, failure, elapsed)


class CorePlugin:
    """perceive's own hook implementations, registered before any other plugin."""

    @hookimpl(trylast=True)
    def perceive_run_action(self, action: Action, call: ActionCall, context: ActionContext):
        return action.run(call, context)
