"""An eval run's figures: the summary of its records, and the markdown table that shows runs side
by side.

Timing is two separate figures, never one: **latency** is each sample's own time, from joining the
running batch to finishing (``records[i]["latency_ms"]``; mean, p50, p95 over the samples), and
**throughput** is samples per second of wall time over the whole run (the sessions of a resumed
run added up). With continuous batching the two are not each other's inverse.
"""

from __future__ import annotations

import statistics
from typing import Any

from perceive.eval.stats import mean_of

#: the type value of a trace event that says a question held characters the model's tokenizer maps
#: to its unknown token (``EventType.TOKENIZER``); read by value, so older traces count too
TOKENIZER_EVENT = "tokenizer"


def percentile(values: list[float], q: int) -> float | None:
    """The ``q``-th percentile (linear between the closest ranks); ``None`` for no values."""
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summarize(records: list[dict], bench=None, judged: bool = False, wall_s: float | None = None) -> dict[str, Any]:
    """The run's figures from its records (one per sample, in any order): the hop telemetry and cost,
    and with ``bench`` its figures with their intervals (:func:`breakdown`). ``judged``: an LLM judge
    scored the samples (a ``judge`` of ``None`` is a failed request, counted apart). ``wall_s``: the
    seconds the samples took together (throughput's denominator)."""
    n = len(records)

    actions: dict[str, int] = {}
    for r in records:
        for a in r["actions"]:
            actions[a] = actions.get(a, 0) + 1
    latency = [r["latency_ms"] for r in records if r.get("latency_ms") is not None]
    s = {"samples": n,
         "samples_with_a_hop": sum(1 for r in records if r["hops"]) / n if n else 0.0,
         "hops_per_sample": mean_of(records, "hops"),
         # over the samples whose first region hop was scored: None (shown "-") when none made one
         "action_counts": actions, "crop_iou": mean_of(records, "crop_iou"),
         "errors": sum(1 for r in records if r["error"]),
         "unknown_characters": sum(1 for r in records if TOKENIZER_EVENT in r.get("events", ())),
         "tokens_per_sample": mean_of(records, "generated_tokens"),
         "latency_ms_mean": statistics.fmean(latency) if latency else None,
         "latency_ms_p50": percentile(latency, 50), "latency_ms_p95": percentile(latency, 95),
         "throughput_samples_per_s": n / wall_s if wall_s else None,
         "seconds": wall_s}
    if judged:
        s["judge_failures"] = sum(1 for r in records if r.get("judge") is None)
    if bench is not None:
        s.update(breakdown(bench, records, judged))
    return s


def estimates(bench, records: list[dict], judged: bool = False) -> dict[str, dict]:
    """Each of ``bench``'s figures over ``records`` with its standard error and 95% interval over
    items (:mod:`perceive.eval.stats`): the mean of each metric, or the benchmark's own aggregate
    (bootstrapped); the judge's mean score too when the run was judged."""
    from perceive.eval.stats import bootstrap, by_item, item_means, normal

    groups = by_item(records)
    if bench.bootstrapped():
        # resample items, each as one record of its samples' means: k times fewer records per draw
        out = bootstrap([[_item_mean(g, bench.metrics)] for g in groups], bench.figures)
    else:
        out = {m: normal(item_means(groups, m)) for m in bench.metrics}
    if judged:
        out["judge"] = normal(item_means(groups, "judge"))
    return {k: e.to_json() for k, e in out.items()}


def _item_mean(group: list[dict], metrics) -> dict:
    """An item's k samples as one record: the first's fields, each metric its samples' mean."""
    return {**group[0], **{m: mean_of(group, m) for m in metrics}}


def breakdown(bench, records: list[dict], judged: bool = False) -> dict[str, Any]:
    """The summary's figures: ``figures`` (each with its interval) overall, and ``categories``
    (the same per category, for a benchmark whose items have one), plus each overall figure's value
    under its own name (the table's columns)."""
    figures = estimates(bench, records, judged)
    out: dict[str, Any] = {"figures": figures, **{k: e["mean"] for k, e in figures.items()}}
    cats: dict[str, list[dict]] = {}
    for r in records:
        if r.get("category") is not None:
            cats.setdefault(str(r["category"]), []).append(r)
    if cats:
        out["categories"] = {c: estimates(bench, rs, judged) for c, rs in sorted(cats.items())}
    return out


