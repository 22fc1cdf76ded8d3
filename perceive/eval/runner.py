"""``perceive eval``: a model and a graph over a benchmark; metrics with intervals, the protocol,
telemetry, reports.

The data is read by the run's benchmark reader (``benchmark:``; the default ``paper`` reads the
VPT paper's layout, see :mod:`perceive.eval.benchmarks`): each item is asked ``samples`` times
(Avg@k, each sample with its own seed), scored by the benchmark's extraction rule and metric, and
every figure is reported with its standard error and 95% interval over items, overall and per
category, beside the protocol that produced it (:mod:`perceive.eval.protocol`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from perceive.data.skipped import Skipped
from perceive.errors import ConfigError, ResumeError
from perceive.eval.benchmarks.paper import TRIGGERS, item_fields, question_of  # noqa: F401 - public here too
from perceive.eval.config import (  # noqa: F401 - public here too
    BenchmarkConfig,
    EvalConfig,
    JudgeSettings,
    load_eval_config,
)
from perceive.eval.metrics import crop_iou
from perceive.eval.report import markdown, summarize  # noqa: F401 - public here too


def evaluate(cfg: EvalConfig, model=None, registry=None, progress: bool = True, policy=None, *,
             resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run ``cfg``'s model and graph over its data; the results (``summary``, ``protocol``,
    ``system``, ``records`` in data order, one per item and sample), also written to ``cfg.output``
    when set. ``policy`` overrides the model's token choices (see ``PerceptionLoop``); for oracle
    runs and tests.

    With an output folder, each finished sample is a line of ``OUTPUT/predictions.jsonl`` at once,
    so a run that dies keeps its work; ``resume`` runs only the samples that folder lacks (the
    partial run's config and data must be the same) and reports over all of them. Raises, before
    any work: ``OutputError`` (the folder cannot be written), ``ResumeError``, ``DataUnusableError``,
    ``ConfigError``. See :mod:`perceive.eval.run_folder`."""
    from perceive.eval.stream import answers

    run = prepare(cfg, model=model, registry=registry, policy=policy, resume=resume, overwrite=overwrite)
    t_start = time.perf_counter()
    try:
        with _bar(progress, len(run.keys), len(run.lines)) as update:
            for pos, a, ran in answers(run.loop, run.todo(), cfg.runtime.max_batch_size, run.oracle):
                run.add(record(run, pos, a, ran), time.perf_counter() - t_start)
                update(len(run.lines))
    finally:
        run.close()
    return run.finish(time.perf_counter() - t_start)


def _bar(progress: bool, total: int, done: int):
    """A progress bar over the samples; yields the function that sets how many are done."""
    from contextlib import contextmanager

    from rich.progress import Progress

    @contextmanager
    def bar():
        with Progress(disable=not progress) as p:
            task = p.add_task("eval", total=total, completed=done)
            yield lambda n: p.update(task, completed=n)
    return bar()


