"""Running one perception call through the hooks, with failures recorded as values.

A call may have a deadline (``timeout_s``). Python cannot kill a thread, so a call past its
deadline is abandoned, not stopped: it runs on in a daemon thread (it never blocks the process
from exiting) and its result is thrown away. To keep abandoned calls from piling up without
bound, an action with :data:`MAX_ABANDONED` calls still running is *quarantined*: its next calls
fail at once with ``action_timeout`` until one of the abandoned calls returns. (Callers that
dispatch from several threads at once may each start a call before the first is abandoned, so the
bound is ``MAX_ABANDONED`` plus their number less one.)

An abandoned call keeps the context it was given: the image copies, and the session's encoder
hub, which it may still call. Its encoder cache hits and misses then count towards whichever hop
is running when they happen.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Any

from perceive.actions import Action, ActionCall, ActionContext
from perceive.errors import ActionTimeoutError, ObservationError, PerceiveError
from perceive.geometry import ROOT, Box
from perceive.hookspecs import hookimpl
from perceive.observations import Features, Observation, Text, View

log = logging.getLogger(__name__)


#: abandoned (timed-out) calls of one action that may still be running before it is quarantined
MAX_ABANDONED = 2

_abandoned: Counter[str] = Counter()
_abandoned_lock = threading.Lock()


class FailureStage(str, Enum):
    __str__ = str.__str__
    BEFORE = "before"  # perceive_before_action raised
    RUN = "run"  # the action (or a perceive_run_action hook) raised
    OBSERVATION = "observation"  # the action returned something that is not its observation
    TIMEOUT = "timeout"  # the call passed its deadline, or the action is quarantined


@dataclass(frozen=True)
class ActionFailure:
    """A call that did not produce an observation."""

    action: str
    stage: FailureStage
    error_type: str
    message: str
    typed: bool  # True when the error is a PerceiveError (the plugin reported bad input)

    @property
    def timed_out(self) -> bool:
        return self.stage is FailureStage.TIMEOUT

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "stage": self.stage.value}


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
    expected = {"view": View, "features": Features, "text": Text}.get(action.observation, Features)
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
        if isinstance(item, Text):
            _check_text(action, item)
    return items


def _check_text(action: Action, item: Text) -> None:
    """A text observation's text is a string and its boxes ``(Box in the root frame, str)``."""
    def bad(what: str) -> ObservationError:
        return ObservationError(f"action {action.name!r} returned a Text whose {what}",
                                hint="Text(text: str, source: Frame, boxes=((Box(..., frame='root'), str), ...))")

    if not isinstance(item.text, str):
        raise bad(f"text is a {type(item.text).__name__}, not a str")
    if not isinstance(item.boxes, tuple | list):
        raise bad(f"boxes are a {type(item.boxes).__name__}, not a tuple of (Box, str) pairs")
    for pair in item.boxes:
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and isinstance(pair[0], Box)
                and isinstance(pair[1], str)):
            raise bad(f"boxes hold {pair!r}, not a (Box, str) pair")
        if pair[0].frame != ROOT:
            raise bad(f"box {pair[0].as_tuple()} is in frame {pair[0].frame!r}: boxes are in the original image's "
                      "pixels (frame 'root'); map them with context.frame.to_root(box)")
    if item.region is not None and (not isinstance(item.region, Box) or item.region.frame != ROOT):
        raise bad(f"region {item.region!r} is not a Box in the root frame")


def _run_hooks(pm, action: Action, call: ActionCall, context: ActionContext):
    """``(observation, failure, error)`` of the before and run hooks."""
    hook = pm.hook
    stage = FailureStage.BEFORE
    try:
        hook.perceive_before_action(action=action, call=call, context=context)
        stage = FailureStage.RUN
        result = hook.perceive_run_action(action=action, call=call, context=context)
        stage = FailureStage.OBSERVATION
        return normalise_observation(action, result), None, None
    except (Exception, SystemExit) as exc:  # a plugin's failure is data, not a crash (even sys.exit)
        return None, ActionFailure(call.action, stage, type(exc).__name__, str(exc),
                                   isinstance(exc, PerceiveError)), exc


def _timeout(call: ActionCall, message: str, hint: str):
    exc = ActionTimeoutError(message, hint=hint)
    return None, ActionFailure(call.action, FailureStage.TIMEOUT, type(exc).__name__, str(exc), True), exc


def _run_with_deadline(pm, action: Action, call: ActionCall, context: ActionContext, timeout_s: float):
    import torch

    with _abandoned_lock:
        stuck = _abandoned[call.action]
    if stuck >= MAX_ABANDONED:
        return _timeout(call, f"action {call.action!r} is quarantined: {stuck} earlier calls passed their deadline "
                        "and are still running",
                        "fix or remove the plugin; the quarantine lifts when one of those calls returns")
    box: dict[str, Any] = {}
    done = threading.Event()
    grad = torch.is_grad_enabled()  # grad mode is per thread: keep the caller's

    def work():
        try:
            with torch.set_grad_enabled(grad):
                out = _run_hooks(pm, action, call, context)
        except BaseException as exc:  # a KeyboardInterrupt the plugin raised itself: still its failure
            out = None, ActionFailure(call.action, FailureStage.RUN, type(exc).__name__, str(exc), False), exc
        finally:  # whatever happened, the caller hears of it and an abandoned call is let go
            with _abandoned_lock:
                box["out"] = out
                if box.pop("abandoned", False):
                    _abandoned[call.action] -= 1
                done.set()

    threading.Thread(target=work, name=f"perceive-action-{call.action}", daemon=True).start()
    if done.wait(min(timeout_s, threading.TIMEOUT_MAX)):  # inf means no deadline, not OverflowError
        return box["out"]
    with _abandoned_lock:
        if done.is_set():  # it finished between the wait and the lock
            return box["out"]
        box["abandoned"] = True
        _abandoned[call.action] += 1
    return _timeout(call, f"action {call.action!r} did not return within {timeout_s:g} s",
                    "raise runtime.action_timeout_s (or --action-timeout), or fix the plugin; the abandoned call "
                    "runs on in a background thread")


def abandoned_calls() -> dict[str, int]:
    """Timed-out calls still running, per action."""
    with _abandoned_lock:
        return {k: v for k, v in _abandoned.items() if v > 0}


def dispatch(pm, action: Action, call: ActionCall, context: ActionContext,
             timeout_s: float | None = None) -> DispatchResult:
    """Run ``call`` through ``perceive_before_action``, ``perceive_run_action`` and
    ``perceive_after_action``. Never raises for a plugin's fault: the failure is returned.

    ``timeout_s``: the call's deadline (None or 0: none). A call past it fails with stage
    ``timeout``; see the module docstring for what happens to its thread."""
    hook = pm.hook
    t0 = time.perf_counter()
    if timeout_s:
        observation, failure, error = _run_with_deadline(pm, action, call, context, timeout_s)
    else:
        observation, failure, error = _run_hooks(pm, action, call, context)
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
