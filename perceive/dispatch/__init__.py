"""Dispatch: running one perception call through the plugin hooks, with failures recorded as
values, never raised.

* :mod:`~perceive.dispatch.hooks`: :func:`dispatch`, the hook chain a call runs through, and
  :class:`CorePlugin` (perceive's own hook implementations);
* :mod:`~perceive.dispatch.timeouts`: plugin call timeouts: a call in a worker thread, abandoned
  past its timeout, and the quarantine of an action with too many abandoned calls
  (:func:`run_with_timeout`, :func:`abandoned_calls`);
* :mod:`~perceive.dispatch.failures`: what a call gives back (:class:`DispatchResult`,
  :class:`ActionFailure`, :class:`FailureStage`).
"""

from perceive.dispatch.failures import ActionFailure, DispatchResult, FailureStage, Outcome
from perceive.dispatch.hooks import CorePlugin, dispatch
from perceive.dispatch.timeouts import MAX_ABANDONED, abandoned_calls, run_with_timeout

__all__ = ["MAX_ABANDONED", "ActionFailure", "CorePlugin", "DispatchResult", "FailureStage", "Outcome",
           "abandoned_calls", "dispatch", "run_with_timeout"]
