"""A running sample, and the answer it ends with."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from perceive.control import Controller, Dispatch, RunLimits
from perceive.errors import InputError, PerceiveError, trace_error
from perceive.geometry import ROOT, Frame
from perceive.images import check_input_size
from perceive.loop.engine import Chunk
from perceive.loop.events import Event, Finished, HopFinished, Notice, Provenance, TokenDelta
from perceive.observations import View
from perceive.protocols.vpt_stream import StreamParser
from perceive.trace import EventType, FinishReason, Hop, Trace

if TYPE_CHECKING:
    from perceive.loop.turn_text import TurnText
    from perceive.model.config import BranchConfig


@dataclass
class Answer:
    text: str
    trace: Trace
    token_ids: list[int]
    logits: list[torch.Tensor] | None = None

    @property
    def error(self) -> dict | None:
        return self.trace.error

    @property
    def ok(self) -> bool:
        return self.trace.error is None

    @classmethod
    def from_event(cls, ev: Finished) -> Answer:
        return cls(ev.answer, ev.trace, list(ev.token_ids), ev.logits)


@dataclass(eq=False)
class Sample:
    """One running sample (a :class:`~perceive.control.SampleView` for controllers): the engine
    side's state, read by the session and the observer only. Consumers read the events it emits
    (``outbox``, :mod:`perceive.loop.events`)."""

    index: int
    root: Image.Image
    trace: Trace
    parser: StreamParser | None
    gen: torch.Generator
    question: str = ""
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    views: dict[str, View] = field(default_factory=dict)
    #: per view id (``root`` too), the pixel size the model saw it at (its processor's resize)
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    target: str = ROOT  # the latest single view shown (what "target: latest" reads)
    pending: Chunk | None = None
    max_new_tokens: int | None = None  # this sample's token budget (None: the run's)
    fed: int = 0  # tokens fed to the model so far (its context in use)
    generated: list[int] = field(default_factory=list)
    answer_from: int = 0  # index in generated where the current assistant turn starts
    hops: int = 0
    decoded_since_hop: int = 0
    awaiting_control: BranchConfig | None = None  # the branch whose start token was just fed
    forced_reencode: Dispatch | None = None  # a re-encode the controller wrote into the first turn
    node: str | None = None  # the graph node running (graph runs)
    state: dict[str, Any] = field(default_factory=dict)  # the controller's per-sample state
    observations: dict[tuple, Any] = field(default_factory=dict)  # dispatched calls, for reuse
    controller: Controller | None = None  # this sample's own controller (None: the run's)
    limits: RunLimits | None = None  # this sample's own RunLimits (None: the run's)
    client_tools: bool = False  # calls go back to the caller (perceive serve's client-side tools)
    calls: list = field(default_factory=list)  # the PerceptionCalls that went back (client_tools)
    unanswered: list[tuple[int, int]] = field(default_factory=list)  # (start, end) in generated of unanswered calls
    tools: frozenset[str] | None = None  # the tool names the caller runs (client_tools; None: any)
    done: bool = False
    logits: list[torch.Tensor] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)
    ran: bool = False  # it entered an engine (a sample refused at its start never does)
    outbox: list[Event] = field(default_factory=list)  # events not yet read by the consumer
    open_hop: Hop | None = None  # the hop whose HopFinished is not emitted yet
    stream_text: bool = False  # its consumer reads TokenDelta.text (a stream): decode as it goes
    turn_text: TurnText | None = None  # the current assistant turn's visible text (stream_text)

    def event(self, type: EventType, **fields: Any) -> None:
        """A trace event, emitted as a :class:`~perceive.loop.events.Notice` too."""
        self.trace.events.append({"type": EventType(type), **fields})
        self.outbox.append(Notice(self.index, EventType(type), dict(fields)))

    def tokens(self, ids, provenance: Provenance, logprobs=None, text: str = "", images=(), features=()) -> None:
        """Tokens appended to the sequence fed to the model (a :class:`TokenDelta`), with the
        images and re-encode features they carry."""
        if ids or text:
            self.outbox.append(TokenDelta(self.index, tuple(int(i) for i in ids), provenance,
                                          None if logprobs is None else tuple(logprobs), text, tuple(images),
                                          tuple(features)))

    def close_hop(self) -> None:
        """The open hop is complete (its observation fed, or the sample ended): emit it."""
        if self.open_hop is not None:
            self.outbox.append(HopFinished(self.index, asdict(self.open_hop)))
            self.open_hop = None

    def finish(self, reason: FinishReason, error: dict | None = None) -> None:
        """End the sample (its answer is built when its consumer concludes it). A span still open
        in the parser is a ``parse_error`` event."""
        if self.parser is not None:
            tail = self.parser.close()
            if tail is not None:
                self.event(EventType.PARSE_ERROR, **tail.to_dict())
        self.done = True
        self.pending = None
        self.trace.finish_reason = FinishReason(reason)
        if error is not None:
            self.trace.error = error

    def fail(self, reason: FinishReason, exc: BaseException) -> None:
        self.finish(reason, trace_error(exc))

    def drain(self) -> list[Event]:
        out, self.outbox = self.outbox, []
        return out

    def frame(self, view_id: str) -> Frame:
        return Frame.root(*self.root.size) if view_id == ROOT else self.views[view_id].frame

    def frames(self) -> list[Frame]:
        """The frames a call may name, in the order the model saw them (root first), each with the
        size the model saw it at."""
        ids = [ROOT, *self.views]
        return [dataclasses.replace(self.frame(i), seen=self.seen.get(i)) for i in ids]

    def image(self, view_id: str) -> Image.Image:
        return self.root if view_id == ROOT else self.views[view_id].image


#: what a client-run call returned: the view images (in the order the action returns its views) or
#: the text
ToolResult = list[Image.Image] | str


@dataclass
class Turn:
    """An earlier assistant turn of a conversation whose calls the client ran (``perceive serve``'s
    client-side tools): ``text`` exactly as the model wrote it (perception tokens and call markup
    included), ending with its call; ``results`` what each call in it returned, in order."""

    text: str
    results: list[ToolResult] = field(default_factory=list)
    #: the last turn, unfinished and without a call: generation continues it
    partial: bool = False


def answer_each(items, run) -> list[Answer]:
    """Answers to ``(image, question)`` pairs: the readable images go to ``run(items, indices)``
    together; an unreadable one gets an answer holding its error, in place, and the rest go on."""
    from perceive.images import load_image

    loaded = []
    for image, question in items:
        try:
            loaded.append((load_image(image), question, None))
        except PerceiveError as exc:
            loaded.append((None, question, trace_error(exc)))
    keep = [i for i, (_, _, e) in enumerate(loaded) if e is None]
    results = iter(run([loaded[i][:2] for i in keep], indices=keep))
    return [next(results) if e is None else Answer("", Trace(question=q, error=e, finish_reason=FinishReason.ERROR),
                                                   []) for _, q, e in loaded]


def check_input(question, size: tuple[int, int]) -> None:
    """What a sample's input must be before any frame is made, locally and remote alike: a
    non-empty question (:class:`InputError`) and an image of ``size`` (width, height; pixels) that
    is not too small or too elongated to look at (:func:`~perceive.images.check_input_size`)."""
    if not isinstance(question, str) or not question.strip():
        got = "no question" if question is None else f"the question {question!r}"
        raise InputError(f"{got}: a question must be non-empty text", hint="ask something about the image")
    check_input_size(size)
