"""MME-RealWorld and its Lite set in the layout lmms-eval reads
(``yifanzhang114/MME-RealWorld-Lmms-eval``, ``...-lite-lmms-eval``): multiple choice A-E on
high-resolution real-world images, in five domains (Monitoring, Autonomous_Driving, OCR with
Complex Context, Diagram and Table, Remote Sensing), Perception and Reasoning tasks."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

from perceive.eval.benchmarks.base import Benchmark, EvalItem, ReadResult, letter
from perceive.eval.benchmarks.choices import Shown, answer_position, listed_options, mme_realworld_letter, show
from perceive.eval.benchmarks.rows import ImageEncoding, collect, read_table, scalars

OPTIONS = "multi-choice options"
INSTRUCTION = ("Select the best answer to the above multiple-choice question based on the image. "
               "Respond with only the letter (A, B, C, D, or E) of the correct option.\nThe best answer is: ")


class MMETask(str, Enum):
    """MME-RealWorld's top level, read from its ``category`` as lmms-eval reads it."""

    PERCEPTION = "Perception"
    REASONING = "Reasoning"

    @classmethod
    def of(cls, category: str) -> MMETask:
        return cls.PERCEPTION if "perception" in category.lower() else cls.REASONING


def option_lines(shown: Shown, file_lines: list[str], letters: list[str]) -> list[str]:
    """The ``(X) text`` lines shown: a file line as written where its option keeps its letter
    (so an unshuffled item's prompt is lmms-eval's to the character), else relettered."""
    return [file_lines[at] if letters[at] == letter(k) else f"({letter(k)}) {text}"
            for k, (at, text) in enumerate(zip(shown.order, shown.options, strict=True))]


class MMERealWorld(Benchmark):
    """MME-RealWorld: ``bytes`` (base64 image), ``question``, ``multi-choice options`` (lines
    ``(A) text``), ``answer`` (a letter A-E), ``category``, ``l2-category`` and ``index``. The
    prompt is lmms-eval's mme_realworld_doc_to_text, with the options in the order shown.
    ``item.category`` is the domain (the last part of ``category``); ``fields`` keep
    ``category``, ``l2_category`` and ``task`` (Perception or Reasoning)."""

    name = "mme_realworld"
    description = "MME-RealWorld: multiple choice A-E on high-resolution real-world images"
    metrics = ("accuracy",)
    choices = True
    extraction = "lmms-eval 0.7.3 mme_realworld extract_characters_regex"

    def read(self, path: Path, *, shuffle: bool, seed: int, split: str | None = None) -> ReadResult:
        required = ("question", OPTIONS, "answer", "category")
        table = read_table(path, benchmark=self.name, required=required, image_column="bytes",
                           encoding=ImageEncoding.BASE64, split=split)

        def build(row: int, rec: dict[str, Any]) -> EvalItem | list[str]:
            pairs = listed_options(rec[OPTIONS]) if isinstance(rec[OPTIONS], list) else None
            if not pairs:
                return [f"its {OPTIONS} are not lines '(A) text'"]
            letters = [k for k, _ in pairs]
            at = answer_position(str(rec["answer"]), letters)
            if at is None:
                return [f"its answer {rec['answer']!r} is not among its options {', '.join(letters)}"]
            shown = show([t for _, t in pairs], at, shuffle=shuffle, seed=seed, index=row)
            lines = option_lines(shown, [str(x) for x in rec[OPTIONS]], letters)
            prompt = f"{rec['question']} The choices are listed below:\n" + "\n".join(lines) + "\n" + INSTRUCTION
            category = str(rec["category"])
            fields = {**scalars(rec, ("index", "category")), "task": MMETask.of(category).value}
            if isinstance(rec.get("l2-category"), str):
                fields["l2_category"] = rec["l2-category"]
            return EvalItem(index=row, question=prompt, answers=[shown.answer], load=table.image(row),
                            category=category.split("/")[-1], options=shown.options, order=shown.order,
                            fields=fields)

        return collect(table, build, required)

    def score(self, prediction: str, item: EvalItem) -> dict[str, Any]:
        """``accuracy`` as lmms-eval's aggregation counts an item right: the letter read
        (:func:`~.choices.mme_realworld_letter`) equals the answer, or contains it."""
        got = mme_realworld_letter(prediction.strip())
        answer = item.answer.lower()
        right = got is not None and (got.lower() == answer or answer in got.lower())
        return {"accuracy": float(right), "extracted": got}


class MMERealWorldLite(MMERealWorld):
    """MME-RealWorld's Lite set: the same layout, a smaller sample."""

    name = "mme_realworld_lite"
    description = "MME-RealWorld Lite: multiple choice A-E on high-resolution real-world images (a subset)"