class Run:
    """One eval run's state: its benchmark and items, the loop, the samples to run (``keys``:
    ``(item index, sample)``) and those finished (``lines``), the output folder's log. What the
    one-process runner and the Ray driver share (:mod:`perceive.eval.distributed`)."""

    def __init__(self, cfg, bench, read, items, loop, graph, judge, oracle, kept, fp, resume, dropped):
        from perceive.eval import run_folder

        self.cfg, self.bench, self.read, self.items = cfg, bench, read, items
        self.loop, self.graph, self.judge, self.oracle = loop, graph, judge, oracle
        self.k = cfg.samples
        self.keys = [(it.index, j) for it in items for j in range(self.k)]
        self.lines = {key: kept[key] for key in self.keys if key in kept}
        self.session = 1 + max((r.get("session", 1) for r in self.lines.values()), default=0)
        self.resumed, self.resume, self.dropped, self.fp = len(self.lines), resume, dropped, fp
        self.by_pos = {it.index * self.k + j: (it, j) for it in items for j in range(self.k)}
        self.log = run_folder.PredictionLog(cfg.output, fp, list(self.lines.values())) \
            if cfg.output is not None else None
        #: what was measured, where no loop here can say (a Ray driver's workers hold the loops and tell it)
        self.system: dict[str, Any] | None = None
        #: where the samples ran (a Ray run's pool), recorded apart from the protocol: not how they are measured
        self.ray: dict[str, Any] | None = None

    def todo(self):
        """The samples left to run, as the stream's work: ``(position, get)``; a sample's position
        ``i*k + j`` seeds its sampling (``sampling.seed + position``)."""
        for pos, (it, j) in self.by_pos.items():
            if (it.index, j) not in self.lines:
                yield pos, self.getter(it)

    def getter(self, it):
        """The stream's function that gives ``it``'s (image, question, example) when its sample starts."""
        oracle = self.oracle is not None and it.example is not None
        return lambda: (it.load(), it.question, it.example() if oracle else None)

    def add(self, rec: dict, elapsed_s: float) -> None:
        rec.update(session=self.session, elapsed_s=elapsed_s)
        self.lines[(rec["index"], rec.get("sample", 0))] = rec
        if self.log is not None:
            self.log.write(rec)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    def finish(self, wall_s: float) -> dict[str, Any]:
        """The results over every sample (kept and run now), written to the output folder."""
        from perceive.eval.protocol import protocol_of, system_of
        from perceive.eval.run_folder import data_digest

        cfg = self.cfg
        records = [{k: v for k, v in self.lines[key].items() if k not in ("trace", "session", "elapsed_s")}
                   for key in self.keys]
        # the wall time of each session that ran samples (a killed one's ends with its last sample)
        wall: dict[int, float] = {}
        for r in self.lines.values():
            wall[r.get("session", 1)] = max(wall.get(r.get("session", 1), 0.0), r.get("elapsed_s") or 0.0)
        if len(self.lines) > self.resumed:  # this session ran samples: its wall time is all of it
            wall[self.session] = wall_s
        summary = summarize(records, self.bench, judged=self.judge is not None, wall_s=sum(wall.values()))
        summary["sessions"] = len(wall)
        summary["skipped"] = len(self.read.skipped)
        fp = self.fp or {}  # what the fingerprint hashed is not read again
        system = self.system if self.system is not None else \
            system_of(cfg, self.loop, self.graph, fp.get("model_files"))
        where = str(cfg.model.path) if cfg.remote is None else f"{', '.join(cfg.remote.urls)} ({system['model']})"
        judge = cfg.judge.model if cfg.judge else None
        result = {"name": cfg.name or run_name(cfg), "model": where, "graph": self.graph.name, "params": cfg.params,
                  "data": str(cfg.data), "data_items": self.read.total, "benchmark": self.bench.name,
                  "protocol": protocol_of(cfg, self.bench, fp["data_sha256"] if fp else data_digest(cfg.data),
                                          len(self.items), judge),
                  "system": system,
                  "summary": summary, "records": records,
                  "skipped_items": [{"index": i, "problems": p} for i, p in self.read.skipped]}
        if self.resume:
            result["resumed"] = {"kept": self.resumed, "dropped_lines": self.dropped}
        if self.ray is not None:
            result["ray"] = self.ray
        if self.log is not None:
            self.log.results(result, markdown([result]))
        return result


