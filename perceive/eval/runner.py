"""``perceive eval``: a model and a graph over a dataset; metrics, telemetry, reports.

The question is the first user turn without its image placeholders and without the paper's
trigger prompts (the graph adds its own); the ground truth is the last assistant turn. When an
item carries a crop (a second image ``path_x0,y0,x1,y1``), that box is the ground-truth region
and each sample's first region hop is scored by IoU against it.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from perceive.config import PerceiveConfig, load_config
from perceive.config_files import Override
from perceive.data.skipped import DEFAULT_MAX_SKIPPED_FRACTION, Skipped
from perceive.errors import ConfigError
from perceive.eval.metrics import anls, exact_match, relaxed_accuracy

TRIGGERS = ("Identify the region that can help you answer the question, and then answer the question.",
            "Require additional perception features, and then answer the question.",
            "Answer the question using a single word or phrase",
            "Answer with the option's letter from the given choices directly")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JudgeSettings(_Strict):
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
    #: samples running at once (continuous batching: a finished sample's place is taken at once)
    batch_size: int = 8
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


#: fields an eval config had before it was a run config, and where they are now
MOVED = {"max_new_tokens": "runtime.max_new_tokens", "action_timeout_s": "runtime.action_timeout_s",
         "action_options": "actions.<name>.options"}
#: keyword arguments of :func:`load_eval_config` that name a nested field
FLAG_KEYS = {"model": ("model", "path"), "max_new_tokens": ("runtime", "max_new_tokens"),
             "action_timeout_s": ("runtime", "action_timeout_s")}


def _normalise(data):
    """``model: DIR`` shorthand; the fields that moved into the run config's sections refused
    with where they are now."""
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


def evaluate(cfg: EvalConfig, model=None, registry=None, progress: bool = True, policy=None) -> dict[str, Any]:
    """``policy`` overrides the model's token choices (see ``PerceptionLoop``); for oracle runs and tests."""
    from rich.progress import Progress

    from perceive.data.dataset import VPTDataset, split_crop
    from perceive.eval.judge import Judge, JudgeConfig
    from perceive.geometry import Box

    ds = VPTDataset(cfg.data)
    skipped = Skipped.of(ds)
    skipped.check(cfg.max_skipped_fraction)  # before the model loads: nothing to score, or too little
    n = len(ds) if cfg.max_samples is None else min(len(ds), cfg.max_samples)
    from perceive.graph import compile_graph
    from perceive.plugins import get_registry
    from perceive.remote import loop_from_config

    registry = registry or get_registry()
    graph = compile_graph(cfg.graph, registry=registry, params=cfg.graph_params())  # fails before the model loads
    loop = loop_from_config(cfg, registry=registry, policy=policy, model=model, graph=graph)
    model = loop.model
    judge = Judge(JudgeConfig(**cfg.judge.model_dump())) if cfg.judge else None
    records = []
    t_start = time.perf_counter()
    with Progress(disable=not progress) as bar:
        task = bar.add_task("eval", total=n)
        # continuous batching: batch_size samples run at once and a finished one's place is taken
        # at the next step; the progress bar moves per chunk of 8 batches
        loop.options.max_batch_size = cfg.batch_size
        chunk = cfg.batch_size * 8
        for lo in range(0, n, chunk):
            exs = [ds[k] for k in range(lo, min(n, lo + chunk))]
            if cfg.oracle_spans:
                loop.policy = _oracle(model.tokenizer, exs)
            answers = loop.ask_batch([(e.images["images"][0], question_of(e.question)) for e in exs])
            for e, a in zip(exs, answers, strict=True):
                gt = e.answer
                rec: dict[str, Any] = {
                    "index": e.index, "question": question_of(e.question), "answer": gt, "prediction": a.text,
                    "exact_match": exact_match(a.text, gt), "anls": anls(a.text, gt),
                    "relaxed_accuracy": relaxed_accuracy(a.text, gt),
                    "actions": [h.action for h in a.trace.hops], "hops": len(a.trace.hops),
                    "generated_tokens": a.trace.generated_tokens, "ms": a.trace.total_ms,
                    "error": a.error, "events": [ev.get("type") for ev in a.trace.events],
                }
                refs = e.refs.get("images", [])
                gt_box = split_crop(refs[1])[1] if len(refs) > 1 else None
                region_hops = [h for h in a.trace.hops if h.box and h.action in ("region_select", "zoom")]
                if gt_box is not None:
                    rec["gt_box"] = list(gt_box)
                    rec["crop_iou"] = (Box.from_dict(region_hops[0].box).iou(Box(*gt_box))
                                       if region_hops else 0.0)
                if judge is not None:
                    rec["judge"] = judge.score(rec["question"], gt, a.text)
                records.append(rec)
            bar.update(task, completed=len(records))
    summary = summarize(records, judge)
    summary["seconds"] = time.perf_counter() - t_start
    summary["skipped"] = skipped.count
    # skipped items: one entry per item (an image and its crop both missing is one item)
    where = str(cfg.model.path) if cfg.remote is None else f"{cfg.remote.url} ({loop.served})"
    result = {"name": cfg.name or run_name(cfg), "model": where,
              "graph": graph.name, "params": cfg.params, "data": str(cfg.data), "data_items": skipped.total,
              "summary": summary, "records": records, "skipped_items": skipped.to_json()}
    if cfg.output:
        cfg.output.mkdir(parents=True, exist_ok=True)
        (cfg.output / "eval.json").write_text(json.dumps(result, indent=1))
        (cfg.output / "eval.md").write_text(markdown([result]))
    return result


