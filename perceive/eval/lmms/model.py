"""``PerceiveLMM``: perceive's perception loop as an lmms-eval chat model.

``lmms-eval --model perceive --model_args model=DIR[,graph=G,max_hops=N,trace_dir=DIR,...]``
answers every ``generate_until`` request with the whole loop (the model's perception calls, their
observations, its answer), batched continuously by :func:`perceive.eval.stream.answers`. The keys
of ``--model_args`` are :mod:`perceive.eval.lmms.model_args`'; ``trace_dir=DIR`` writes one line
per request to ``DIR/<task>.jsonl`` with its hop trace, so a score can be traced to its hops.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from loguru import logger

from perceive.eval.lmms.model_args import batch_cap, cut_at_stop, generation_key, run_config, with_generation
from perceive.eval.lmms.requests import Request, asked

#: what loglikelihood scoring is asked for, and what to do instead
NO_LOGLIKELIHOOD = (
    "perceive's lmms-eval model answers by generating (its perception loop); it does not score given "
    "continuations by likelihood, which tasks with output_type: loglikelihood or multiple_choice need "
    "(seedbench_ppl, worldvqa_mc_ppl, egoschema_mcppl, mmlu, arc_easy, hellaswag, ...). Evaluate it on a "
    "generate_until task (vstar_bench, hrbench4k, mmerealworld, textvqa_val, docvqa_val, chartqa), or run "
    "this task with another lmms-eval model.")
NO_MULTI_ROUND = (
    "perceive's lmms-eval model answers one question per request (its perception loop runs the turns "
    "within it); it does not take the task-driven rounds of output_type: generate_until_multi_round tasks "
    "(ovo_forward, mmsearch_end2end). Evaluate it on a generate_until task, or run this task with another "
    "lmms-eval model.")


class PerceiveLMM(lmms):
    """perceive as an lmms-eval chat model (``is_simple = False``: it takes each request's
    messages). See :mod:`perceive.eval.lmms.model_args` for the keys; ``batch_size`` is the
    samples running at once (locally the running batch, remotely the requests in flight)."""

    is_simple = False

    def __init__(self, model=None, remote=None, config=None, protocol=None, graph=None, max_hops=None,
                 trace_dir=None, batch_size=1, max_batch_size=None, device=None, dtype=None, remote_model=None,
                 **kwargs) -> None:
        super().__init__()
        from perceive.eval.lmms.model_args import unquoted
        from perceive.loop_factory import loop_from_config

        self.cfg = run_config(config=config, model=model, remote=remote, remote_model=remote_model,
                              protocol=protocol, graph=graph, max_hops=max_hops, dtype=dtype, device=device,
                              extra=kwargs)
        self.cap = batch_cap(batch_size, max_batch_size, self.cfg)
        if self.cfg.remote is not None:  # remotely, the samples at once are the requests in flight
            self.cfg.remote = self.cfg.remote.model_copy(update={"concurrency": self.cap})
        self.trace_dir = None if trace_dir is None else Path(unquoted(trace_dir))
        if self.trace_dir is not None:  # before the model loads: a run must not end unable to write
            from perceive.eval.run_folder import check_output_folder

            check_output_folder(self.trace_dir, "trace_dir")
        self._traces: dict[str, Any] = {}  # task -> its trace file, open during a generate_until call
        self._started: set[str] = set()  # tasks whose trace file this run has begun
        # the loop loads the model (or reaches the endpoint) now: a wrong folder fails before any task
        self._loop, self._key = loop_from_config(self.cfg), None

    @property
    def batch_size(self) -> int:
        return self.cap

    def _loop_for(self, gen_kwargs: dict[str, Any]):
        """The loop for requests asked with ``gen_kwargs``: the run's, rebuilt over the same
        loaded model when the task's sampling differs from the last one's."""
        from perceive.loop_factory import loop_from_config

        key = generation_key(gen_kwargs)
        if key != self._key:
            model = getattr(self._loop, "model", None) if self.cfg.remote is None else None
            self._loop, self._key = loop_from_config(with_generation(self.cfg, gen_kwargs), model=model), key
        return self._loop

    def generate_until(self, requests) -> list[GenerationResult]:
        """Each request's answer through the perception loop, in request order. A sample that
        fails answers ``""`` (its error is in its trace); the run goes on."""
        from tqdm import tqdm

        from perceive.eval.stream import answers

        todo = [Request.of(k, r) for k, r in enumerate(requests)]
        groups: dict[str, list[Request]] = {}
        for r in todo:
            groups.setdefault(generation_key(r.gen_kwargs), []).append(r)
        out: list[GenerationResult | None] = [None] * len(todo)
        notes: dict[int, str] = {}
        failed = 0
        bar = tqdm(total=len(todo), disable=self.rank != 0, desc="perceive")
        try:
            for group in groups.values():
                loop = self._loop_for(group[0].gen_kwargs)
                for k, answer, _ran in answers(loop, self._work(group, notes), self.cap):
                    out[k] = self._finished(todo[k], answer, notes.get(k))
                    failed += answer.error is not None
                    bar.update(1)
        finally:
            bar.close()
            self._close_traces()
        if failed:
            where = f"; each error is in {self.trace_dir}/<task>.jsonl" if self.trace_dir else \
                " (pass trace_dir=DIR in --model_args to keep each one's error and hops)"
            logger.warning(f"perceive: {failed} of {len(todo)} samples failed and answered ''{where}")
        if notes:
            logger.warning(f"perceive: {len(notes)} request(s) had several images; the loop looked at the first only")
        return out

    def _work(self, group: list[Request], notes: dict[int, str]):
        """The stream's work for ``group``: each request's ``(position, get)``; ``get`` builds its
        image and question when the sample is about to start."""
        def getter(r: Request):
            def get():
                a = asked(r, self.task_dict)
                if a.note:
                    notes[r.position] = a.note
                return a.image, a.question, None
            return get
        return [(r.position, getter(r)) for r in group]

    def _finished(self, r: Request, answer, note: str | None) -> GenerationResult:
        text = cut_at_stop(answer.text, r.gen_kwargs)
        if self.trace_dir is not None:
            line = {"task": r.task, "split": r.split, "doc_id": r.doc_id, "question": answer.trace.question,
                    "answer": text, **({"note": note} if note else {}), "trace": answer.trace.to_dict()}
            f = self._trace_file(r.task)
            f.write(json.dumps(line, default=str) + "\n")
            f.flush()  # a run that dies keeps the traces of what it finished
        tokens = TokenCounts(input_tokens=answer.trace.prompt_tokens, output_tokens=answer.trace.generated_tokens)
        return GenerationResult(text=text, token_counts=tokens)

    def _trace_file(self, task: str):
        if task not in self._traces:
            self.trace_dir.mkdir(parents=True, exist_ok=True)
            name = task if self.world_size == 1 else f"{task}.rank{self.rank}"
            # the first requests of a task in this run start its file; later calls add to it
            mode = "a" if task in self._started else "w"
            self._started.add(task)
            self._traces[task] = open(self.trace_dir / f"{name.replace('/', '_')}.jsonl", mode, encoding="utf-8")
        return self._traces[task]

    def _close_traces(self) -> None:
        for f in self._traces.values():
            f.close()
        self._traces.clear()

    def loglikelihood(self, requests):
        raise NotImplementedError(NO_LOGLIKELIHOOD)

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(NO_MULTI_ROUND)
