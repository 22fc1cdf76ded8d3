"""HR-Bench 4K and 8K (``DreamMr/HR-Bench``; both versions share one layout): 200 questions, each
asked in several cycles (``cycle_category``) with the options arranged differently. Its published
score is the mean over cycles of each cycle's accuracy (the official code and lmms-eval's
``hrbench_aggregate_results``), overall and per category (``single``: FSP, ``cross``: FCP)."""

from __future__ import annotations

import math
from collections import defaultdict
from enum import Enum
from pathlib import Path
from typing import Any

from perceive.eval.benchmarks.base import LETTERS, Benchmark, EvalItem, ReadResult
from perceive.eval.benchmarks.choices import answer_position, hrbench_letter, show
from perceive.eval.benchmarks.rows import ImageEncoding, collect, read_table, scalars

INSTRUCTION = "Answer the option letter directly."


class HRBenchCategory(str, Enum):
    """HR-Bench's two kinds of question."""

    SINGLE = "single"  # fine-grained single-instance perception (FSP)
    CROSS = "cross"    # fine-grained cross-instance perception (FCP)


def _missing_option(value: Any) -> bool:
    # lmms-eval keeps every option column that is not NaN/null (an empty string stays an option)
    return value is None or (isinstance(value, float) and math.isnan(value))


def _field(record: dict[str, Any], key: str) -> Any:
    """A record's ``key``: on the record, or among its item's fields (``item`` or ``fields``)."""
    if key in record:
        return record[key]
    for nest in ("item", "fields"):
        if isinstance(record.get(nest), dict) and key in record[nest]:
            return record[nest][key]
    return None


def cycle_means(records: list[dict[str, Any]], metric: str = "accuracy") -> dict[str | None, float]:
    """HR-Bench's aggregate in one pass: for all records (key None) and for each category, the
    mean over ``cycle_category`` of each cycle's mean ``metric``. Records without a value (failed
    samples) are left out; a key none of whose records has one is absent."""
    tally: dict[tuple[str | None, Any], list[float]] = defaultdict(lambda: [0.0, 0])
    for r in records:
        value = r.get(metric)
        if value is None:
            continue
        cycle = _field(r, "cycle_category")
        if cycle is None:
            raise ValueError("an HR-Bench record has no cycle_category: records carry their item's fields")
        category = _field(r, "category")
        for key in (None,) if category is None else (None, str(category)):
            t = tally[(key, cycle)]
            t[0] += value
            t[1] += 1
    per_key: dict[str | None, list[float]] = defaultdict(list)
    for (key, _), (total, n) in tally.items():
        per_key[key].append(total / n)
    return {key: sum(means) / len(means) for key, means in per_key.items()}


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
        """``accuracy``: the mean of the cycles' accuracies; ``accuracy/<category>``: the same over
        that category's records (``single``, ``cross``, and any other category the file has)."""
        means = cycle_means(records)
        cats = [c.value for c in HRBenchCategory]
        cats += sorted(c for c in means if c is not None and c not in cats)
        return {"accuracy": means.get(None), **{f"accuracy/{c}": means.get(c) for c in cats}}
