"""The session over a model that works in whole turns (a chat endpoint: vLLM, SGLang,
``perceive serve``), with the same registry, graph, protocol, decision rule and trace as a local
run, and the same events.

The local session steps tokens on a KV cache; a chat backend only returns the next piece of an
assistant turn, so this session sits one level up: per sample, ask the backend for the turn, read
its calls with the model's protocol, let the controller decide (:func:`~perceive.loop.decision_rule.resolve`),
run the action here, and hand the observation back for the next user turn. Re-encode actions
cannot run: their control state is the model's hidden state, which no chat endpoint returns.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, assert_never

import torch
from PIL import Image

from perceive.actions import ActionCall
from perceive.control import Controller, RunLimits
from perceive.errors import ConfigError, PerceiveError
from perceive.images import as_rgb
from perceive.loop.decision_rule import End, Moment, Observe, Refuse, Unanswered, ending, resolve
from perceive.loop.events import Event, Finished, Provenance, TokenDelta
from perceive.loop.observe import Observer
from perceive.loop.options import LoopOptions
from perceive.loop.sample import Sample, check_input
from perceive.protocols.calls import ParseError, PerceptionCall
from perceive.trace import EventType, FinishReason, Trace

if TYPE_CHECKING:
    from perceive.encoders import EncoderHub
    from perceive.plugins import Registry
    from perceive.protocols.base import ToolProtocol

_SPECIAL = re.compile(r"<\|[a-z0-9_]+\|>")


@dataclass
class Generated:
    """A piece of an assistant turn: its raw text (the call written in it, closed), why it
    stopped (OpenAI's ``stop`` or ``length``), token counts, and calls the backend could not
    read (``parse_error`` event fields)."""

    text: str
    finish: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


class TurnBackend(Protocol):
    """A model behind a chat API (:class:`perceive.remote.RemoteLoop`'s endpoint). ``Chat`` is the
    backend's own conversation state."""

    def begin(self, root: Image.Image, views: list[Image.Image], question: str) -> Any:
        """A new conversation: the image, views shown before the model speaks, the question."""

    def generate(self, chat: Any, turn: str, max_tokens: int) -> Generated:
        """The next piece of the assistant turn, continuing ``turn`` (the turn so far)."""

    def observe(self, chat: Any, turn: str, images: list[Image.Image], text: str | None, first: int) -> None:
        """Close the assistant ``turn`` and show an observation: ``images`` (views numbered from
        ``first``) or ``text``."""

    def whole(self, root: Image.Image, question: str) -> dict:
        """Run the whole sample on the backend (``perceive serve``, remote.mode server): its trace."""


class TurnSession:
    """Runs samples on a :class:`TurnBackend`; ``whole``: the backend runs each sample itself."""

    def __init__(self, backend: TurnBackend, registry: Registry, hub: EncoderHub, protocol: ToolProtocol,
                 controller: Controller, limits: RunLimits, options: LoopOptions, whole: bool = False):
        self.backend = backend
        # no model: the observer only runs calls and records their hops
        self.observer = Observer(registry, hub, protocol, options)
        self.controller = controller
        self.limits = limits
        self.options = options
        self.actions = [a for a in registry.select(options.actions) if a.grammar is not None]
        self.whole = whole

    def stream(self, index: int, image: Image.Image, question: str) -> Iterator[Event]:
        """One sample's events; ``Finished`` last."""
        root = as_rgb(image)
        q = question if isinstance(question, str) else ""
        s = Sample(index, root, Trace(question=q, image_size=root.size), None, torch.Generator(), question=q)
        s.ran = True
        try:
            check_input(question, root.size)
            if self.whole:
                trace = Trace.from_dict(self.backend.whole(root, s.question))
                yield Finished(index, trace.answer, trace.finish_reason, trace, trace.text)
                return
            yield from self._turns(s)
        except PerceiveError as exc:
            s.fail(FinishReason.ERROR, exc)
        s.close_hop()
        t = s.trace
        t.answer = s.state.get("answer", "")
        t.text = s.state.get("text", "")
        t.total_ms = (time.perf_counter() - s.t0) * 1000
        yield from s.drain()
        yield Finished(index, t.answer, t.finish_reason, t, s.state.get("turn", ""))

    def _first_views(self, s: Sample) -> list[Image.Image] | None:
        """Views the graph shows before the model speaks (only views: a remote model cannot be given
        anything else there); None when one failed (the sample is finished)."""
        extra: list[Image.Image] = []
        for d in self.controller.start(self.limits, s):
            if self.observer.registry.action(d.action).observation != "view":
                raise ConfigError(f"the graph forces {d.action!r} before the model speaks; a remote model can only "
                                  "be shown views there (re-encoding needs the model's hidden state)")
            got, hop = self.observer.run(s, ActionCall(d.action, d.args, forced=True), dict(d.options), d.target,
                                         d.node)
            if got is None:
                return None
            self.observer.record_views(s, got, hop)
            extra += [v.image for v in got]
        return extra

    def _turns(self, s: Sample) -> Iterator[Event]:
        extra = self._first_views(s)
        if extra is None:
            return
        chat = self.backend.begin(s.root, extra, s.question)
        turn = ""  # the assistant turn so far (continued after an unanswered call)
        while not s.done:
            left = self.options.max_new_tokens - s.trace.generated_tokens
            if left <= 0:
                s.finish(FinishReason.MAX_NEW_TOKENS)
                break
            got = self._generate(s, chat, turn, left)
            turn += got.text
            yield from s.drain()
            events = self.observer.protocol.calls_in_text(got.text, s.frames(), self.actions)
            for e in events:
                if isinstance(e, ParseError):
                    s.event(EventType.PARSE_ERROR, **e.to_dict())
            call = next((e for e in events if isinstance(e, PerceptionCall)), None)
            if call is not None:
                s.decoded_since_hop = s.trace.generated_tokens
                moment, decision = Moment.CALL, self.controller.on_call(self.limits, s, call)
            elif got.finish == "length":
                s.finish(FinishReason.MAX_NEW_TOKENS)
                break
            else:
                answer = turn
                for snippet in s.state.get("unanswered", ()):  # an unanswered call is no part of the answer
                    answer = answer.replace(snippet, "", 1)
                s.state["answer"] = _SPECIAL.sub("", answer).strip()
                s.state["turn"] = turn
                moment, decision = Moment.ANSWER, self.controller.on_answer(self.limits, s)
            effect = resolve(decision, moment, call, self.observer.showable)
            match effect:
                case Observe():
                    if self._observe(s, chat, turn, effect):
                        turn = ""
                case Unanswered():  # the model continues its turn
                    s.state.setdefault("unanswered", []).append("".join(call.tokens))
                case End() | Refuse():
                    s.finish(*ending(effect))
                case _:
                    assert_never(effect)
            yield from s.drain()

    def _generate(self, s: Sample, chat, turn: str, left: int) -> Generated:
        s.close_hop()
        got = self.backend.generate(chat, turn, left)
        for e in got.errors:
            s.event(EventType.PARSE_ERROR, **e)
        s.trace.generated_tokens += got.completion_tokens
        if got.prompt_tokens and not s.trace.prompt_tokens:
            s.trace.prompt_tokens = got.prompt_tokens
        s.fed += got.prompt_tokens
        s.state["text"] = s.state.get("text", "") + got.text
        # no ids or log-probabilities come back from a chat endpoint: the text only
        s.outbox.append(TokenDelta(s.index, (), Provenance.GENERATED, None, got.text))
        return got

    def _observe(self, s: Sample, chat, turn: str, effect: Observe) -> bool:
        """Run the effect's call here and show its observation after ``turn``."""
        got, hop = self.observer.run(s, effect.call, dict(effect.options), effect.target, effect.node)
        if got is None:
            return False
        kind = self.observer.registry.action(effect.call.action).observation
        first = len(s.views) + 1
        if kind == "view":
            self.observer.record_views(s, got, hop)
            self.backend.observe(chat, turn, [v.image for v in got], None, first)
        else:
            self.observer.record_text(hop, got)
            text = got[0].text if len(got) == 1 else "".join(f"Region {k}: {t.text}\n" for k, t in enumerate(got))
            self.backend.observe(chat, turn, [], text, first)
        return True
