"""``perceive eval``: a model and a graph over a dataset; metrics, telemetry, reports.

The question is the first user turn without its image placeholders and without the paper's
trigger prompts (the graph adds its own); the ground truth is the last assistant turn. When an
item carries a crop (a second image ``path_x0,y0,x1,y1``), that box is the ground-truth region
and each sample's first region hop is scored by IoU against it. An item's extra scalar keys (a
string, number or boolean beside ``messages`` and the image lists, e.g. ``card_size`` from
``perceive data cards``) are copied into its record under ``item``, so that results can be broken
down by them (``perceive eval compare --by KEY``).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from perceive.config import PerceiveConfig, RuntimeConfig, load_config
from perceive.config.overrides import Override
from perceive.config.settings import MANY_SAMPLES_BATCH_SIZE
from perceive.data.skipped import DEFAULT_MAX_SKIPPED_FRACTION, Skipped
from perceive.errors import ConfigDeprecationWarning, ConfigError, ResumeError
from perceive.eval.metrics import anls, crop_iou, exact_match, relaxed_accuracy
from perceive.eval.report import markdown, summarize
from perceive.strict import StrictModel

TRIGGERS = ("Identify the region that can help you answer the question, and then answer the question.",
            "Require additional perception features, and then answer the question.",
            "Answer the question using a single word or phrase",
            "Answer with the option's letter from the given choices directly")


class JudgeSettings(StrictModel):
    base_url: str
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"
    retries: int = 3


class EvalConfig(PerceiveConfig):
    """A run config (the model, encoders, actions, graph and params, runtime, device, dtype: see
    :class:`perceive.config.PerceiveConfig`) plus what to evaluate it on. ``model: DIR`` is short
    for ``model: {path: DIR}``; the model is required."""

    data: Path
    name: str | None = None
    max_samples: int | None = None
    #: deprecated spelling of ``runtime.max_batch_size`` (the samples running at once): given, it is
    #: moved there; read, it is that setting. An eval runs :data:`MANY_SAMPLES_BATCH_SIZE` by default
    batch_size: int | None = Field(None, ge=1, exclude=True)
    #: force each item's own first assistant turn (its ground-truth perception span) before the
    #: model continues: separates finding the region from reading it
    oracle_spans: bool = False
    judge: JudgeSettings | None = None
    output: Path | None = None
    #: the share of the data's items that may be skipped (missing images, malformed items) before
    #: the run refuses: a score on what is left would pass for a score on the whole set
    max_skipped_fraction: float = Field(DEFAULT_MAX_SKIPPED_FRACTION, ge=0, le=1)

    def path_fields(self) -> list[tuple]:
        return [*super().path_fields(), ("data",), ("output",)]

    @model_validator(mode="before")
    @classmethod
    def _batch_size_moved(cls, data: Any) -> Any:
        """``EvalConfig(batch_size=N)`` in Python (a file's is moved by :func:`_normalise`)."""
        if not isinstance(data, dict) or data.get("batch_size") is None:
            return data
        warnings.warn(BATCH_SIZE_MOVED, ConfigDeprecationWarning, stacklevel=4)
        runtime = data.get("runtime") or {}
        runtime = runtime.model_dump(exclude_unset=True) if isinstance(runtime, RuntimeConfig) else dict(runtime)
        if runtime.get("max_batch_size", data["batch_size"]) != data["batch_size"]:
            raise ValueError(f"batch_size {data['batch_size']} and runtime.max_batch_size "
                             f"{runtime['max_batch_size']} disagree: set runtime.max_batch_size only")
        return {**{k: v for k, v in data.items() if k != "batch_size"},
                "runtime": {**runtime, "max_batch_size": data["batch_size"]}}

    @model_validator(mode="after")
    def _eval_batch(self) -> EvalConfig:
        # an eval runs many samples: a batch of a few by default, not all of them at once
        if self.runtime.max_batch_size is None:
            self.runtime = self.runtime.model_copy(update={"max_batch_size": MANY_SAMPLES_BATCH_SIZE})
        self.batch_size = self.runtime.max_batch_size  # the old spelling reads the one setting
        return self


#: fields an eval config had before it was a run config, and where they are now
MOVED = {"max_new_tokens": "runtime.max_new_tokens", "action_timeout_s": "runtime.action_timeout_s",
         "action_options": "actions.<name>.options"}
#: what a ``batch_size`` written in a file, a ``--set`` or Python is told
BATCH_SIZE_MOVED = "the eval config's batch_size is deprecated: set runtime.max_batch_size (--batch-size sets it)"
#: keyword arguments of :func:`load_eval_config` that name a nested field
FLAG_KEYS = {"model": ("model", "path"), "max_new_tokens": ("runtime", "max_new_tokens"),
             "action_timeout_s": ("runtime", "action_timeout_s")}


def _batch_size_as_setting(data):
    """``batch_size`` moved to ``runtime.max_batch_size``, keeping where it was written. From the
    command line it wins over the file's setting, as every flag; written in a file beside
    ``runtime.max_batch_size``, the two are refused unless they agree."""
    from perceive.config.safe_yaml import LinedDict

    origin, line = data.origins.pop("batch_size", None), data.lines.pop("batch_size", None)
    value = data.pop("batch_size")
    if origin != "--batch-size":
        where = f"{origin or 'the eval config'}" + (f" line {line}" if line else "")
        warnings.warn(f"{where}: {BATCH_SIZE_MOVED}", ConfigDeprecationWarning, stacklevel=2)
    runtime = data.get("runtime")
    if runtime is None:
        runtime = data["runtime"] = LinedDict()
    if not isinstance(runtime, LinedDict):  # not a mapping: validation names the field
        return data
    if runtime.origins.get("max_batch_size") == "--batch-size":
        return data  # the flag sets runtime.max_batch_size, and a flag beats --set batch_size
    command_line = str(origin or "").startswith("--")
    if "max_batch_size" in runtime and not command_line and runtime["max_batch_size"] != value:
        raise ConfigError(f"{origin or 'the eval config'}: batch_size ({value}"
                          + (f", line {line}" if line else "") + f") and runtime.max_batch_size "
                          f"({runtime['max_batch_size']}) disagree", hint="set runtime.max_batch_size only")
    runtime["max_batch_size"] = value
    runtime.lines.pop("max_batch_size", None)
    if line is not None:
        runtime.lines["max_batch_size"] = line
    if origin is not None:
        runtime.origins["max_batch_size"] = origin
    return data


def _normalise(data):
    """``model: DIR`` shorthand; ``batch_size`` as ``runtime.max_batch_size``; the fields that moved
    into the run config's sections refused with where they are now."""
    from perceive.config import model_shorthand

    moved = [k for k in MOVED if k in data]
    if moved:
        lines = [f"  {k}" + (f" (line {data.lines[k]})" if k in data.lines else "") + f": moved to {MOVED[k]}"
                 for k in moved]
        origin = data.origins.get(moved[0])
        raise ConfigError("\n".join([f"{origin or 'the eval config'}: {len(moved)} field(s) of the old eval config",
                                     *lines]),
                          hint="an eval config is a run config now: e.g. `runtime: {max_new_tokens: 16}`; see "
                               "docs/reference/config.md")
    if "batch_size" in data:
        data = _batch_size_as_setting(data)
    return model_shorthand(data)


def load_eval_config(path: str | Path | list | None, *, overrides: list[Override] | tuple = (),
                     **flags) -> EvalConfig:
    """An eval config: ``path`` (several files: each laid over the one before; ``None``: the
    command line alone) with its ``extends`` chain, then ``overrides`` (``--set``, flags), then
    ``flags`` (``model=DIR``, ``device="cpu"``, ...; ``None``: not given). Relative paths resolve
    against the file that wrote them. See :func:`perceive.config.load_config`."""
    flag_overrides = [Override(FLAG_KEYS.get(k, (k,)), v, "--" + k.replace("_", "-"))
                      for k, v in flags.items() if v is not None]
    cfg = load_config(path, overrides=[*overrides, *flag_overrides], schema=EvalConfig, normalise=_normalise)
    if cfg.model.path is None and cfg.remote is None:
        raise ConfigError(f"{cfg._source}: model.path is not set: evaluation loads a local model folder",
                          hint="set `model: DIR` in the config, pass --model DIR, or --remote URL for a served model")
    return cfg


def question_of(text: str) -> str:
    q = text
    from perceive.data.dataset import placeholders

    for ph in placeholders().values():
        q = q.replace(ph, "")
    for t in TRIGGERS:
        q = q.replace(t, "")
    return q.strip()


def evaluate(cfg: EvalConfig, model=None, registry=None, progress: bool = True, policy=None, *,
             resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run ``cfg``'s model and graph over its data; the results (``summary``, ``records`` in data
    order, ...), also written to ``cfg.output`` when set. ``policy`` overrides the model's token
    choices (see ``PerceptionLoop``); for oracle runs and tests.

    With an output folder, each finished sample is a line of ``OUTPUT/predictions.jsonl`` at once,
    so a run that dies keeps its work; ``resume`` runs only the samples that folder lacks (the
    partial run's config and data must be the same) and reports over all of them. Raises, before
    any work: ``OutputError`` (the folder cannot be written), ``ResumeError``, ``DataUnusableError``,
    ``ConfigError``. See :mod:`perceive.eval.run_folder`."""
    from rich.progress import Progress

    from perceive.data.dataset import VPTDataset
    from perceive.eval import run_folder

    fp, kept, dropped = None, {}, 0
    if cfg.output is not None:  # every output path first: a run must not end unable to write
        run_folder.check_output_folder(cfg.output)
        fp = run_folder.fingerprint(cfg, model_files=model is None)
        kept, dropped = run_folder.plan(cfg.output, fp, resume, overwrite)
    elif resume:
        raise ResumeError("--resume finishes the run in an output folder, and none is given",
                          hint="give --out (or output: in the config) the folder of the run to finish")
    ds = VPTDataset(cfg.data)
    skipped = Skipped.of(ds)
    skipped.check(cfg.max_skipped_fraction)  # before the model loads: nothing to score, or too little
    n = len(ds) if cfg.max_samples is None else min(len(ds), cfg.max_samples)
    if cfg.oracle_spans and cfg.remote is not None:
        raise ConfigError("oracle_spans forces spans token by token: it needs a local model, not remote.url",
                          hint="drop --oracle-spans, or run the model locally")
    from perceive.eval.judge import Judge, JudgeConfig
    from perceive.eval.stream import OraclePolicy, answers
    from perceive.graph import compile_graph
    from perceive.loop_factory import loop_from_config
    from perceive.plugins import get_registry

    registry = registry or get_registry()
    graph = compile_graph(cfg.graph, registry=registry, params=cfg.graph_params())  # fails before the model loads
    loop = loop_from_config(cfg, registry=registry, policy=policy, model=model, graph=graph)
    oracle = None
    if cfg.oracle_spans:
        loop.policy = oracle = OraclePolicy(loop.model.tokenizer)
    judge = Judge(JudgeConfig(**cfg.judge.model_dump())) if cfg.judge else None
    index_of = [ds.items[k][0] for k in range(n)]  # position -> the item's index in the data file
    lines = {i: kept[i] for i in index_of if i in kept}
    session = 1 + max((r.get("session", 1) for r in lines.values()), default=0)
    resumed = len(lines)
    log = run_folder.PredictionLog(cfg.output, fp, list(lines.values())) if cfg.output is not None else None

    def work(k):
        def get():
            e = ds[k]
            return e.images["images"][0], question_of(e.question), e
        return k, get

    t_start = time.perf_counter()
    try:
        with Progress(disable=not progress) as bar:
            task = bar.add_task("eval", total=n, completed=len(lines))
            todo = (work(k) for k in range(n) if index_of[k] not in lines)
            for k, a, ran in answers(loop, todo, cfg.runtime.max_batch_size, oracle):
                rec = _record(ds, k, a, ran, judge)
                rec.update(session=session, elapsed_s=time.perf_counter() - t_start)
                lines[rec["index"]] = rec
                if log is not None:
                    log.write({**rec, "trace": a.trace.to_dict()})
                bar.update(task, completed=len(lines))
    finally:
        if log is not None:
            log.close()
    records = [{k: v for k, v in lines[i].items() if k not in ("trace", "session", "elapsed_s")} for i in index_of]
    # the wall time of each session that ran samples (a killed one's ends with its last sample)
    wall: dict[int, float] = {}
    for r in lines.values():
        wall[r.get("session", 1)] = max(wall.get(r.get("session", 1), 0.0), r.get("elapsed_s") or 0.0)
    if len(lines) > resumed:  # this session ran samples: its wall time is all of it, to the results
        wall[session] = time.perf_counter() - t_start
    summary = summarize(records, judged=judge is not None, wall_s=sum(wall.values()))
    summary["sessions"] = len(wall)
    summary["skipped"] = skipped.count
    # skipped items: one entry per item (an image and its crop both missing is one item)
    where = str(cfg.model.path) if cfg.remote is None else f"{cfg.remote.url} ({loop.served})"
    result = {"name": cfg.name or run_name(cfg), "model": where,
              "graph": graph.name, "params": cfg.params, "data": str(cfg.data), "data_items": skipped.total,
              "summary": summary, "records": records, "skipped_items": skipped.to_json()}
    if resume:
        result["resumed"] = {"kept": resumed, "dropped_lines": dropped}
    if log is not None:
        log.results(result, markdown([result]))
    return result


def _record(ds, k: int, a, ran: bool, judge) -> dict[str, Any]:
    """One finished sample's record: what it answered, how it scores, what it did and cost."""
    from perceive.data.dataset import split_crop

    index, item = ds.items[k]
    gt = item["messages"][-1]["content"]
    question = question_of(item["messages"][0]["content"])
    rec: dict[str, Any] = {
        "index": index, "question": question, "answer": gt, "prediction": a.text,
        "exact_match": exact_match(a.text, gt), "anls": anls(a.text, gt),
        "relaxed_accuracy": relaxed_accuracy(a.text, gt),
        "actions": [h.action for h in a.trace.hops], "hops": len(a.trace.hops),
        "generated_tokens": a.trace.generated_tokens,
        # its own time, from joining the running batch to finishing; None: it never ran
        "latency_ms": a.trace.total_ms if ran else None,
        "error": a.error, "events": [str(ev.get("type")) for ev in a.trace.events],
    }
    refs = [str(r) for r in item.get("images") or []]
    gt_box = split_crop(refs[1])[1] if len(refs) > 1 else None
    if gt_box is not None:
        rec["gt_box"] = list(gt_box)
        # no region hop: nothing to score (None, shown "-"), not an IoU of 0
        rec["crop_iou"] = crop_iou(a.trace, gt_box)
    if judge is not None:
        rec["judge"] = judge.score(question, gt, a.text)
    extra = item_fields(item)
    if extra:
        rec["item"] = extra
    return rec


def item_fields(item: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """An item's extra scalar keys (``card_size``, a category, a source id): every key whose value
    is a string, number or boolean. ``messages`` and the image lists are lists, so never among them."""
    return {key: v for key, v in item.items() if isinstance(v, (str, int, float, bool))}


def run_name(cfg: EvalConfig) -> str:
    """A run's default name: its output folder's, else its model's folder (with the folder above
    when that is a run's ``model``, as training writes it)."""
    if cfg.output is not None:
        return cfg.output.name
    if cfg.model.path is None and cfg.remote is not None:  # a served model: its name, else the endpoint's host
        return (cfg.remote.model or cfg.remote.url.split("//")[-1].split("/")[0]).replace("/", "_")
    p = Path(cfg.model.path)
    return "/".join(p.parts[-2:]) if p.name == "model" and len(p.parts) > 1 else p.name