def split_by(result: dict, key: str) -> list[dict]:
    """``result`` (an eval run: its ``name``, ``graph`` and ``records``) as one run per value of its
    records' ``item[key]`` (an item's extra field, e.g. ``card_size``), in sorted order, each named
    ``NAME [KEY=VALUE]`` with the summary of its records. Timing over the whole run does not split,
    so throughput is left out. Raises :class:`~perceive.errors.InputError` when no record has the key."""
    from perceive.errors import InputError

    groups: dict[str, list[dict]] = {}
    for r in result.get("records") or []:
        value = (r.get("item") or {}).get(key)
        if value is not None:
            groups.setdefault(str(value), []).append(r)
    if not groups:
        raise InputError(f"no record of the run {result.get('name')!r} has the item field {key!r}",
                         hint="--by names a key of the data's items (perceive data cards writes card_size); a run "
                              "made before perceive eval kept item fields must be run again")
    from perceive.eval.benchmarks import get_benchmark

    bench = get_benchmark(result.get("benchmark") or "paper")
    judged = "judge" in (result.get("summary") or {})
    return [{**result, "name": f"{result['name']} [{key}={value}]", "records": records,
             "summary": summarize(records, bench, judged=judged)}
            for value, records in sorted(groups.items())]


#: the hop telemetry and cost columns, after the figures
TELEMETRY = [("hop rate", "samples_with_a_hop"), ("hops/sample", "hops_per_sample"), ("crop IoU", "crop_iou"),
             ("tokens/sample", "tokens_per_sample"), ("latency mean ms", "latency_ms_mean"),
             ("latency p50 ms", "latency_ms_p50"), ("latency p95 ms", "latency_ms_p95"),
             ("samples/s", "throughput_samples_per_s"), ("errors", "errors"), ("samples", "samples"),
             ("skipped", "skipped")]
#: a run made before figures had intervals: its figures by these names
OLD_FIGURES = ["exact_match", "anls", "relaxed_accuracy", "judge"]
NAMES = {"exact_match": "exact match", "anls": "ANLS", "relaxed_accuracy": "relaxed acc.",
         "vqa_accuracy": "VQA acc.", "accuracy": "accuracy"}


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _figure(e: dict | None) -> str:
    """A figure with its 95% interval: ``0.733 [0.681, 0.785]``; ``-`` when the run lacks it."""
    if not e or e.get("mean") is None:
        return "-"
    if e.get("lo") is None:
        return f"{e['mean']:.3f}"
    return f"{e['mean']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]"


def _figures_of(result: dict) -> dict[str, dict]:
    s = result["summary"]
    if "figures" in s:
        return s["figures"]
    return {k: {"mean": s[k]} for k in OLD_FIGURES if s.get(k) is not None}


def markdown(results: list[dict]) -> str:
    """One row per run: the comparison table. Each figure with its 95% interval over items, then
    the hop telemetry and cost. A figure a run does not have (no ground-truth region, no region
    hop, another benchmark's metric) is ``-``. A run's ``protocol_group`` (``perceive eval
    compare`` labels runs measured differently) is a column when any run has one; ``unknown chars``
    appears when a run has samples whose question held characters the tokenizer does not know."""
    names: list[str] = []
    for r in results:
        names += [k for k in _figures_of(r) if k not in names]
    cols = list(TELEMETRY)
    if any(r["summary"].get("unknown_characters") for r in results):
        cols.insert(cols.index(("errors", "errors")) + 1, ("unknown chars", "unknown_characters"))
    labelled = any("protocol_group" in r for r in results)
    head = ["run", "graph", *(["protocol"] if labelled else []), *(NAMES.get(n, n) for n in names),
            *(c for c, _ in cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        figs = _figures_of(r)
        row = [r["name"], r["graph"]] + ([r.get("protocol_group", "-")] if labelled else []) + \
            [_figure(figs.get(n)) for n in names]
        lines.append("| " + " | ".join(row + [_fmt(r["summary"].get(k)) for _, k in cols]) + " |")
    return "\n".join(lines) + "\n" + categories(results, names)


def categories(results: list[dict], names: list[str]) -> str:
    """Per-category tables, one row per run and category, for the runs whose benchmark has
    categories ("" when none has)."""
    rows = [(r["name"], c, figs) for r in results for c, figs in (r["summary"].get("categories") or {}).items()]
    if not rows:
        return ""
    head = ["run", "category", "items"] + [NAMES.get(n, n) for n in names]
    lines = ["", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, c, figs in rows:
        n = next((e.get("n") for e in figs.values() if e.get("n") is not None), None)
        lines.append("| " + " | ".join([name, c, _fmt(n)] + [_figure(figs.get(m)) for m in names]) + " |")
    return "\n".join(lines) + "\n"
