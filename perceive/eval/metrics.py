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


# --- The reading benchmarks' metrics as lmms-eval 0.7.3 computes them (TextVQA, DocVQA, ChartQA).
# Each takes the prediction as the evaluator hands it over (stripped) and the item's ground truth.

#: the official VQA evaluation's spelled-out numbers (EvalAI's answer processor)
_VQA_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_VQA_ARTICLES = frozenset({"a", "an", "the"})
#: characters the VQA normalisation deletes (next to a space) or turns into a space (elsewhere)
_VQA_PUNCTUATION = ';/[]"{}()=+\\_->' + "<@`,?!"
_VQA_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_VQA_DIGIT_COMMA = re.compile(r"(?<=\d)(,)+(?=\d)")
#: the contractions the VQA evaluation restores: each written form, reached from any spelling that
#: lacks exactly one of its apostrophes ("dont" -> "don't", "hed've" or "he'dve" -> "he'd've")
_VQA_CONTRACTED = (
    "ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd how'll "
    "how's isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've o'clock oughtn't shan't "
    "should've shouldn't somebody'll somebody's someone'd someone'll someone's something'd something'll "
    "that's there'd there're there's they'd they'll they're they've 'twas wasn't we've weren't what'll "
    "what're what's what've when's where'd where's where've who'd who'll who's who've why'll why're why's "
    "won't would've wouldn't y'all you'd you'll you're you've couldn't've hadn't've he'd've it'd've "
    "mightn't've she'd've shouldn't've somebody'd've someone'd've something'd've there'd've they'd've "
    "we'd've who'd've wouldn't've you'd've y'all'll y'all'd've 'ow's'at"
).split()


def _vqa_contractions() -> dict[str, str]:
    table = {}
    for form in _VQA_CONTRACTED:
        cuts = [k for k, ch in enumerate(form) if ch == "'"]
        for k in cuts:
            table[form[:k] + form[k + 1:]] = form
    # the official table maps this one the wrong way round; kept, so scores match
    table["somebody'd"] = "somebodyd"
    return table


_VQA_CONTRACTIONS = _vqa_contractions()


def vqa_normalize(text: str) -> str:
    """An answer as the official VQA evaluation compares it (EvalAI's answer processor, as
    lmms-eval applies it): lower case, no ``,`` or ``?``, punctuation deleted or spaced, periods
    not before a digit removed (the first 32 only, as the original's stray count argument does),
    numbers one to ten as digits, no articles, contractions restored."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    delete = _VQA_DIGIT_COMMA.search(text) is not None
    out = text
    for p in _VQA_PUNCTUATION:
        out = out.replace(p, "" if delete or p + " " in text or " " + p in text else " ")
    # the original passes re.UNICODE (32) where sub() takes its count
    out = _VQA_PERIOD.sub("", out, count=32)
    words = [_VQA_NUMBERS.get(w, w) for w in out.lower().split()]
    return " ".join(_VQA_CONTRACTIONS.get(w, w) for w in words if w not in _VQA_ARTICLES)


def vqa_accuracy(pred: str, answers: list[str]) -> float:
    """TextVQA's (and VQAv2's) accuracy of ``pred`` against the human ``answers`` (10 of them):
    for each answer left out in turn, ``min(1, matches among the other 9 / 3)``, averaged; after
    :func:`vqa_normalize`. With 10 answers, 1 match scores 0.3, 2 score 0.6, 3 score 0.9, 4 or
    more 1.0. No answers: 0."""
    if not answers:
        return 0.0
    p = vqa_normalize(pred)
    same = [vqa_normalize(a) == p for a in answers]
    total = sum(same)
    return sum(min(1.0, (total - s) / 3) for s in same) / len(same)


def _anls_distance(pred: str, gt: str) -> float:
    """The normalised Levenshtein distance lmms-eval's ``anls`` uses: the distance between the
    case- and space-normalised strings over the longer *raw* string's length (0 when both are empty)."""
    length = max(len(gt.upper()), len(pred.upper()))
    if length == 0:
        return 0.0
    return _levenshtein(_squash(gt), _squash(pred)) / length


def _squash(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls_best(pred: str, answers: list[str], threshold: float = 0.5) -> float:
    """DocVQA's ANLS for one question as lmms-eval computes it: ``1 - min`` over ``answers`` of the
    normalised distance (raw-length denominator), and 0 when that is below ``threshold``; a
    distance of exactly 0.5 scores 0.5. No answers: 0."""
    if not answers:
        return 0.0
    score = 1.0 - min(_anls_distance(pred, a) for a in answers)
    return 0.0 if score < threshold else score


def _chart_number(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correctness(pred: str, target: str, tolerance: float = 0.05) -> float:
    """ChartQA's relaxed correctness as lmms-eval computes it: when ``pred`` is a number and
    ``target`` a non-zero one (``"50%"`` reads 0.5), right iff ``|pred - target| / |target| <=
    tolerance`` (inclusive); otherwise the strings must be equal apart from case (so a target
    of ``"0"`` is compared as text)."""
    p, t = _chart_number(pred), _chart_number(target)
    if p is not None and t:
        return float(abs(p - t) / abs(t) <= tolerance)
    return float(pred.lower() == target.lower())
