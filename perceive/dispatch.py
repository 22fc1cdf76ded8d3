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
from perceive.errors import ActionTimeoutError, ErrorCode, PerceiveError, error_code
from perceive.hookspecs import hookimpl
from perceive.observations import Observation, check_observation

log = logging.getLogger(__name__)


#: abandoned (timed-out) calls of one action that may still be running before it is quarantined
MAX_ABANDONED = 2

_abandoned: Counter[str] = Counter()
_abandoned_lock = threading.Lock()


class FailureStage(str, Enum):
    __str__ = str.__str__
    BEFORE = "before"  # perceive_before_action raised, or the options do not fit the action's Options
    RUN = "run"  # the action (or a perceive_run_action hook) raised
    OBSERVATION = "observation"  # the action returned something that is not its observation
    TIMEOUT = "timeout"  # the call passed its deadline, or the action is quarantined


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
    call: ActionCall
    observation: Observation | None
    failure: ActionFailure | None
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return self.failure is None


def _run_hooks(pm, action: Action, call: ActionCall, context: ActionContext):
    """``(observation, failure, error)`` of the before and run hooks."""
    hook = pm.hook
    stage = FailureStage.BEFORE
    try:
        hook.perceive_before_action(action=action, call=call, context=context)
        stage = FailureStage.RUN
        result = hook.perceive_run_action(action=action, call=call, context=context)
        stage = FailureStage.OBSERVATION
        # the output invariants, the conformance kit's own: a breach is this call's failure
        return check_observation(action.name, action.observation, result, context), None, None
    except (Exception, SystemExit) as exc:  # a plugin's failure is data, not a crash (even sys.exit)
        return None, ActionFailure.of(call.action, stage, exc), exc


def _timeout(call: ActionCall, message: str, hint: str):
    exc = ActionTimeoutError(message, hint=hint)
    return None, ActionFailure.of(call.action, FailureStage.TIMEOUT, exc), exc


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
            out = None, ActionFailure.of(call.action, FailureStage.RUN, exc), exc
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
    ``timeout``; see the module docstring for what happens to its thread.

    The hooks get ``context`` with its ``options`` validated into the action's ``Options`` instance
    (:meth:`~perceive.actions.ActionContext.for_action`): options that do not fit fail the call at
    stage ``before``."""
    hook = pm.hook
    t0 = time.perf_counter()
    try:
        context = context.for_action(action)
    except PerceiveError as exc:  # options passed in by hand that no config check saw
        observation, failure, error = None, ActionFailure.of(call.action, FailureStage.BEFORE, exc), exc
    else:
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
