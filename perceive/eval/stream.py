"""An eval's samples run continuously, and each answer comes back the moment its sample finishes,
so the runner can record it at once (a run that dies keeps what it finished) and each sample's
latency is its own: from joining the running batch to finishing, not its batch's wall time.

Locally the samples run on one open batch of the loop (``cap`` at once; a finished sample's place
is taken at the next step), whose events are read as they come. A remote endpoint gets ``remote.concurrency``
requests in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

from perceive.errors import PerceiveError, trace_error
from perceive.loop import Answer, Finished, ScriptedPolicy, span_tokens
from perceive.remote import RemoteLoop
from perceive.trace import FinishReason, Trace

#: one sample to run: its position in the run (it seeds sampling and keys a policy) and a function
#: giving its (image, question) and the example, called when the sample is about to start
Work = tuple[int, Callable[[], tuple[Any, str, Any]]]


class OraclePolicy(ScriptedPolicy):
    """``oracle_spans``: each sample first emits its item's own first assistant turn (the
    ground-truth perception span), added as the sample starts."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, {})
        self.tokenizer = tokenizer

    def add(self, position: int, example) -> None:
        turns = [m["content"] for m in example.messages if m["role"] == "assistant"]
        if len(turns) > 1:  # a perception turn, then the answer
            self.scripts[position] = self.tokenizer.convert_tokens_to_ids(span_tokens(self.tokenizer, turns[0]))


def _failed(question: str, exc: PerceiveError) -> Answer:
    return Answer("", Trace(question=question, error=trace_error(exc), finish_reason=FinishReason.ERROR), [])


def answers(loop, work: Iterable[Work], cap: int,
            oracle: OraclePolicy | None = None) -> Iterator[tuple[int, Answer, bool]]:
    """``(position, answer, ran)`` for each sample of ``work``, in the order they finish. ``ran``
    is False for a sample that never ran (an unreadable image, a prompt too long): its
    ``total_ms`` is no latency. A sample's failure is in its answer's trace; the others go on."""
    if isinstance(loop, RemoteLoop):
        yield from _remote(loop, work, loop.remote.concurrency)
    else:
        yield from _local(loop, work, cap, oracle)


def _local(loop, work: Iterable[Work], cap: int, oracle: OraclePolicy | None) -> Iterator[tuple[int, Answer, bool]]:
    import torch

    from perceive.images import load_image

    todo = iter(work)
    batch = loop.batch(cap)
    more = True
    with torch.no_grad():
        while more or len(batch):
            while more and len(batch) < batch.cap:  # fill the places that are free now
                nxt = next(todo, None)
                if nxt is None:
                    more = False
                    break
                k, get = nxt
                question = ""
                try:
                    image, question, example = get()
                    image = load_image(image)
                except PerceiveError as exc:
                    yield k, _failed(question, exc), False
                    continue
                if oracle is not None:
                    oracle.add(k, example)
                # a sample refused before it ran (an empty question, a prompt past the context) ends here
                for ev in batch.add(loop.start(image, question, index=k)):
                    if isinstance(ev, Finished):
                        yield k, Answer.from_event(ev), False
            if len(batch):
                for ev in batch.step():  # a sample's index is its position
                    if isinstance(ev, Finished):
                        yield ev.sample, Answer.from_event(ev), True


def _remote(loop: RemoteLoop, work: Iterable[Work], concurrency: int) -> Iterator[tuple[int, Answer, bool]]:
    """``concurrency`` samples in flight (each has one request in flight at a time), over all the
    endpoints of ``remote.url``: the loop puts each sample, as it starts, on the endpoint with the
    fewest running and keeps all its turns there; its answer's ``trace.endpoint`` says which. A
    sample whose endpoint fails ends with the error in its trace (no retry elsewhere: each sample
    is answered once), and the run goes on."""
    todo = iter(work)
    pool = ThreadPoolExecutor(max_workers=concurrency)
    running: dict[Any, int] = {}
    try:
        while True:
            while len(running) < concurrency:
                nxt = next(todo, None)
                if nxt is None:
                    break
                k, get = nxt
                question = ""
                try:
                    image, question, _ = get()
                except PerceiveError as exc:
                    yield k, _failed(question, exc), False
                    continue
                running[pool.submit(loop.ask_batch, [(image, question)])] = k
            if not running:
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                answer = f.result()[0]
                yield running.pop(f), answer, answer.trace.total_ms > 0
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
