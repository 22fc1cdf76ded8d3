"""The reading benchmarks in the layouts lmms-eval reads, scored by its metrics: TextVQA
(``textvqa_val``: VQA accuracy), DocVQA (``docvqa_val``: ANLS) and ChartQA (``chartqa``: relaxed
accuracy). Not multiple choice: the run's shuffle does not apply."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

from perceive.eval.benchmarks.base import Benchmark, EvalItem, ReadResult
from perceive.eval.benchmarks.rows import ImageEncoding, collect, read_table, scalars
from perceive.eval.metrics import anls_best, relaxed_correctness, vqa_accuracy, vqa_normalize

#: lmms-eval's default post-prompts
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
ONE_WORD = "\nAnswer the question with a single word."


class _Reading(Benchmark):
    """A question, its ground truths and an image (datasets' Image feature) per row."""

    #: the column of the ground truths; the columns kept in the item's fields (its id)
    answer_column = "answers"
    kept: tuple[str, ...] = ("question_id",)

    def ground_truths(self, value: Any) -> list[str] | None:
        """The answers in a row's :attr:`answer_column` (None: not a list of answers)."""
        return [str(a) for a in value] if isinstance(value, list) else None

    def prompt(self, rec: dict[str, Any]) -> str:
        raise NotImplementedError

    def category(self, rec: dict[str, Any]) -> str | None:
        return None

    def read(self, path: Path, *, shuffle: bool, seed: int, split: str | None = None) -> ReadResult:
        required = ("question", self.answer_column)
        table = read_table(path, benchmark=self.name, required=required, image_column="image",
                           encoding=ImageEncoding.HF_IMAGE, split=split)

        def build(row: int, rec: dict[str, Any]) -> EvalItem | list[str]:
            answers = self.ground_truths(rec[self.answer_column])
            if answers is None:
                return [f"its {self.answer_column} is not a list of answers"]
            category = self.category(rec)
            fields = scalars(rec, self.kept) | ({"category": category} if category else {})
            return EvalItem(index=row, question=self.prompt(rec), answers=answers, load=table.image(row),
                            category=category, fields=fields)

        return collect(table, build, required)


class TextVQA(_Reading):
    """TextVQA (``lmms-lab-encoder/textvqa``): ``question``, ``answers`` (10 human answers),
    ``question_id``, ``image``. Scored by VQA accuracy (:func:`~perceive.eval.metrics.vqa_accuracy`);
    ``extracted`` is the answer as normalised for the comparison."""

    name = "textvqa"
    description = "TextVQA: reading text in natural images; VQA accuracy over 10 human answers"
    metrics = ("vqa_accuracy",)
    extraction = "lmms-eval 0.7.3 textvqa EvalAIAnswerProcessor"

    def prompt(self, rec: dict[str, Any]) -> str:
        return rec["question"].capitalize() + SHORT_ANSWER

    def score(self, prediction: str, item: EvalItem) -> dict[str, Any]:
        p = prediction.strip()
        return {"vqa_accuracy": vqa_accuracy(p, item.answers), "extracted": vqa_normalize(p) or None}


class DocVQA(_Reading):
    """DocVQA (``lmms-lab-encoder/DocVQA``, config ``DocVQA``): ``question``, ``answers``,
    ``questionId``, ``image``. Scored by ANLS, the best over the answers
    (:func:`~perceive.eval.metrics.anls_best`); ``extracted`` is the answer lower-cased with its
    spaces collapsed, as compared."""

    name = "docvqa"
    description = "DocVQA: questions on document images; ANLS (threshold 0.5)"
    metrics = ("anls",)
    extraction = "lmms-eval 0.7.3 anls (lower case, spaces collapsed)"
    kept = ("questionId",)

    def prompt(self, rec: dict[str, Any]) -> str:
        return rec["question"] + SHORT_ANSWER

    def score(self, prediction: str, item: EvalItem) -> dict[str, Any]:
        p = prediction.strip()
        return {"anls": anls_best(p, item.answers), "extracted": " ".join(p.lower().split()) or None}


class ChartQASplit(str, Enum):
    """ChartQA's two kinds of question (its ``type``: ``human_test``, else augmented)."""

    HUMAN = "human"
    AUGMENTED = "augmented"


class ChartQA(_Reading):
    """ChartQA (``lmms-lab-encoder/ChartQA``, split ``test``): ``question``, ``answer``, ``type``,
    ``image``. Scored by relaxed accuracy (:func:`~perceive.eval.metrics.relaxed_correctness`);
    ``item.category`` is ``human`` (type ``human_test``) or ``augmented``."""

    name = "chartqa"
    description = "ChartQA: questions on charts; relaxed accuracy (numbers within 5%)"
    metrics = ("relaxed_accuracy",)
    extraction = "lmms-eval 0.7.3 chartqa relaxed_correctness"
    answer_column = "answer"
    kept = ("type",)

    def ground_truths(self, value: Any) -> list[str] | None:
        return [str(value)]

    def prompt(self, rec: dict[str, Any]) -> str:
        return rec["question"] + ONE_WORD

    def category(self, rec: dict[str, Any]) -> str | None:
        return (ChartQASplit.HUMAN if rec.get("type") == "human_test" else ChartQASplit.AUGMENTED).value

    def score(self, prediction: str, item: EvalItem) -> dict[str, Any]:
        p = prediction.strip()
        return {"relaxed_accuracy": relaxed_correctness(p, item.answer), "extracted": p or None}
