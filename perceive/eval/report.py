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


def summarize(records: list[dict], judged: bool = False, wall_s: float | None = None) -> dict[str, Any]:
    """The run's figures from its records (one per sample, in any order). ``judged``: an LLM judge
    scored the samples (a ``judge`` of ``None`` is a failed request, counted apart). ``wall_s``:
    the seconds the samples took together (throughput's denominator)."""
    n = len(records)

    def mean(key):
        vals = [r[key] for r in records if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    actions: dict[str, int] = {}
    for r in records:
        for a in r["actions"]:
            actions[a] = actions.get(a, 0) + 1
    latency = [r["latency_ms"] for r in records if r.get("latency_ms") is not None]
    s = {"samples": n, "exact_match": mean("exact_match"), "anls": mean("anls"),
         "relaxed_accuracy": mean("relaxed_accuracy"),
         "samples_with_a_hop": sum(1 for r in records if r["hops"]) / n if n else 0.0,
         # over the samples whose first region hop was scored: None (shown "-") when none made one
         "action_counts": actions, "crop_iou": mean("crop_iou"),
         "errors": sum(1 for r in records if r["error"]),
         "unknown_characters": sum(1 for r in records if TOKENIZER_EVENT in r.get("events", ())),
         "tokens_per_sample": mean("generated_tokens"),
         "latency_ms_mean": statistics.fmean(latency) if latency else None,
         "latency_ms_p50": percentile(latency, 50), "latency_ms_p95": percentile(latency, 95),
         "throughput_samples_per_s": n / wall_s if wall_s else None,
         "seconds": wall_s}
    if judged:
        s["judge"] = mean("judge")
        s["judge_failures"] = sum(1 for r in records if r.get("judge") is None)
    return s


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
    return [{**result, "name": f"{result['name']} [{key}={value}]", "records": records, "summary": summarize(records)}
            for value, records in sorted(groups.items())]


COLUMNS = [("exact match", "exact_match"), ("ANLS", "anls"), ("relaxed acc.", "relaxed_accuracy"),
           ("hop rate", "samples_with_a_hop"), ("crop IoU", "crop_iou"), ("tokens/sample", "tokens_per_sample"),
           ("latency mean ms", "latency_ms_mean"), ("latency p50 ms", "latency_ms_p50"),
           ("latency p95 ms", "latency_ms_p95"), ("samples/s", "throughput_samples_per_s"),
           ("errors", "errors"), ("samples", "samples"), ("skipped", "skipped")]


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def markdown(results: list[dict]) -> str:
    """One row per run: the comparison table. A figure a run does not have (no ground-truth
    region, no region hop, an older run's eval.json) is ``-``. The judge column appears when a run
    was judged; ``unknown chars`` when a run has samples whose question held characters the
    tokenizer does not know."""
    cols = list(COLUMNS)
    if any("judge" in r["summary"] for r in results):
        cols.insert(3, ("judge", "judge"))
    if any(r["summary"].get("unknown_characters") for r in results):
        cols.insert(cols.index(("errors", "errors")) + 1, ("unknown chars", "unknown_characters"))
    lines = ["| run | graph | " + " | ".join(c for c, _ in cols) + " |", "|" + " --- |" * (len(cols) + 2)]
    for r in results:
        s = r["summary"]
        lines.append(f"| {r['name']} | {r['graph']} | " + " | ".join(_fmt(s.get(k)) for _, k in cols) + " |")
    return "\n".join(lines) + "\n"
