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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from perceive.config import ActionTimeout, Device, RuntimeConfig, format_validation_error, load_yaml_mapping
from perceive.errors import ConfigError
from perceive.eval.metrics import anls, exact_match, relaxed_accuracy
from perceive.eval.skipped import DEFAULT_MAX_SKIPPED_FRACTION, Skipped

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


class EvalConfig(_Strict):
    model: Path
    data: Path
    graph: str = "free_choice"
    params: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None
    max_samples: int | None = None
    batch_size: int = 8
    max_new_tokens: int = 32
    #: parsed like the run config's ``device`` when the config (or ``--device``) is loaded
    device: Device = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    action_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: force each item's own first assistant turn (its ground-truth perception span) before the
    #: model continues: separates finding the region from reading it
    oracle_spans: bool = False
    judge: JudgeSettings | None = None
    output: Path | None = None
    #: the share of the data's items that may be skipped (missing images, malformed items) before
    #: the run refuses: a score on what is left would pass for a score on the whole set
    max_skipped_fraction: float = Field(DEFAULT_MAX_SKIPPED_FRACTION, ge=0, le=1)
    #: deadline of one perception call, in seconds (a call past it fails its own sample); null:
    #: none; at most a day. The default is the run config's ``runtime.action_timeout_s``
    action_timeout_s: ActionTimeout | None = RuntimeConfig.model_fields["action_timeout_s"].default


def load_eval_config(path: str | Path, **overrides) -> EvalConfig:
    data = load_yaml_mapping(path)
    try:
        cfg = EvalConfig.model_validate({**data, **{k: v for k, v in overrides.items() if v is not None}})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path), data, EvalConfig)) from None
    base = Path(path).parent
    for attr in ("model", "data", "output"):
        p = getattr(cfg, attr)
        if p is not None and not p.is_absolute() and not (attr == "model" and p.exists()):
            setattr(cfg, attr, base / p)
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
    from perceive.graph import compile_graph
    from perceive.loop import LoopOptions, PerceptionLoop
    from perceive.model import load_model

    ds = VPTDataset(cfg.data)
    skipped = Skipped.of(ds)
    skipped.check(cfg.max_skipped_fraction)  # before the model loads: nothing to score, or too little
    n = len(ds) if cfg.max_samples is None else min(len(ds), cfg.max_samples)
    model = model or load_model(cfg.model, device=cfg.device, dtype=None if cfg.dtype == "auto" else cfg.dtype)
    graph = compile_graph(cfg.graph, registry=registry, params=cfg.params)
    loop = PerceptionLoop(model, registry=registry, graph=graph, policy=policy,
                          options=LoopOptions(max_new_tokens=cfg.max_new_tokens, action_options=cfg.action_options,
                                              action_timeout_s=cfg.action_timeout_s))
    judge = Judge(JudgeConfig(**cfg.judge.model_dump())) if cfg.judge else None
    records = []
    t_start = time.perf_counter()
    with Progress(disable=not progress) as bar:
        task = bar.add_task("eval", total=n)
        for lo in range(0, n, cfg.batch_size):
            exs = [ds[k] for k in range(lo, min(n, lo + cfg.batch_size))]
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
    result = {"name": cfg.name or run_name(cfg), "model": str(cfg.model),
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
    p = Path(cfg.model)
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
