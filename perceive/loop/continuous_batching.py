"""Continuous batching: samples join and leave one engine between steps.

``PerceptionLoop.stream`` steps one batch until every sample is done; ``perceive serve`` keeps
one open and adds requests as they arrive, cancelling those whose client went away or whose
deadline passed. Both see exactly the same per-sample behaviour: a joining sample's cache row is
padded with masked keys by the engine, so it computes what it would alone.

The batch knows samples only through the small :class:`Steps` interface (what to do after an
engine step, how to conclude a finished sample) and hands its consumer events, never samples.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

from perceive.loop.engine import Engine, StepOut
from perceive.loop.events import Event
from perceive.trace import FinishReason

if TYPE_CHECKING:
    from perceive.loop.sample import Sample


class Steps(Protocol):
    """What the batch needs of the session (:class:`perceive.loop.stepper.Stepper`)."""

    def after_step(self, s: Sample, out: StepOut) -> None:
        """The engine fed the sample's pending chunk: choose what comes next (its next chunk, or its end)."""

    def conclude(self, s: Sample) -> None:
        """The sample finished: complete its trace and emit its last events."""


class Batch:
    """At most ``cap`` samples run on ``engine`` at once; the others wait in arrival order.
    Samples are keyed by their index (unique within the batch). Not thread-safe: one thread adds,
    cancels and steps."""

    def __init__(self, steps: Steps, engine: Engine, cap: int | None = None):
        self.steps = steps
        self.engine = engine
        self.cap = cap or 1 << 30
        self.waiting: deque[Sample] = deque()
        self.running: list[Sample] = []

    def __len__(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, s: Sample) -> list[Event]:
        """Queue a started sample (:meth:`PerceptionLoop.start`). One that finished before it ran (a
        refused input, a failed first view) is concluded now: its events are returned."""
        if not s.done:
            self.waiting.append(s)
            return []
        self.steps.conclude(s)
        return s.drain()

    def cancel(self, key: int, reason: FinishReason = FinishReason.CANCELLED, error: dict | None = None) -> list[Event]:
        """Finish sample ``key`` now (its client left, its deadline passed): its cache row is freed
        before the next step, and the batch runs on without it. Returns its last events."""
        s = next((x for x in (*self.running, *self.waiting) if x.index == key), None)
        if s is None or s.done:
            return []
        s.finish(reason, error)
        if s in self.running:
            self.engine.close(s)
            self.running.remove(s)
        else:
            self.waiting.remove(s)
        self.steps.conclude(s)
        return s.drain()

    def fail(self, error: dict) -> list[Event]:
        """Finish every sample with ``error`` (the engine failed): their last events. The batch is
        empty after it; its engine must not be stepped again."""
        out: list[Event] = []
        for s in (*self.running, *self.waiting):
            s.finish(FinishReason.ERROR, error)
            self.steps.conclude(s)
            out += s.drain()
        self.running, self.waiting = [], deque()
        return out

    def step(self) -> list[Event]:
        """Admit waiting samples up to the cap, run one engine step, advance every running sample.
        Returns the events the running samples emitted, each finished sample's ``Finished`` last."""
        engine = self.engine
        while self.waiting and len(self.running) < self.cap:
            s = self.waiting.popleft()
            s.t0 = time.perf_counter()  # a sample's time is counted from when it runs, not while it waits
            s.ran = True
            engine.open(s)
            engine.feed(s, s.pending)
            self.running.append(s)
        if not self.running:
            return []
        outs = engine.step()
        events: list[Event] = []
        for s in self.running:
            self.steps.after_step(s, outs[s])
            if s.done:
                engine.close(s)
                self.steps.conclude(s)
            else:
                engine.feed(s, s.pending)
            events += s.drain()
        self.running = [s for s in self.running if not s.done]
        return events
