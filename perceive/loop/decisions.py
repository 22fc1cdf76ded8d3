"""What the session does with a controller's decision: at a view or text call, at a re-encode
call, and at an answer. Every decision kind is matched; one the session cannot carry out ends the
sample with ``graph_error``, never a silent no-op."""

from __future__ import annotations

import dataclasses

import torch

from perceive.actions import ActionCall
from perceive.control import Decision, Dispatch, Finish, Force, Ignore, Stop
from perceive.graph.executor import RAISE_MAX_HOPS, describe_call, hops_budget
from perceive.loop.engine import Chunk, ChunkKind
from perceive.loop.sample import Sample
from perceive.protocol import ParseError, PerceptionCall
from perceive.trace import EventType, FinishReason


class Decisions:
    """Mixed into :class:`~perceive.loop.PerceptionLoop` (it uses the loop's registry, controller,
    observer and budget)."""

    def _controller(self, s: Sample):
        """The sample's own controller (a request that names its graph), else the run's."""
        return s.controller or self.controller

    def _limits(self, s: Sample):
        return s.limits or self.limits

    def _show(self, action: str):
        """The observer's method that shows ``action``'s observation as a turn (views, text), or
        None (features: shown only through a model branch)."""
        kind = self.registry.action(action).observation
        return {"view": self.observer.show_views, "text": self.observer.show_text}.get(kind)

    def _unanswered(self, s: Sample, ev: PerceptionCall, closing: list[int]) -> None:
        """``ev`` goes unanswered: the model keeps generating after ``closing``, and the call's text is
        no part of its answer (a text protocol's call is ordinary tokens)."""
        s.unanswered.append((ev.start, ev.end))
        s.pending = Chunk(closing, ChunkKind.DECODE)

    def _on_call(self, s: Sample, ev: PerceptionCall, closing: int) -> None:
        if self._show(ev.action) is None:
            s.event(EventType.NO_PROJECTOR, action=ev.action,
                    message=f"the model has no branch to show {ev.action!r} features")
            self._unanswered(s, ev, [closing])
            return
        self._decide(s, self._controller(s).on_call(self._limits(s), s, ev), ev, [closing])

    def _on_client_call(self, s: Sample, ev: PerceptionCall, closing: int) -> None:
        """Client-side tools: the call goes back to the caller, within the run's hop budget (earlier
        turns the client ran count); past it the call goes unanswered, as in a server-side run."""
        name = self.protocol.call_name_and_arguments(ev)[0]
        if s.tools is not None and name not in s.tools:
            s.event(EventType.GRAPH, action=ev.action, message=f"the model called {name!r}, which the request's tools "
                    f"do not list ({sorted(s.tools)}): the call went unanswered")
            self._unanswered(s, ev, [closing])
            return
        limit = self._limits(s).max_hops
        if s.hops >= limit:
            s.event(EventType.BUDGET_EXHAUSTED, action=ev.action, max_hops=limit, tokens=list(ev.tokens),
                    message=f"{describe_call(ev)} went unanswered: {hops_budget(limit)}; {RAISE_MAX_HOPS}")
            self._unanswered(s, ev, [closing])
            return
        s.calls.append(ev)
        self.finish(s, FinishReason.TOOL_CALLS)

    def _on_answer(self, s: Sample, closing: int) -> None:
        if s.parser is None:  # dispatch is off: the answer stands
            self.finish(s, FinishReason.EOS)
            return
        decision = self._controller(s).on_answer(self._limits(s), s)
        match decision:
            case Force() if self._show(decision.action) is not None:
                if not self._spent(s):
                    self._show(decision.action)(s, ActionCall(decision.action, decision.args, forced=True), decision,
                                                [closing])
            case Force():
                msg = f"cannot force {decision.action!r} after an answer: only view and text actions"
                self.finish(s, FinishReason.GRAPH_ERROR, {"type": "graph_error", "message": msg})
            case Stop() | Finish():
                self.finish(s, decision.reason)
            case Ignore() | Dispatch():  # nothing to run after an answer: it stands
                self.finish(s, FinishReason.EOS)
            case _:
                raise TypeError(f"unknown decision {decision!r}: expected one of perceive.control.Decision")

    def _decide(self, s: Sample, decision: Decision, ev: PerceptionCall, closing: list[int]) -> None:
        """Carry out a controller's decision on a view or text call."""
        match decision:
            case Dispatch():
                call = ev.to_call()
                if ev.target is not None:  # the call names its view (a tool-call protocol's img_idx, source)
                    decision = dataclasses.replace(decision, target=ev.target)
                if decision.args is not None:  # the controller's arguments replace the model's
                    call = dataclasses.replace(call, args=decision.args, forced=True)
                self._show(call.action)(s, call, decision, closing)
            case Force() if self._show(decision.action) is not None:
                self._show(decision.action)(s, ActionCall(decision.action, decision.args, forced=True), decision,
                                            closing)
            case Force():  # a re-encode needs the model's own span (its control state)
                msg = (f"cannot force {decision.action!r} after a {ev.action!r} call: a re-encode runs on the "
                       "model's own span")
                self.finish(s, FinishReason.GRAPH_ERROR, {"type": "graph_error", "message": msg})
            case Ignore():
                self._unanswered(s, ev, closing)
            case Stop() | Finish():
                self.finish(s, decision.reason)
            case _:
                raise TypeError(f"unknown decision {decision!r}: expected one of perceive.control.Decision")

    def _reencode(self, s: Sample, branch, control: torch.Tensor) -> None:
        A, E = branch.action_id, branch.end_id
        s.generated.append(A)
        if s.parser is None:  # no dispatch: only the reference's action-token correction
            if not self._spent(s):
                s.pending = Chunk([A], ChunkKind.FORCE, overrides={0: control})
            return
        ev = s.parser.feed(A)
        s.generated.append(E)
        ev = s.parser.feed(E) or ev
        if isinstance(ev, ParseError):
            s.event(EventType.PARSE_ERROR, **ev.to_dict())
        if self._spent(s):  # the span is complete but no token is left to use an observation
            return
        skip = Chunk([A, E], ChunkKind.FORCE, overrides={0: control})
        if not isinstance(ev, PerceptionCall):
            s.pending = skip
            return
        decision, s.forced_reencode = (s.forced_reencode or self._controller(s).on_call(self._limits(s), s, ev)), None
        match decision:
            case Dispatch():
                self.observer.show_features(s, branch, ev, decision, control)
            case Stop() | Finish():
                self.finish(s, decision.reason)
            case Force():  # its observation turn would have to follow the span's forced tokens
                msg = (f"cannot force {decision.action!r} after a {ev.action!r} call: only after a view call or "
                       "an answer")
                self.finish(s, FinishReason.GRAPH_ERROR, {"type": "graph_error", "message": msg})
            case Ignore():
                s.pending = skip
            case _:
                raise TypeError(f"unknown decision {decision!r}: expected one of perceive.control.Decision")
