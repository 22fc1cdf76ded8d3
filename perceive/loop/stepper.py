"""Advancing a sample after each engine step: the next token, the call it closes, the
controller's decision (applied through :func:`perceive.loop.decision_rule.resolve`), and the
sample's end, emitted as its ``Finished`` event.

The stepper reads only what it is given (the observer, the run's options, controller and limits,
the sampler and the model's special tokens); :class:`~perceive.loop.continuous_batching.Batch`
calls :meth:`Stepper.after_step` and :meth:`Stepper.conclude`, nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, assert_never

import torch

from perceive.control import Controller, RunLimits
from perceive.graph.executor import RAISE_MAX_HOPS, describe_call, hops_budget
from perceive.loop.decision_rule import Effect, End, Moment, Observe, Refuse, Unanswered, ending, resolve
from perceive.loop.engine import Chunk, ChunkKind, StepOut
from perceive.loop.events import Finished, PendingCall, Provenance, TokenDelta, ToolCallsPending
from perceive.loop.replay import preview_boxes
from perceive.loop.sampling import Sampler
from perceive.protocols.calls import ParseError, PerceptionCall
from perceive.trace import EventType, FinishReason

if TYPE_CHECKING:
    from perceive.loop.observe import Observer
    from perceive.loop.options import LoopOptions
    from perceive.loop.sample import Sample
    from perceive.model.config import BranchConfig

#: ``policy(sample_index, generated_ids, logits) -> token id | None``: overrides the model's choice
Policy = Callable[[int, list[int], torch.Tensor], "int | None"]


@dataclass
class Stepper:
    observer: Observer
    options: LoopOptions
    controller: Controller
    limits: RunLimits
    sampler: Sampler
    max_positions: int
    policy: Policy | None = None

    def __post_init__(self):
        cfg = self.observer.cfg
        self.eos = self.observer.eos
        self.start_branch: dict[int, BranchConfig] = {b.start_id: b for b in cfg.branches.values()}

    # -- what the batch calls ---------------------------------------------------------------------

    def after_step(self, s: Sample, out: StepOut) -> None:
        """The engine fed ``s.pending``: ``out.hidden`` is the final-norm state of its last token,
        ``out.logits`` its next-token logits (None when the next token is forced)."""
        chunk, s.pending = s.pending, None
        s.fed += len(chunk.ids)
        if chunk.kind is ChunkKind.OBSERVE and s.trace.hops:
            s.trace.hops[-1].prefill_ms = out.ms
        s.close_hop()
        self._advance(s, out.hidden, out.logits)
        if s.pending is not None and s.fed + len(s.pending.ids) > self.max_positions:
            s.finish(FinishReason.CONTEXT_FULL)

    def conclude(self, s: Sample) -> None:
        """Complete a finished sample's trace and emit its last events (the rest of its text, the
        calls going back to its client, ``Finished``)."""
        s.close_hop()
        obs = self.observer
        # a model without a tokenizer (``generate_ids`` on bare weights): ids only
        decode = obs.tokenizer.decode if obs.tokenizer is not None else (lambda ids, **_: "")
        # an answer is text: a perception token left in it (a malformed span) is a parse_error event,
        # never part of the answer; nor is an unanswered call (a text protocol writes it in ordinary tokens)
        skip = {i for a, b in s.unanswered for i in range(a, b + 1)}
        turn = list(enumerate(s.generated[s.answer_from:], s.answer_from))
        final = [t for i, t in turn if t not in self.eos and t not in obs.perception_ids and i not in skip]
        t = s.trace
        t.answer = decode(final, skip_special_tokens=True).strip()
        t.text = decode(s.generated, skip_special_tokens=False)
        t.generated_tokens = len(s.generated)
        t.total_ms = (time.perf_counter() - s.t0) * 1000 if s.ran else 0.0
        raw = decode([i for _, i in turn if i not in self.eos], skip_special_tokens=False)
        if s.calls:
            s.outbox.append(self._pending(s, t.answer, raw))
        elif s.turn_text is not None:
            rest = s.turn_text.rest(t.answer)
            if rest:
                s.outbox.append(TokenDelta(s.index, (), Provenance.GENERATED, None, rest))
        s.outbox.append(Finished(s.index, t.answer, t.finish_reason, t, raw, tuple(s.generated),
                                 s.logits if self.options.record_logits else None))

    def _pending(self, s: Sample, answer: str, raw: str) -> ToolCallsPending:
        limits = self._limits(s)
        calls = []
        for call in s.calls:
            name, arguments = self.observer.protocol.call_name_and_arguments(call)
            calls.append(PendingCall(name, arguments, call.action, call.args.model_dump(mode="json"),
                                     self.observer.target_of(s, call.target),
                                     dict(limits.action_options.get(call.action, {})),
                                     preview_boxes(self.observer, s, call, limits)))
        tag = getattr(self.observer.protocol, "open_tag", "")
        if tag:  # the text before the call's markup
            answer, raw = answer.split(tag)[0].strip(), raw.split(tag)[0].strip()
        return ToolCallsPending(s.index, tuple(calls), answer, raw)

    # -- one token ------------------------------------------------------------------------------

    def _controller(self, s: Sample) -> Controller:
        """The sample's own controller (a request that names its graph), else the run's."""
        return s.controller or self.controller

    def _limits(self, s: Sample) -> RunLimits:
        return s.limits or self.limits

    def _advance(self, s: Sample, h: torch.Tensor, logits: torch.Tensor | None) -> None:
        if s.awaiting_control is not None:
            branch, s.awaiting_control = s.awaiting_control, None
            self._reencode(s, branch, h)
            return
        if self.options.record_logits:
            s.logits.append(logits.cpu())
        t = self.policy(s.index, s.generated, logits) if self.policy is not None else None
        if t is None:
            t, logprob = self.sampler(logits, s.gen)
            self._on_token(s, t, Provenance.GENERATED, logprob)
        else:  # a policy's token: the model did not choose it
            self._on_token(s, int(t), Provenance.FORCED, None)

    def _spent(self, s: Sample, reserve: int = 0) -> bool:
        """Finish the sample when its token budget cannot take ``reserve`` more tokens. Every
        generated or forced token counts, on every path."""
        if len(s.generated) + reserve < (s.max_new_tokens or self.options.max_new_tokens):
            return False
        s.finish(FinishReason.MAX_NEW_TOKENS)
        return True

    def _on_token(self, s: Sample, t: int, provenance: Provenance, logprob: float | None) -> None:
        s.generated.append(t)
        s.decoded_since_hop += 1
        text = s.turn_text.push(t) if s.turn_text is not None else ""
        s.tokens([t], provenance, None if logprob is None else [logprob], text)
        ev = s.parser.feed(t) if s.parser is not None else None
        if isinstance(ev, ParseError):
            s.event(EventType.PARSE_ERROR, **ev.to_dict())
        branch = self.start_branch.get(t)
        if branch is not None:
            # a re-encode span opens: feed the start token; its final hidden state is the control
            # signal the forced action token carries (§2.6 step 3, §2.9). The forced tokens (action,
            # and end when dispatching) must fit the budget too.
            if self._spent(s, reserve=1 if s.parser is None else 2):
                return
            s.awaiting_control = branch
            s.pending = Chunk([t], ChunkKind.DECODE, logits=False)
            return
        if isinstance(ev, PerceptionCall):
            if s.client_tools:  # the caller runs it: the call goes back with the sample
                self._on_client_call(s, ev, closing=t)
            elif not self._spent(s):  # no token left to use an observation
                self._on_call(s, ev, closing=t)
            return
        if isinstance(ev, ParseError) and self.options.on_malformed == "stop":
            s.finish(FinishReason.MALFORMED)
            return
        if t in self.eos:
            self._on_answer(s, t)
            return
        if not self._spent(s):
            s.pending = Chunk([t], ChunkKind.DECODE)

    # -- decisions --------------------------------------------------------------------------------

    def _unanswered(self, s: Sample, ev: PerceptionCall, closing: list[int]) -> None:
        """``ev`` goes unanswered: the model keeps generating after ``closing``, and the call's text is
        no part of its answer (a text protocol's call is ordinary tokens)."""
        s.unanswered.append((ev.start, ev.end))
        s.pending = Chunk(closing, ChunkKind.DECODE)

    def _on_call(self, s: Sample, ev: PerceptionCall, closing: int) -> None:
        if not self.observer.showable(ev.action):
            s.event(EventType.NO_PROJECTOR, action=ev.action,
                    message=f"the model has no branch to show {ev.action!r} features")
            self._unanswered(s, ev, [closing])
            return
        decision = self._controller(s).on_call(self._limits(s), s, ev)
        self._apply(s, resolve(decision, Moment.CALL, ev, self.observer.showable), ev, [closing])

    def _on_client_call(self, s: Sample, ev: PerceptionCall, closing: int) -> None:
        """Client-side tools: the call goes back to the caller, within the run's hop budget (earlier
        turns the client ran count); past it the call goes unanswered, as in a server-side run."""
        name = self.observer.protocol.call_name_and_arguments(ev)[0]
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
        s.finish(FinishReason.TOOL_CALLS)

    def _on_answer(self, s: Sample, closing: int) -> None:
        if s.parser is None:  # dispatch is off: the answer stands
            s.finish(FinishReason.EOS)
            return
        decision = self._controller(s).on_answer(self._limits(s), s)
        effect = resolve(decision, Moment.ANSWER, None, self.observer.showable)
        if isinstance(effect, Observe) and self._spent(s):
            return  # no token left to use the observation
        self._apply(s, effect, None, [closing])

    def _apply(self, s: Sample, effect: Effect, ev: PerceptionCall | None, closing: list[int]) -> None:
        """Carry out the rule's effect on a view or text call, or at an answer."""
        match effect:
            case Observe():
                kind = self.observer.registry.action(effect.call.action).observation
                show = self.observer.show_views if kind == "view" else self.observer.show_text
                show(s, effect.call, effect.options, effect.target, effect.node, closing)
            case Unanswered():
                self._unanswered(s, ev, closing)
            case End() | Refuse():
                s.finish(*ending(effect))
            case _:
                assert_never(effect)

    def _reencode(self, s: Sample, branch: BranchConfig, control: torch.Tensor) -> None:
        A, E = branch.action_id, branch.end_id
        s.generated.append(A)
        if s.parser is None:  # no dispatch: only the reference's action-token correction
            s.tokens([A], Provenance.FORCED)
            if not self._spent(s):
                s.pending = Chunk([A], ChunkKind.FORCE, overrides={0: control})
            return
        ev = s.parser.feed(A)
        s.generated.append(E)
        s.tokens([A, E], Provenance.FORCED)
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
        effect = resolve(decision, Moment.REENCODE, ev, self.observer.showable)
        match effect:
            case Observe():
                self.observer.show_features(s, branch, effect.call, effect.options, effect.target, effect.node,
                                            control)
            case Unanswered():
                s.pending = skip
            case End() | Refuse():
                s.finish(*ending(effect))
            case _:
                assert_never(effect)

