"""The benchmarks' own scoring rules, on hand-made answers: the reading metrics (VQA accuracy, ANLS,
relaxed accuracy) as lmms-eval computes them, each multiple-choice benchmark's letter extraction
(with the pitfalls it inherits), and the option shuffle."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perceive.eval.benchmarks.choices import (
    answer_position,
    hrbench_letter,
    inline_options,
    listed_options,
    mme_realworld_letter,
    show,
    vstar_letter,
)
from perceive.eval.metrics import anls_best, relaxed_correctness, vqa_accuracy, vqa_normalize

# --- TextVQA: VQA accuracy, leave-one-out over 10 answers


@pytest.mark.parametrize(("matches", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_counts_each_answer_left_out(matches, expected):
    answers = ["red"] * matches + ["blue"] * (10 - matches)
    assert vqa_accuracy("red", answers) == pytest.approx(expected)


def test_vqa_accuracy_compares_normalised_answers():
    # "Two dogs." and "2 dogs" normalise alike; "the" and "a" go; "dont" gains its apostrophe
    assert vqa_normalize("Two dogs.") == vqa_normalize("2 dogs") == "2 dogs"
    assert vqa_normalize("The Coca-Cola") == "coca cola"
    assert vqa_normalize("a dont") == "don't"
    assert vqa_normalize("what's  up?") == "what 's up"
    assert vqa_normalize("3.5") == "3.5"       # a period before a digit stays
    assert vqa_normalize("1,000") == "1000"
    assert vqa_accuracy("Two", ["2", "2", "2", "two", "3", "3", "3", "3", "3", "3"]) == pytest.approx(1.0)
    assert vqa_accuracy("anything", []) == 0.0


# --- DocVQA: ANLS, best over the answers, raw-length denominator


def test_anls_near_misses():
    assert anls_best("hallo", ["hello"]) == pytest.approx(0.8)          # 1 edit in 5
    assert anls_best("ab", ["xy"]) == 0.0                               # every character wrong
    assert anls_best("abcd", ["abxy"]) == pytest.approx(0.5)            # distance exactly 0.5 scores 0.5
    assert anls_best("abcde", ["abxyz"]) == 0.0                         # 0.6 is past the threshold
    assert anls_best("Hello  World", ["hello world"]) == 1.0                # case and spaces do not count


def test_anls_takes_the_best_answer_and_the_raw_length():
    assert anls_best("hallo", ["xyz", "hello", "hallo!"]) == pytest.approx(1 - 1 / 6)
    # the normalised strings are equal, but the raw prediction is longer: still 1 - 0
    assert anls_best("  Paris ", ["paris"]) == 1.0
    assert anls_best("", [""]) == 1.0
    assert anls_best("x", []) == 0.0


# --- ChartQA: relaxed correctness, 5% inclusive, then exact text


@pytest.mark.parametrize(("pred", "target", "right"), [
    ("105", "100", True),        # exactly 5%: inclusive
    ("95", "100", True),
    ("105.01", "100", False),
    ("50%", "0.5", True),        # a percentage reads as its fraction
    ("50%", "50", False),        # ... so it is 0.5 against 50
    ("0", "0", True),            # a target of 0 is compared as text
    ("0.0", "0", False),
    ("Yes", "yes", True),        # text: equal apart from case
    ("1,000", "1000", False),    # not a number, so compared as text
    ("", "12", False),
])
def test_relaxed_correctness(pred, target, right):
    assert relaxed_correctness(pred, target) == float(right)


# --- V* Bench's letter


@pytest.mark.parametrize(("response", "letter"), [
    ("B", "B"), ("(c)", "C"), ("d.", "D"), ("The answer is C.", "C"), ("Option: D", "D"),
    ("I pick (B) here", "B"), ("it is c) I think", "C"),
    ("Because the car is red", "B"),   # pitfall: any response starting with A-D reads as that letter
    ("Answer: C", "A"),                # ... "ANSWER" starts with A
    ("red", "D"),                      # the one A-D letter in "RED"
    ("yes", None), ("", None),
])
def test_vstar_letter(response, letter):
    assert vstar_letter(response) == letter


# --- HR-Bench's letter (no judge)


OPTIONS = {"A": "red car", "B": "blue car", "C": "bus", "D": "bicycle"}


@pytest.mark.parametrize(("response", "letter"), [
    ("C", "C"), ("(C) bus", "C"), ("The answer is B.", "B"), ("**D**", "D"),
    ("It is the blue car", "B"),          # no letter: the one option text it contains
    ("A or B", None),                     # two letters: nothing (lmms-eval would ask its judge)
    ("a bus or a bicycle", None),         # two option texts
    ("Z", "Z"), ("Cannot determine the answer", "Z"),  # refusals: Z, never right
    ("I see a car", None),
])
def test_hrbench_letter(response, letter):
    assert hrbench_letter(response, OPTIONS) == letter


# --- MME-RealWorld's letter


@pytest.mark.parametrize(("response", "letter"), [
    ("E", "E"), ("The best answer is (D)", "D"), ("The answer is: C", "C"),
    ("Based on the image, C", "B"),        # pitfall: the first capital A-E anywhere
    ("b", "B"), ("(e)", "E"),              # lower case: part of the literal "(B)".."(E)"
    ("", "A"),                             # ... so an empty response reads A, as lmms-eval reads it
    ("it is not possible to tell what this one shows from here", None),  # > 10 words, no A-E
    ("no idea", None),
])
def test_mme_realworld_letter(response, letter):
    assert mme_realworld_letter(response) == letter


# --- Options in the benchmarks' layouts


def test_inline_and_listed_options():
    assert inline_options("Is it left? (A) yes (B) no") == ("Is it left?", ["yes", "no"])
    assert inline_options("no options here") == ("no options here", [])
    assert listed_options(["(A) red", "（B） blue"]) == [("A", "red"), ("B", "blue")]
    assert listed_options(["(A) red", "blue"]) is None
    assert answer_position(" b ", ["A", "B"]) == 1
    assert answer_position("E", ["A", "B"]) is None


# --- The shuffle


def test_shuffle_is_seeded_per_item_and_off_keeps_the_file_order():
    opts = ["w", "x", "y", "z"]
    assert show(opts, 2, shuffle=True, seed=3, index=7) == show(opts, 2, shuffle=True, seed=3, index=7)
    off = show(opts, 2, shuffle=False, seed=3, index=7)
    assert (off.options, off.order, off.answer) == (opts, [0, 1, 2, 3], "C")
    shown = {show(opts, 0, shuffle=True, seed=s, index=0).answer for s in range(40)}
    assert len(shown) > 1  # the correct option is not always A


@given(n=st.integers(2, 6), data=st.data(), seed=st.integers(0, 10**6), index=st.integers(0, 10**5))
def test_shuffle_is_a_permutation_and_the_answer_follows_its_option(n, data, seed, index):
    opts = [f"option {k}" for k in range(n)]
    answer = data.draw(st.integers(0, n - 1))
    shown = show(opts, answer, shuffle=True, seed=seed, index=index)
    assert sorted(shown.order) == list(range(n))
    assert shown.options == [opts[k] for k in shown.order]
    assert shown.options[shown.letters.index(shown.answer)] == opts[answer]
