"""Multiple-choice items: the options parsed from each benchmark's layout, shown in a seeded
shuffled order (the correct letter follows its option), and the letter read back from a response
by each benchmark's own rule, as lmms-eval 0.7.3 reads it (judge-free)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from perceive.eval.benchmarks.base import LETTERS, letter, shuffled

# --- Options in the benchmarks' layouts

#: V* Bench's options inside its ``text``: ``(A) red (B) blue ...`` (lmms-eval's vstar_doc_to_text)
_INLINE_OPTION = re.compile(r"\([A-D]\)\s*([^()]+?)(?=\s*\([A-D]\)|$)")
#: one MME-RealWorld option line, ``(A) text`` (full-width brackets too, as its data sometimes has)
_LISTED_OPTION = re.compile(r"\s*[(（]([A-Z])[)）]\s*(.*)", re.S)


def inline_options(text: str) -> tuple[str, list[str]]:
    """V* Bench's ``text`` as its question (the text before ``(A)``, stripped) and its option texts
    (stripped, at most four: A-D). No options: the whole text and ``[]``."""
    found = _INLINE_OPTION.findall(text)
    if not found:
        return text, []
    return text.split("(A)")[0].strip(), [o.strip() for o in found[:4]]


def listed_options(lines: list[str]) -> list[tuple[str, str]] | None:
    """MME-RealWorld's option lines as ``(letter, text)`` pairs; None when a line is not
    ``(X) text``."""
    out = []
    for line in lines:
        m = _LISTED_OPTION.fullmatch(str(line))
        if m is None:
            return None
        out.append((m.group(1), m.group(2).strip()))
    return out


def answer_position(answer: str, letters: list[str]) -> int | None:
    """Where the answer letter ``answer`` is among the item's option ``letters`` (None: not there)."""
    a = answer.strip().upper()
    return letters.index(a) if a in letters else None


@dataclass(frozen=True)
class Shown:
    """An item's options as the model sees them: ``options`` (texts, shown order), ``order``
    (``order[k]``: the file position of shown option ``k``) and ``answer`` (the shown letter of
    the correct option)."""

    options: list[str]
    order: list[int]
    answer: str

    @property
    def letters(self) -> list[str]:
        return [letter(k) for k in range(len(self.options))]

    def lines(self, template: str) -> list[str]:
        """One line per shown option: ``template`` with ``{letter}`` and ``{text}``."""
        return [template.format(letter=letter(k), text=t) for k, t in enumerate(self.options)]


def show(options: list[str], answer: int, *, shuffle: bool, seed: int, index: int) -> Shown:
    """``options`` (file order, the correct one at ``answer``) as shown for item ``index``:
    shuffled by ``(seed, index)`` when ``shuffle``, else in the file's order."""
    texts, order, at = shuffled(options, answer, shuffle=shuffle, seed=seed, index=index)
    return Shown(texts, order, letter(at))


# --- Reading the letter back (each benchmark's rule; None: nothing read)

_VSTAR_RULES = [re.compile(p, re.IGNORECASE) for p in (
    r"^([A-D])\s*[\.)\]]*",                                         # starts with the letter
    r"(?:THE\s+)?(?:ANSWER|CHOICE|OPTION)(?:\s+IS)?[\s:]+([A-D])",  # "the answer is C", "option: C"
    r"\(([A-D])\)",                                                 # "(C)"
    r"([A-D])\s*(?:\.|\)|])",                                       # "C." "C)" "C]"
    r"(?:^|\s)([A-D])(?:\s|$)",                                     # a lone C
)]


def vstar_letter(response: str) -> str | None:
    """V* Bench's letter (lmms-eval's extract_answer_letter): on the upper-cased, stripped response,
    the first of its five patterns that matches, else the one A-D letter if there is exactly one.
    The response is upper-cased first, so any response starting with A-D reads as that letter
    ("Because ..." reads B, "Answer: C" reads A)."""
    text = response.strip().upper()
    for rule in _VSTAR_RULES:
        m = rule.search(text)
        if m:
            return m.group(1).upper()
    found = re.findall(r"[A-D]", text)
    # (the original's last fallback, a first character in A-D, is unreachable past the first pattern)
    return found[0] if len(found) == 1 else None


#: answers HR-Bench's rule reads as a refusal (the letter Z, never right)
_HRBENCH_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
                     "I'm sorry, but without the image provided", "Cannot determine the answer")
_HRBENCH_SEPARATORS = str.maketrans({c: " " for c in ".()[],:;!*#{}"})


def hrbench_letter(response: str, options: dict[str, str]) -> str | None:
    """HR-Bench's letter without its judge (lmms-eval's HRBenchEval.can_infer): a refusal reads
    ``Z``; else the one option letter that stands as a word (``.()[],:;!*#{}`` count as spaces),
    or ``Z`` standing alone when no option letter does; else the one option whose text (any case)
    the response contains. ``options``: letter -> text, as shown. None: nothing read (where
    lmms-eval would ask its judge)."""
    if "Failed to obtain answer via API" not in response:
        if any(r in response for r in _HRBENCH_REFUSALS):
            return "Z"
        words = response.translate(_HRBENCH_SEPARATORS).split()
        named = [k for k in options if k in words]
        if len(named) == 1:
            return named[0]
        if not named and "Z" in words:
            return "Z"
    low = response.lower()
    within = [k for k, text in options.items() if str(text).lower() in low]
    return within[0] if len(within) == 1 else None


_MME_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                 "The best option is", "The correct option is", "Best answer:", "Best option:")


def mme_realworld_letter(response: str) -> str | None:
    """MME-RealWorld's letter (lmms-eval's extract_characters_regex): with its answer prefixes
    removed (exact case), nothing from a response of more than 10 words without a capital A-E;
    else the first capital A-E anywhere ("Based on ..." reads B); else, where the remaining
    text (any case) is part of one of the literal ``(A)``..``(E)``, that letter: so ``"b"``
    reads B, and an empty response reads A, as lmms-eval reads it."""
    s = response.strip()
    for prefix in _MME_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCDE]", s):
        return None
    m = re.search("[ABCDE]", s)
    if m:
        return m.group(0)
    return next((c for c in LETTERS[:5] if s.lower() in f"({c})".lower()), None)
