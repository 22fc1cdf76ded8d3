"""Plugin call timeouts: a call runs in a worker thread and is given up after its timeout.

Python cannot kill a thread, so a call past its timeout is abandoned, not stopped: it runs on in
a daemon thread (it never blocks the process from exiting) and its result is thrown away. To
keep abandoned calls from piling up without bound, an action with :data:`MAX_ABANDONED` calls
still running is *quarantined*: its next calls fail at once with ``action_timeout`` until one of
the abandoned calls returns. (Callers that dispatch from several threads at once may each start
a call before the first is abandoned, so the bound is ``MAX_ABANDONED`` plus their number less
one.)

An abandoned call keeps the context it was given: the image copies, and the session's encoder
hub, which it may still call. Its encoder cache hits and misses then count towards whichever hop
is running when they happen.

"Timeout" is a plugin call's limit (``runtime.action_timeout_s``); a "deadline" is a request's
(``perceive serve``).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from perceive.dispatch.failures import ActionFailure, FailureStage, Outcome
from perceive.errors import ActionTimeoutError

#: abandoned (timed-out) calls of one action that may still be running before it is quarantined
MAX_ABANDONED = 2

_abandoned: Counter[str] = Counter()
_abandoned_lock = threading.Lock()


def abandoned_calls() -> dict[str, int]:
    """Timed-out calls still running, per action."""
    with _abandoned_lock:
        return {k: v for k, v in _abandoned.items() if v > 0}


def _timed_out(action: str, message: str, hint: str) -> Outcome:
    exc = ActionTimeoutError(message, hint=hint)
    return None, ActionFailure.of(action, FailureStage.TIMEOUT, exc), exc


def run_with_timeout(action: str, work: Callable[[], Outcome], timeout_s: float) -> Outcome:
    """``work()`` (one call of ``action``, through its hooks) in a worker thread, waited for at
    most ``timeout_s`` seconds (``inf``: no timeout). Past it, the call is abandoned and a failure
    at stage ``timeout`` is returned; a quarantined action's call fails at once, without running.
    The worker runs in the caller's torch grad mode."""
    import contextlib
    import sys

    # torch only where it is loaded already: a process that never imported it (perceive mcp serving
    # crops) has nothing to carry, and importing it costs seconds
    torch = sys.modules.get("torch")
    with _abandoned_lock:
        stuck = _abandoned[action]
    if stuck >= MAX_ABANDONED:
        return _timed_out(action, f"action {action!r} is quarantined: {stuck} earlier calls passed their timeout "
                          "and are still running",
                          "fix or remove the plugin; the quarantine lifts when one of those calls returns")
    box: dict[str, Any] = {}
    done = threading.Event()
    grad = torch.is_grad_enabled() if torch is not None else None  # grad mode is per thread: keep the caller's

    def worker():
        try:
            with torch.set_grad_enabled(grad) if torch is not None else contextlib.nullcontext():
                out = work()
        except BaseException as exc:  # a KeyboardInterrupt the plugin raised itself: still its failure
            out = None, ActionFailure.of(action, FailureStage.RUN, exc), exc
        finally:  # whatever happened, the caller hears of it and an abandoned call is let go
            with _abandoned_lock:
                box["out"] = out
                if box.pop("abandoned", False):
                    _abandoned[action] -= 1
                done.set()

    threading.Thread(target=worker, name=f"perceive-action-{action}", daemon=True).start()
    if done.wait(min(timeout_s, threading.TIMEOUT_MAX)):  # inf means no timeout, not OverflowError
        return box["out"]
    with _abandoned_lock:
        if done.is_set():  # it finished between the wait and the lock
            return box["out"]
        box["abandoned"] = True
        _abandoned[action] += 1
    return _timed_out(action, f"action {action!r} did not return within {timeout_s:g} s",
                      "raise runtime.action_timeout_s (or --action-timeout), or fix the plugin; the abandoned call "
                      "runs on in a background thread")


__all__ = ["MAX_ABANDONED", "abandoned_calls", "run_with_timeout"]