def run_name(cfg: EvalConfig) -> str:
    """A run's default name: its output folder's, else its model's folder (with the folder above
    when that is a run's ``model``, as training writes it)."""
    if cfg.output is not None:
        return cfg.output.name
    p = Path(cfg.model.path)
    return "/".join(p.parts[-2:]) if p.name == "model" and len(p.parts) > 1 else p.name


def _oracle(tokenizer, examples):
    from perceive.loop.scripted import ScriptedPolicy, span_tokens

    spans = {}
    for i, e in enumerate(examples):
        turns = [m["content"] for m in e.messages if m["role"] == "assistant"]
        if len(turns) > 1:  # a perception turn, then the answer
            spans[i] = span_tokens(tokenizer, turns[0])
    return ScriptedPolicy(tokenizer, spans)


def summarize(records: list[dict], judge=None) -> dict[str, Any]:
    n = len(records)

    def mean(key):
        vals = [r[key] for r in records if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    actions: dict[str, int] = {}
    for r in records:
        for a in r["actions"]:
            actions[a] = actions.get(a, 0) + 1
    s = {"samples": n, "exact_match": mean("exact_match"), "anls": mean("anls"),
         "relaxed_accuracy": mean("relaxed_accuracy"),
         "samples_with_a_hop": sum(1 for r in records if r["hops"]) / n if n else 0.0,
         "action_counts": actions, "crop_iou": mean("crop_iou"),
         "errors": sum(1 for r in records if r["error"]),
         "tokens_per_sample": mean("generated_tokens"),
         "ms_per_sample_median": statistics.median([r["ms"] for r in records]) if records else None}
    if judge is not None:
        s["judge"] = mean("judge")
        s["judge_failures"] = judge.failures
    return s


def markdown(results: list[dict]) -> str:
    """One row per run: the comparison table."""
    cols = [("exact match", "exact_match"), ("ANLS", "anls"), ("relaxed acc.", "relaxed_accuracy"),
            ("hop rate", "samples_with_a_hop"), ("crop IoU", "crop_iou"), ("tokens/sample", "tokens_per_sample"),
            ("ms/sample", "ms_per_sample_median"), ("errors", "errors"), ("samples", "samples"),
            ("skipped", "skipped")]
    has_judge = any("judge" in r["summary"] for r in results)
    if has_judge:
        cols.insert(3, ("judge", "judge"))
    lines = ["| run | graph | " + " | ".join(c for c, _ in cols) + " |", "|" + " --- |" * (len(cols) + 2)]
    for r in results:
        s = r["summary"]

        def fmt(v):
            return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

        lines.append(f"| {r['name']} | {r['graph']} | " + " | ".join(fmt(s.get(k)) for _, k in cols) + " |")
    return "\n".join(lines) + "\n"
