"""The server's one model thread: continuous batching over an open :class:`~perceive.loop.batch.Batch`.

Requests arrive from the HTTP side (``submit``) and join the running batch between steps; a
request whose client went away or whose deadline passed is cancelled before the next step (its
cache row freed), and nothing else in the batch notices. Each job gets its events (hops and text
as they happen, then its answer) through an asyncio queue on the server's event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from perceive.loop.observe import err
from perceive.loop.sample import Answer, Sample
from perceive.protocols.base import IncrementalDetokenizer
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
    """One request's sample, and what its handler waits on. ``emit`` is called on the model
    thread; the handler reads ``events`` on the event loop: ``("hop", dict)``, ``("delta", str)``,
    then ``("done", Answer)`` or ``("error", exception)`` (a ``PerceiveError``: the request's fault)."""

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
    sample: Sample | None = None
    cancelled: bool = False
    t0: float = field(default_factory=time.monotonic)
    # streaming: what has been sent
    _hops_sent: int = 0
    _seen: int = 0
    _turn: int = -1
    _detok: Any = None
    _text: str = ""
    _emitted: int = 0

    def emit(self, kind: str, value: Any) -> None:
        if self.aio is not None and self.events is not None:
            self.aio.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class Scheduler:
    """Runs ``loop``'s model on one thread. ``max_batch``: samples running at once; ``max_queue``:
    requests waiting to join (more get ``QueueFull``). ``on_step(seconds, running)`` and
    ``on_done(job, answer)`` feed the metrics."""

    def __init__(self, loop, max_batch: int = 8, max_queue: int = 64,
                 on_step: Callable[[float, int], None] | None = None,
                 on_done: Callable[[Job, Answer | None], None] | None = None):
        self.loop = loop
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.on_step = on_step or (lambda *_: None)
        self.on_done = on_done or (lambda *_: None)
        self.batch = loop.batch(cap=max_batch)
        self.cv = threading.Condition()
        self.inbox: list[Job] = []
        self.jobs: dict[Sample, Job] = {}
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
                    finished = self.batch.step()
            except Exception as exc:  # an engine failure: fail the batch, keep serving
                finished = self._fail_batch(exc)
            dt = time.perf_counter() - t
            self.step_s = 0.9 * self.step_s + 0.1 * dt
            self.on_step(dt, self.running)
            for s, job in list(self.jobs.items()):
                if job.stream and not s.done:
                    self._guard(self._progress, job)
            for s in finished:
                self._guard(self._finish, s)

    def _guard(self, fn, arg) -> None:
        """Run one job's bookkeeping; a bug in it fails that job, not the thread."""
        try:
            fn(arg)
        except Exception as exc:
            job = arg if isinstance(arg, Job) else self.jobs.pop(arg, None)
            if job is not None:
                job.emit("error", exc)  # not the client's: a 500 with code internal

    def _admit(self, job: Job) -> None:
        if job.cancelled:
            self.on_done(job, None)
            return
        c = job.conv
        try:
            s = self.loop.start(c.image, c.question, next(self.index), history=c.history,
                                client_tools=job.client_tools, max_new_tokens=job.max_new_tokens, graph=job.graph,
                                params=job.params, max_hops=job.max_hops, action_options=job.action_options)
        except Exception as exc:  # the model thread never dies of one request
            job.emit("error", exc)  # a PerceiveError is the request's fault (a 400), anything else a bug (a 500)
            self.on_done(job, None)
            return
        job.sample = s
        self.jobs[s] = job
        if s.done:
            self._finish(s)
        else:
            self.batch.add(s)

    def _expire(self) -> None:
        now = time.monotonic()
        for s, job in list(self.jobs.items()):
            if s.done:
                continue
            if job.cancelled:
                self.batch.cancel(s, FinishReason.CANCELLED)
                self._finish(s)
            elif job.deadline is not None and now > job.deadline:
                self.batch.cancel(s, FinishReason.DEADLINE, {
                    "type": "deadline", "message": f"the request's deadline passed after {now - job.t0:.1f} s",
                    "hint": "raise perceive.deadline_s, or ask for fewer hops or tokens"})
                self._finish(s)

    def _fail_batch(self, exc: Exception) -> list[Sample]:
        failed = list(self.batch.running) + list(self.batch.waiting)
        for s in failed:
            self.loop.finish(s, FinishReason.ERROR, err(exc))
        self.batch = self.loop.batch(cap=self.max_batch)
        return failed

    def _finish(self, s: Sample) -> None:
        job = self.jobs.pop(s, None)
        if job is None:
            return
        answer = self.loop.answer(s)
        if job.stream:
            self._progress(job, final=answer)
        job.emit("done", answer)
        self.on_done(job, answer)

    def _progress(self, job: Job, final: Answer | None = None) -> None:
        """Send a streaming job its new hops and the new text of its current turn (the text before
        a call's opening tag is held back until it cannot be the tag)."""
        s, loop = job.sample, self.loop
        hops = s.trace.hops
        for hop in hops[job._hops_sent:]:
            job.emit("hop", {"index": hop.index, "action": hop.action, "box": hop.box, "node": hop.node,
                             "dispatch_ms": round(hop.dispatch_ms, 3), "error": hop.error, "cached": hop.cached})
        job._hops_sent = len(hops)
        if s.answer_from != job._turn:  # a new assistant turn
            job._turn, job._seen = s.answer_from, s.answer_from
            job._detok, job._text, job._emitted = IncrementalDetokenizer(self._decode), "", 0
        skip = loop.observer.perception_ids | loop.eos
        for t in s.generated[job._seen:]:
            if t not in skip:
                job._text += job._detok.push(t)
        job._seen = len(s.generated)
        text = job._text.lstrip()
        safe = len(text)
        tag = getattr(loop.protocol, "open_tag", "")
        if tag:
            at = text.find(tag)
            if at != -1:
                safe = at
            else:  # hold back a suffix that may be the tag's beginning
                safe = next((len(text) - k for k in range(min(len(tag) - 1, len(text)), 0, -1)
                             if tag.startswith(text[-k:])), safe)
        if final is not None and s.trace.finish_reason is not FinishReason.TOOL_CALLS:
            # the answer, as the response gives it: whatever was held back, stripped
            answer, sent = final.text, text[:job._emitted]
            if answer.startswith(sent):
                rest = answer[len(sent):]
            elif answer.startswith(sent.rstrip()):
                rest = answer[len(sent.rstrip()):].lstrip()
            else:  # cannot happen for a well-behaved tokenizer: send the answer's tail anyway
                rest = ""
            if rest:
                job.emit("delta", rest)
            return
        if safe > job._emitted:
            job.emit("delta", text[job._emitted:safe])
            job._emitted = safe

    def _decode(self, ids: list[int]) -> str:
        return self.loop.tokenizer.decode(ids, skip_special_tokens=True)
