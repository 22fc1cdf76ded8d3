"""HR-Bench 4K and 8K (``DreamMr/HR-Bench``; both versions share one layout): 200 questions, each
asked in several cycles (``cycle_category``) with the options arranged differently. Its published
score is the mean over cycles of each cycle's accuracy (the official code and lmms-eval's
``hrbench_aggregate_results``), overall and per category (``single``: FSP, ``cross``: FCP)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from perceive.eval.benchmarks.base import LETTERS, Benchmark, EvalItem, ReadResult
from perceive.eval.benchmarks.choices import answer_position, hrbench_letter, show
from perceive.eval.benchmarks.rows import ImageEncoding, collect, read_table, scalars

INSTRUCTION = "Answer the option letter directly."


def _missing_option(value: Any) -> bool:
    # lmms-eval keeps every option column that is not NaN/null (an empty string stays an option)
    return value is None or (isinstance(value, float) and math.isnan(value))


def cycle_mean(records: list[dict[str, Any]], metric: str = "accuracy") -> float | None:
    """HR-Bench's aggregate: the mean over ``cycle_category`` (a field of each record's item) of each
    cycle's mean ``metric``. Records without a value (failed samples) are left out; ``None`` when none
    has one."""
    tally: dict[Any, list[float]] = defaultdict(lambda: [0.0, 0])
    for r in records:
        value = r.get(metric)
        if value is None:
            continue
        cycle = r.get("cycle_category", (r.get("item") or {}).get("cycle_category"))
        if cycle is None:
            raise ValueError("an HR-Bench record has no cycle_category: records carry their item's fields")
        tally[cycle][0] += value
        tally[cycle][1] += 1
    return sum(total / n for total, n in tally.values()) / len(tally) if tally else None


class HRBench(Benchmark):
    """HR-Bench: ``image`` (base64), ``question``, options in columns ``A``.. (those present and
    not null), ``answer`` (a letter), ``category`` (``single``/``cross``), ``cycle_category`` and
    ``index``. The prompt is lmms-eval's (question, ``A. option`` lines in the order shown, its
    instruction). Scoring is lmms-eval's without its judge: a letter standing alone, else the one
    option text the response contains; a response with neither scores 0 (lmms-eval would ask GPT)."""

    name = "hrbench"
    description = "HR-Bench 4K/8K: multiple choice A-D on 4K/8K images; the score averages the cycles"
    metrics = ("accuracy",)
    choices = True
    extraction = "lmms-eval 0.7.3 hrbench HRBenchEval.can_infer (no judge)"

    def read(self, path: Path, *, shuffle: bool, seed: int, split: str | None = None) -> ReadResult:
        required = ("question", "answer", "category", "cycle_category", "A")
        table = read_table(path, benchmark=self.name, required=required, image_column="image",
                           encoding=ImageEncoding.BASE64, split=split)
        columns = [c for c in LETTERS if table.rows and c in table.rows[0]]

        def build(row: int, rec: dict[str, Any]) -> EvalItem | list[str]:
            keys = [c for c in columns if not _missing_option(rec[c])]
            at = answer_position(str(rec["answer"]), keys)
            if at is None:
                return [f"its answer {rec['answer']!r} is not among its options {', '.join(keys) or '(none)'}"]
            shown = show([str(rec[c]) for c in keys], at, shuffle=shuffle, seed=seed, index=row)
            prompt = f"{rec['question'].strip()}\n" + "".join(f"{line}\n" for line in shown.lines("{letter}. {text}"))
            return EvalItem(index=row, question=prompt + INSTRUCTION, answers=[shown.answer], load=table.image(row),
                            category=str(rec["category"]), options=shown.options, order=shown.order,
                            fields=scalars(rec, ("index", "category", "cycle_category")))

        return collect(table, build, ("question", "answer", "category", "cycle_category"))

    def score(self, prediction: str, item: EvalItem) -> dict[str, Any]:
        """``accuracy`` 1.0 when the letter read (:func:`~.choices.hrbench_letter` over the shown
        options) is the correct option's shown letter; ``extracted`` may be ``Z`` (a refusal)."""
        options = {LETTERS[k]: text for k, text in enumerate(item.options or [])}
        got = hrbench_letter(prediction.strip(), options)
        return {"accuracy": float(got is not None and got.lower() == item.answer.lower()), "extracted": got}

    def figures(self, records: list[dict]) -> dict[str, float | None]:
        """``accuracy``: the mean of the cycles' accuracies (per category, the run's breakdown gives
        the same aggregate over that category's records)."""
        return {"accuracy": cycle_mean(records)}
