"""The paper's dataset layout as a benchmark (``benchmark: {name: paper}``, the default): a JSON
list of ``{"messages", "images"}`` items (vpt-paper.md §3.2). The question is the first user turn
without its placeholders and the paper's trigger prompts (the graph adds its own); the ground truth
is the last assistant turn; a second image ``path_x0,y0,x1,y1`` is the ground-truth region (root
pixels), against which each sample's first region hop is scored (crop IoU). An item's extra scalar
keys (``card_size`` from ``perceive data cards``) are kept in its ``fields``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perceive.eval.benchmarks.base import Benchmark, EvalItem, ReadResult
from perceive.eval.metrics import anls, exact_match, relaxed_accuracy

#: prompts the paper's data puts in the question; the graph adds its own
TRIGGERS = ("Identify the region that can help you answer the question, and then answer the question.",
            "Require additional perception features, and then answer the question.",
            "Answer the question using a single word or phrase",
            "Answer with the option's letter from the given choices directly")


def question_of(text: str) -> str:
    """A paper item's question: its first user turn without placeholders and trigger prompts."""
    from perceive.data.dataset import placeholders

    q = text
    for ph in placeholders().values():
        q = q.replace(ph, "")
    for t in TRIGGERS:
        q = q.replace(t, "")
    return q.strip()


def item_fields(item: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """An item's extra scalar keys (``card_size``, a category, a source id): every key whose value
    is a string, number or boolean. ``messages`` and the image lists are lists, so never among them."""
    return {key: v for key, v in item.items() if isinstance(v, (str, int, float, bool))}


class Paper(Benchmark):
    name = "paper"
    description = "the VPT paper's layout: a JSON list of {messages, images} items (perceive data cards writes it)"
    metrics = ("exact_match", "anls", "relaxed_accuracy")
    extraction = "whole response, lower-cased, spaces collapsed, trailing period dropped"
    spans = True

    def read(self, path: Path, *, shuffle: bool = False, seed: int = 0, split: str | None = None) -> ReadResult:
        from perceive.data.dataset import VPTDataset, split_crop
        from perceive.data.skipped import Skipped

        ds = VPTDataset(path)
        items = []
        for k, (index, raw) in enumerate(ds.items):
            refs = [str(r) for r in raw.get("images") or []]
            fields = item_fields(raw)
            items.append(EvalItem(index=index, question=question_of(raw["messages"][0]["content"]),
                                  answers=[raw["messages"][-1]["content"]],
                                  load=lambda k=k: ds[k].images["images"][0], example=lambda k=k: ds[k],
                                  category=str(fields["category"]) if "category" in fields else None,
                                  box=split_crop(refs[1])[1] if len(refs) > 1 else None, fields=fields))
        skipped = Skipped.of(ds)  # an item with several problems is one skipped item
        return ReadResult(items, skipped.total, skipped.items, root=skipped.root, listing=None)

    def score(self, prediction: str, item: EvalItem) -> dict[str, Any]:
        gt = item.answer
        return {"exact_match": exact_match(prediction, gt), "anls": anls(prediction, gt),
                "relaxed_accuracy": relaxed_accuracy(prediction, gt), "extracted": prediction}