def prepare(cfg: EvalConfig, model=None, registry=None, policy=None, *, resume: bool = False,
            overwrite: bool = False, load_loop: bool = True) -> Run:
    """Everything before the first sample, each check before any work: the output folder, the
    resume plan, the benchmark's items (refused when too many were skipped), the graph, then the
    loop (``load_loop=False``: none, for a driver whose workers hold the loops)."""
    from perceive.eval import run_folder
    from perceive.eval.benchmarks import get_benchmark
    from perceive.eval.judge import Judge, JudgeConfig
    from perceive.eval.stream import OraclePolicy
    from perceive.graph import compile_graph
    from perceive.loop_factory import loop_from_config
    from perceive.plugins import get_registry

    fp, kept, dropped = None, {}, 0
    if cfg.output is not None:  # every output path first: a run must not end unable to write
        run_folder.check_output_folder(cfg.output)
        fp = run_folder.fingerprint(cfg, model_files=model is None)
        kept, dropped = run_folder.plan(cfg.output, fp, resume, overwrite)
    elif resume:
        raise ResumeError("--resume finishes the run in an output folder, and none is given",
                          hint="give --out (or output: in the config) the folder of the run to finish")
    bench = get_benchmark(cfg.benchmark.name)
    if cfg.oracle_spans and not bench.spans:
        raise ConfigError(f"oracle_spans forces each item's own perception span: the {bench.name} benchmark has "
                          "none (only the paper layout does)", hint="drop --oracle-spans")
    if cfg.oracle_spans and cfg.remote is not None:
        raise ConfigError("oracle_spans forces spans token by token: it needs a local model, not remote.url",
                          hint="drop --oracle-spans, or run the model locally")
    read = bench.read(cfg.data, shuffle=cfg.benchmark.shuffled(bench), seed=cfg.benchmark.seed,
                      split=cfg.benchmark.split)
    Skipped(str(cfg.data), read.total, read.skipped, read.root, read.listing).check(cfg.max_skipped_fraction)
    items = read.items if cfg.max_samples is None else read.items[:cfg.max_samples]
    registry = registry or get_registry()
    graph = compile_graph(cfg.graph, registry=registry, params=cfg.graph_params())  # fails before the model loads
    loop = oracle = None
    if load_loop:
        loop = loop_from_config(cfg, registry=registry, policy=policy, model=model, graph=graph)
        if cfg.oracle_spans:
            loop.policy = oracle = OraclePolicy(loop.model.tokenizer)
    judge = Judge(JudgeConfig(**cfg.judge.model_dump())) if cfg.judge else None
    return Run(cfg, bench, read, items, loop, graph, judge, oracle, kept, fp, resume, dropped)


def record(run: Run, pos: int, a, ran: bool) -> dict[str, Any]:
    """One finished sample's record: what it answered, how it scores (the benchmark's figures and
    what its extraction rule read), what it did and cost."""
    item, j = run.by_pos[pos]
    rec: dict[str, Any] = {"index": item.index, "sample": j}
    if run.cfg.sampling.do_sample:
        rec["seed"] = run.cfg.sampling.seed + pos
    rec.update(question=item.question, answer=item.answer, prediction=a.text)
    if len(item.answers) > 1:
        rec["answers"] = item.answers
    if item.options is not None:
        rec["options"] = item.options
    # a failed sample answered nothing: wrong (0), and counted apart as an error; never read by the
    # extraction rule (MME-RealWorld's reads an empty response as "A")
    rec.update({m: 0.0 for m in run.bench.metrics} | {"extracted": None} if a.error else run.bench.score(a.text, item))
    if item.category is not None:
        rec["category"] = item.category
    rec.update({
        "actions": [h.action for h in a.trace.hops], "hops": len(a.trace.hops),
        "generated_tokens": a.trace.generated_tokens,
        # its own time, from joining the running batch to finishing; None: it never ran
        "latency_ms": a.trace.total_ms if ran else None,
        "error": a.error, "events": [str(ev.get("type")) for ev in a.trace.events],
    })
    if a.trace.endpoint is not None:  # several served endpoints: the one the sample ran on
        rec["endpoint"] = a.trace.endpoint
    if item.box is not None:
        rec["gt_box"] = list(item.box)
        # no region hop: nothing to score (None, shown "-"), not an IoU of 0
        rec["crop_iou"] = crop_iou(a.trace, item.box)
    if run.judge is not None:
        rec["judge"] = run.judge.score(item.question, item.answer, a.text)
    if item.fields:
        rec["item"] = item.fields
    rec["trace"] = a.trace.to_dict()
    return rec


def run_name(cfg: EvalConfig) -> str:
    """A run's default name: its output folder's, else its model's folder (with the folder above
    when that is a run's ``model``, as training writes it)."""
    if cfg.output is not None:
        return cfg.output.name
    if cfg.model.path is None and cfg.remote is not None:  # a served model: its name, else the endpoint's host
        return (cfg.remote.model or cfg.remote.urls[0].split("//")[-1].split("/")[0]).replace("/", "_")
    p = Path(cfg.model.path)
    return "/".join(p.parts[-2:]) if p.name == "model" and len(p.parts) > 1 else p.name
