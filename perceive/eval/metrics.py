"""Answer metrics. All take a prediction and a ground truth string and return a score in [0, 1];
and the crop IoU of a trace's first region hop against an item's box."""

from __future__ import annotations

import re


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .")


def exact_match(pred: str, gt: str) -> float:
    return float(normalize(pred) == normalize(gt))


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(pred: str, gt: str, threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity (DocVQA's metric) for one pair: 1 - NL, or 0 when
    the normalised distance exceeds ``threshold``."""
    p, g = normalize(pred), normalize(gt)
    if not p and not g:
        return 1.0
    nl = _levenshtein(p, g) / max(len(p), len(g))
    return 1.0 - nl if nl < threshold else 0.0


def _number(text: str) -> float | None:
    t = normalize(text).rstrip("%")
    try:
        return float(t)
    except ValueError:
        return None


def relaxed_accuracy(pred: str, gt: str, tolerance: float = 0.05) -> float:
    """ChartQA's relaxed accuracy: numbers within 5% of the truth count; otherwise exact match."""
    p, g = _number(pred), _number(gt)
    if p is not None and g is not None:
        return float(p == g if g == 0 else abs(p - g) / abs(g) <= tolerance)
    return exact_match(pred, gt)


#: actions whose hop box is where the model looked (crop IoU)
REGION_ACTIONS = ("region_select", "zoom")


def crop_iou(trace, box, no_hop: float | None = None) -> float | None:
    """IoU of ``trace``'s first region hop's box with ``box`` (root pixels ``[x0, y0, x1, y1]``);
    ``no_hop`` when the trace has no region hop (eval: None, nothing to score; a reward: 0), None
    without a ``box``."""
    from perceive.geometry import Box

    if box is None:
        return None
    hops = [h for h in trace.hops if h.box and h.action in REGION_ACTIONS]
    return Box.from_dict(hops[0].box).iou(Box(*box)) if hops else no_hop
