"""V* Bench in the layout lmms-eval's ``vstar_bench`` task reads (``lmms-lab-encoder/vstar-bench``,
191 questions in two categories, ``direct_attributes`` and ``relative_position``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perceive.eval.benchmarks.base import LETTERS, Benchmark, EvalItem, ReadResult
from perceive.eval.benchmarks.choices import answer_position, inline_options, show, vstar_letter
from perceive.eval.benchmarks.rows import ImageEncoding, collect, read_table, scalars

#: lmms-eval's default post_prompt for vstar_bench
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."


class VStar(Benchmark):
    """V* Bench: ``image`` (datasets' Image feature), ``text`` (the question with its options
    inline, ``(A) ... (B) ...``), ``label`` (the answer letter), ``category`` and
    ``question_id``. The prompt is lmms-eval's: the question, one ``A. option`` line per option
    (in the order shown), then its default post-prompt. The file's options are already in a
    shuffled order (DeepEyes PR #66); perceive shuffles again per run seed unless told not to."""

    name = "vstar"
    description = "V* Bench (lmms-eval vstar_bench layout): multiple choice A-D on high-resolution images"
    metrics = ("accuracy",)
    choices = True
    extraction = "lmms-eval 0.7.3 vstar_bench extract_answer_letter"

    def read(self, path: Path, *, shuffle: bool, seed: int, split: str | None = None) -> ReadResult:
        table = read_table(path, benchmark=self.name, required=("text", "label"), image_column="image",
                           encoding=ImageEncoding.HF_IMAGE, split=split)

        def build(row: int, rec: dict[str, Any]) -> EvalItem | list[str]:
            question, options = inline_options(rec["text"])
            if not options:
                return ["no options '(A) ... (B) ...' in its text"]
            at = answer_position(str(rec["label"]), list(LETTERS[:len(options)]))
            if at is None:
                return [f"its label {rec['label']!r} is not among its options A-{LETTERS[len(options) - 1]}"]
            shown = show(options, at, shuffle=shuffle, seed=seed, index=row)
            prompt = question + "\n" + "\n".join(shown.lines("{letter}. {text}")) + POST_PROMPT
            category = rec.get("category") if isinstance(rec.get("category"), str) else None
            return EvalItem(index=row, question=prompt, answers=[shown.answer], load=table.image(row),
                            category=category, options=shown.options, order=shown.order,
                            fields=scalars(rec, ("question_id", "category")))

        return collect(table, build, ("text", "label"))

    def score(self, prediction: str, item: EvalItem) -> dict[str, Any]:
        """``accuracy`` 1.0 when the letter read (:func:`~.choices.vstar_letter`) is the shown
        letter of the correct option."""
        got = vstar_letter(prediction.strip())
        return {"accuracy": float(got == item.answer), "extracted": got}
