"""Running one perception call through the hook chain: ``perceive_before_action``,
``perceive_run_action`` (perceive's own :class:`CorePlugin` runs the action, last), the
observation's invariants, then ``perceive_after_action``; with a timeout, in a worker thread
(:mod:`perceive.dispatch.timeouts`). Failures are recorded as values
(:mod:`perceive.dispatch.failures`)."""

from __future__ import annotations

import logging
import time

from perceive.actions import Action, ActionCall, ActionContext
from perceive.dispatch.failures import ActionFailure, DispatchResult, FailureStage, Outcome
from perceive.dispatch.timeouts import run_with_timeout
from perceive.errors import PerceiveError
from perceive.hookspecs import hookimpl
from perceive.observations import check_observation

log = logging.getLogger(__name__)


def _run_hooks(pm, action: Action, call: ActionCall, context: ActionContext) -> Outcome:
    """``(observation, failure, error)`` of the before and run hooks, and the observation's check."""
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


def dispatch(pm, action: Action, call: ActionCall, context: ActionContext,
             timeout_s: float | None = None) -> DispatchResult:
    """Run ``call`` through ``perceive_before_action``, ``perceive_run_action`` and
    ``perceive_after_action``. Never raises for a plugin's fault: the failure is returned.

    ``timeout_s``: the call's timeout in seconds (None or 0: none). A call past it fails with stage
    ``timeout``; :mod:`perceive.dispatch.timeouts` says what happens to its thread.

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
            observation, failure, error = run_with_timeout(
                call.action, lambda: _run_hooks(pm, action, call, context), timeout_s)
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


__all__ = ["CorePlugin", "dispatch"]
