"""The server's one model thread: continuous batching over an open batch of the loop
(:mod:`perceive.loop.continuous_batching`).

Requests arrive from the HTTP side (``submit``) and join the running batch between steps; a
request whose client went away or whose deadline passed is cancelled before the next step (its
cache row freed), and nothing else in the batch notices. The scheduler reads only the loop's
events (:mod:`perceive.loop.events`) and routes each to its job's asyncio queue on the server's
event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from perceive.errors import trace_error
from perceive.loop import Event, Finished, ToolCallsPending
from perceive.serve.messages import Conversation
from perceive.trace import FinishReason


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        self.retry_after = retry_after
        super().__init__(f"the queue is full; retry after {retry_after} s")


class Draining(Exception):
    """The server is shutting down: it finishes what it has and takes nothing new."""


@dataclass(eq=False)
class Job:
    """One request, and what its handler waits on. ``emit`` is called on the model thread; the
    handler reads ``events`` on the event loop: the loop's events for its sample (all of them when
    streaming; else the calls going back and ``Finished``), or an exception when the request could
    not start (a ``PerceiveError``: the request's fault; anything else a bug)."""

    conv: Conversation
    client_tools: bool | frozenset[str] = False  # the tool names the client runs
    max_new_tokens: int | None = None
    graph: str | None = None
    params: dict | None = None
    max_hops: int | None = None
    action_options: dict | None = None
    deadline: float | None = None  # time.monotonic() past which the job is cancelled
    stream: bool = False
    aio: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    key: int | None = None  # its sample's index in the batch, once admitted
    finished: bool = False
    cancelled: bool = False
    t0: float = field(default_factory=time.monotonic)

    def emit(self, item: Event | BaseException) -> None:
        if self.aio is not None and self.events is not None:
            self.aio.call_soon_threadsafe(self.events.put_nowait, item)


class Scheduler:
    """Runs ``loop``'s model on one thread. ``max_batch``: samples running at once; ``max_queue``:
    requests waiting to join (more get ``QueueFull``). ``on_step(seconds, running)`` and
    ``on_done(job, finished)`` feed the metrics (``finished`` None: the job never ran)."""

    def __init__(self, loop, max_batch: int = 8, max_queue: int = 64,
                 on_step: Callable[[float, int], None] | None = None,
                 on_done: Callable[[Job, Finished | None], None] | None = None):
        self.loop = loop
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.on_step = on_step or (lambda *_: None)
        self.on_done = on_done or (lambda *_: None)
        self.batch = loop.batch(cap=max_batch)
        self.cv = threading.Condition()
        self.inbox: list[Job] = []
        self.jobs: dict[int, Job] = {}  # by sample index
        self.index = itertools.count()
        self.stopping = False
        #: set on SIGTERM (by the signal handler: a plain flag, no lock): new requests are refused,
        #: those running and queued finish
        self.draining = False
        #: torch's intra-op threads on the model thread, once it has started
        self.threads: int | None = None
        self.step_s = 0.05  # running mean of a step's wall time, for Retry-After
        self.thread = threading.Thread(target=self._run, name="perceive-model", daemon=True)

    # -- the HTTP side ------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self.inbox) + len(self.batch.waiting)

    @property
    def running(self) -> int:
        return len(self.batch.running)

    @property
    def idle(self) -> bool:
        """Nothing queued, running or waiting to be answered."""
        return not self.inbox and not len(self.batch) and not self.jobs

    def drain(self) -> None:
        """Take no new requests; those running and queued finish. Safe in a signal handler."""
        self.draining = True

    def submit(self, job: Job) -> None:
        with self.cv:
            if self.draining or self.stopping:
                raise Draining()
            if self.queued >= self.max_queue:
                # a slot frees when a running sample finishes: about its remaining steps away
                raise QueueFull(max(1, math.ceil(self.step_s * 64 * (1 + self.queued // max(1, self.max_batch)))))
            self.inbox.append(job)
            self.cv.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: the job is dropped before the model's next step."""
        job.cancelled = True
        with self.cv:
            self.cv.notify()

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is running and queued, then stop the thread (a drain)."""
        with self.cv:
            self.stopping = True
            self.cv.notify()
        self.thread.join(timeout)

    # -- the model thread ---------------------------------------------------------------------

    def _run(self) -> None:
        self.threads = torch.get_num_threads()  # this thread's own: torch sets it on a thread's first op
        while True:
            with self.cv:
                while not self.inbox and not len(self.batch) and not self.stopping:
                    self.cv.wait(0.5)
                if self.stopping and not self.inbox and not len(self.batch):
                    return
                new, self.inbox = self.inbox, []
            for job in new:
                self._admit(job)
            self._expire()
            if not len(self.batch):
                continue
            t = time.perf_counter()
            try:
                with torch.no_grad():
                    events = self.batch.step()
            except Exception as exc:  # an engine failure: fail the batch, keep serving
                events = self.batch.fail(trace_error(exc))
                self.batch = self.loop.batch(cap=self.max_batch)
            dt = time.perf_counter() - t
            self.step_s = 0.9 * self.step_s + 0.1 * dt
            self.on_step(dt, self.running)
            self._route(events)

    def _route(self, events: list[Event]) -> None:
        """Each event to its job; a bug in one job's bookkeeping fails that job, not the thread."""
        for ev in events:
            job = self.jobs.get(ev.sample)
            if job is None:
                continue
            try:
                if isinstance(ev, Finished):
                    del self.jobs[ev.sample]
                    job.finished = True
                    self.on_done(job, ev)  # counted before its client can read the metrics
                    job.emit(ev)
                elif job.stream or isinstance(ev, ToolCallsPending):
                    job.emit(ev)
            except Exception as exc:
                self.jobs.pop(ev.sample, None)
                job.emit(exc)  # not the client's: a 500 with code internal

    def _admit(self, job: Job) -> None:
        if job.cancelled:
            self.on_done(job, None)
            return
        c = job.conv
        key = next(self.index)
        try:
            handle = self.loop.start(c.image, c.question, key, history=c.history, client_tools=job.client_tools,
                                     max_new_tokens=job.max_new_tokens, graph=job.graph, params=job.params,
                                     max_hops=job.max_hops, action_options=job.action_options,
                                     stream_text=job.stream)
        except Exception as exc:  # the model thread never dies of one request
            job.emit(exc)  # a PerceiveError is the request's fault (a 400), anything else a bug (a 500)
            self.on_done(job, None)
            return
        job.key = key
        self.jobs[key] = job
        self._route(self.batch.add(handle))  # a sample refused at its start finishes here

    def _expire(self) -> None:
        now = time.monotonic()
        for key, job in list(self.jobs.items()):
            if job.cancelled:
                self._route(self.batch.cancel(key, FinishReason.CANCELLED))
            elif job.deadline is not None and now > job.deadline:
                self._route(self.batch.cancel(key, FinishReason.DEADLINE, {
                    "type": "deadline", "message": f"the request's deadline passed after {now - job.t0:.1f} s",
                    "hint": "raise perceive.deadline_s, or ask for fewer hops or tokens"}))
