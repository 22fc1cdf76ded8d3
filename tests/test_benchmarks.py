"""Each benchmark reader on a tiny file it wrote in the benchmark's published layout (datasets'
Image feature in parquet and arrow; base64 images for HR-Bench and MME-RealWorld): the prompts to
the character, the ground truth through the shuffle, rows left out with why, an undecodable image
failing only its own item, and each benchmark's score on answers made by hand."""

from __future__ import annotations

import base64
import io
import pickle

import pytest
from PIL import Image, ImageDraw

from perceive.errors import ConfigError, DataUnusableError, ImageError
from perceive.eval.benchmarks import BENCHMARKS, get_benchmark
from perceive.eval.benchmarks.hrbench import HRBench
from perceive.eval.benchmarks.mme_realworld import MMERealWorld, MMERealWorldLite
from perceive.eval.benchmarks.reading import ChartQA, DocVQA, TextVQA
from perceive.eval.benchmarks.vstar import VStar

datasets = pytest.importorskip("datasets")


def picture(k: int) -> Image.Image:
    """A 32x24 picture, its own colour per ``k``, with a white box drawn on it."""
    im = Image.new("RGB", (32, 24), (40 * k % 256, 90, 200))
    ImageDraw.Draw(im).rectangle((4, 4, 12, 10), fill=(255, 255, 255))
    return im


def png(k: int) -> bytes:
    buf = io.BytesIO()
    picture(k).save(buf, format="PNG")
    return buf.getvalue()


def b64(k: int) -> str:
    return base64.b64encode(png(k)).decode()


def write(path, columns: dict, features: dict | None = None):
    """``columns`` as a parquet file (or a ``save_to_disk`` folder for a path without suffix)."""
    feats = datasets.Features(features) if features else None
    ds = datasets.Dataset.from_dict(columns, features=feats)
    if path.suffix == ".parquet":
        ds.to_parquet(str(path))
    else:
        ds.save_to_disk(str(path))
    return path


# --- V* Bench

VSTAR_Q = "What is the color of the umbrella? (A) red (B) blue (C) green (D) white"
VSTAR_PROMPT = ("What is the color of the umbrella?\nA. red\nB. blue\nC. green\nD. white\n"
                "Answer with the option's letter from the given choices directly.")


def vstar_file(path):
    return write(path, {
        "image": [picture(0), picture(1), None, picture(3), {"bytes": b"not a picture", "path": None}],
        "text": [VSTAR_Q, "Is the dog on the left or right side of the cat? (A) left (B) right",
                 VSTAR_Q, "Is it here? (A) yes (B) no", VSTAR_Q],
        "label": ["B", "A", None, "E", "C"],
        "category": ["direct_attributes", "relative_position", "direct_attributes", "relative_position",
                     "direct_attributes"],
        "question_id": ["sa_1", "sa_2", "sa_3", "sa_4", "sa_5"],
    }, {"image": datasets.Image(), "text": datasets.Value("string"), "label": datasets.Value("string"),
        "category": datasets.Value("string"), "question_id": datasets.Value("string")})


def test_vstar_reads_lmms_evals_layout(tmp_path):
    got = VStar().read(vstar_file(tmp_path / "vstar.parquet"), shuffle=False, seed=0)
    assert got.total == 5
    assert got.skipped == [(2, ["no label", "no image"]), (3, ["its label 'E' is not among its options A-B"])]
    first, second, broken = got.items
    assert first.question == VSTAR_PROMPT
    assert (first.index, first.answers, first.options, first.order) == (0, ["B"], ["red", "blue", "green", "white"],
                                                                         [0, 1, 2, 3])
    assert first.category == "direct_attributes"
    assert first.fields == {"question_id": "sa_1", "category": "direct_attributes"}
    assert second.question.startswith("Is the dog on the left or right side of the cat?\nA. left\nB. right\n")
    image = first.load()
    assert (image.mode, image.size, image.getpixel((20, 20))) == ("RGB", (32, 24), (0, 90, 200))
    # an undecodable image fails its own item when asked, nothing else
    with pytest.raises(ImageError, match="row 4 of"):
        broken.load()
    assert second.load().getpixel((20, 20)) == (40, 90, 200)


def test_vstar_shuffles_per_seed_and_the_answer_follows_its_option(tmp_path):
    path = vstar_file(tmp_path / "vstar.parquet")
    bench = VStar()
    runs = [bench.read(path, shuffle=True, seed=s).items[0] for s in range(12)]
    assert bench.read(path, shuffle=True, seed=3).items[0].question == runs[3].question  # seeded
    for item in runs:
        assert item.options[ord(item.answer) - ord("A")] == "blue"
        lines = item.question.split("\n")[1:5]
        assert lines == [f"{'ABCD'[k]}. {t}" for k, t in enumerate(item.options)]
        assert bench.score(f"({item.answer})", item) == {"accuracy": 1.0, "extracted": item.answer}
    assert len({item.answer for item in runs}) > 1  # the correct letter moves with the seed


def test_vstar_scores_by_its_extraction(tmp_path):
    item = VStar().read(vstar_file(tmp_path / "vstar.parquet"), shuffle=False, seed=0).items[0]
    assert VStar().score("  B. blue\n", item) == {"accuracy": 1.0, "extracted": "B"}
    assert VStar().score("Because it is blue", item)["accuracy"] == 1.0  # lmms-eval reads B
    assert VStar().score("It is red", item) == {"accuracy": 0.0, "extracted": "D"}  # the one A-D letter
    assert VStar().score("no idea", item) == {"accuracy": 0.0, "extracted": None}


def test_arrow_files_and_save_to_disk_folders_read_alike(tmp_path):
    parquet = VStar().read(vstar_file(tmp_path / "vstar.parquet"), shuffle=True, seed=1)
    folder = vstar_file(tmp_path / "vstar")
    arrow = next(folder.glob("*.arrow"))
    for source in (folder, arrow):
        got = VStar().read(source, shuffle=True, seed=1)
        assert [i.question for i in got.items] == [i.question for i in parquet.items]
        assert got.items[1].load().tobytes() == parquet.items[1].load().tobytes()


def test_an_item_image_pickles_with_its_own_bytes(tmp_path):
    item = VStar().read(vstar_file(tmp_path / "vstar.parquet"), shuffle=False, seed=0).items[1]
    blob = pickle.dumps(item.load)
    assert len(blob) < 2000  # its image, not the table
    assert pickle.loads(blob)().tobytes() == item.load().tobytes()


def test_a_file_of_another_format_is_refused_naming_its_columns(tmp_path):
    path = write(tmp_path / "other.parquet", {"question": ["q"], "answer": ["A"], "image": [b64(0)]})
    expected = r"has no columns 'text', 'label': it is not in vstar's format \(its columns: question, answer, image\)"
    with pytest.raises(DataUnusableError, match=expected):
        VStar().read(path, shuffle=True, seed=0)


# --- HR-Bench


def hrbench_file(path):
    return write(path, {
        "index": [10, 11, 12, 13, 14, 15],
        "question": [" What is written on the sign? ", "Which is closer?", "What colour is the car?",
                     "What colour is the car?", "How many?", "How many?"],
        "answer": ["C", "A", "B", "B", "D", "A"],
        "category": ["single", "cross", "single", "single", "single", "cross"],
        "cycle_category": ["c1", "c1", "c1", "c2", "c1", "c2"],
        "A": ["STOP", "the tree", "red", "blue", "1", "1"],
        "B": ["GO", "the house", "blue", "red", "2", "2"],
        "C": ["EXIT", "the car", "green", "green", "3", "3"],
        "D": ["ENTER", "the dog", "black", "black", None, "4"],
        "image": [b64(0), b64(1), b64(2), b64(3), b64(4), "@@not base64@@"],
    })


def test_hrbench_reads_its_layout(tmp_path):
    got = HRBench().read(hrbench_file(tmp_path / "hr.parquet"), shuffle=False, seed=0)
    assert got.total == 6
    assert got.skipped == [(4, ["its answer 'D' is not among its options A, B, C"])]
    first = got.items[0]
    assert first.question == ("What is written on the sign?\nA. STOP\nB. GO\nC. EXIT\nD. ENTER\n"
                              "Answer the option letter directly.")
    assert (first.answers, first.category) == (["C"], "single")
    assert first.fields == {"index": 10, "category": "single", "cycle_category": "c1"}
    assert first.load().getpixel((20, 20)) == (0, 90, 200)
    with pytest.raises(ImageError, match="row 5 of .*not base64"):
        got.items[-1].load()


def test_hrbench_reads_a_split_of_a_folder_of_splits(tmp_path):
    one = datasets.Dataset.from_parquet(str(hrbench_file(tmp_path / "hr.parquet")))
    datasets.DatasetDict({"hrbench_4k": one.select([0]), "hrbench_8k": one.select([1, 2])}).save_to_disk(
        str(tmp_path / "hr"))
    got = HRBench().read(tmp_path / "hr", shuffle=False, seed=0, split="hrbench_8k")
    assert [i.fields["index"] for i in got.items] == [11, 12]
    with pytest.raises(DataUnusableError, match="holds the splits"):
        HRBench().read(tmp_path / "hr", shuffle=False, seed=0)


def test_hrbench_scores_judge_free(tmp_path):
    item = HRBench().read(hrbench_file(tmp_path / "hr.parquet"), shuffle=True, seed=5).items[0]
    shown = item.answer
    assert item.options[ord(shown) - ord("A")] == "EXIT"
    assert HRBench().score(f"{shown}.", item) == {"accuracy": 1.0, "extracted": shown}
    assert HRBench().score("It says exit", item) == {"accuracy": 1.0, "extracted": shown}  # the option's text
    assert HRBench().score("something else", item) == {"accuracy": 0.0, "extracted": None}  # no judge: wrong
    assert HRBench().score("Cannot determine the answer", item) == {"accuracy": 0.0, "extracted": "Z"}


def test_hrbench_score_is_the_mean_of_its_cycles(tmp_path):
    bench = HRBench()
    items = bench.read(hrbench_file(tmp_path / "hr.parquet"), shuffle=False, seed=0).items[:4]
    # rows 10, 11, 12 (cycle c1) right; row 13 (cycle c2) wrong
    answers = ["C", "A", "B", "A"]
    records = [{**bench.score(a, it), "category": it.category, "item": it.fields}
               for a, it in zip(answers, items, strict=True)]
    records.append({"accuracy": None, "category": "single", "item": {"cycle_category": "c2"}})  # a failed sample
    assert sum(r["accuracy"] for r in records[:4]) / 4 == 0.75  # the plain mean ...
    figures = bench.figures(records)
    assert figures["accuracy"] == pytest.approx(0.5)            # ... is not HR-Bench's: (1 + 0) / 2
    # a category's score is the same aggregate over its records (the run's per-category figures)
    single = bench.figures([r for r in records if r["category"] == "single"])
    cross = bench.figures([r for r in records if r["category"] == "cross"])
    assert single["accuracy"] == pytest.approx(0.5)     # c1: 2/2, c2: 0/1
    assert cross["accuracy"] == pytest.approx(1.0)      # c1 only
    # a record without a category counts once, overall
    extra = {"accuracy": 1.0, "item": {"cycle_category": "c2"}}
    assert bench.figures([*records, extra])["accuracy"] == pytest.approx((1 + 0.5) / 2)
    with pytest.raises(ValueError, match="cycle_category"):
        bench.figures([{"accuracy": 1.0}])


# --- MME-RealWorld

MME_OPTIONS = ["(A) red", "(B) blue", "(C) green", "(D) black", "(E) white"]
MME_INSTRUCTION = ("Select the best answer to the above multiple-choice question based on the image. "
                   "Respond with only the letter (A, B, C, D, or E) of the correct option.\nThe best answer is: ")


def mme_file(path):
    return write(path, {
        "index": [0, 1, 2, 3],
        "question": ["What colour is the car?", "Which lane is free?", "What is it?", "What is it?"],
        "multi-choice options": [MME_OPTIONS, ["(A) left", "(B) middle", "(C) right", "(D) none"],
                                 ["A) red", "B) blue"], ["(A) x", "(B) y", "(C) z", "(D) w"]],
        "answer": ["C", "D", "A", "E"],
        "category": ["Perception/Autonomous_Driving", "Reasoning/Autonomous_Driving", "Perception/Monitoring",
                     "Perception/Monitoring"],
        "l2-category": ["attribute/color", "intention/lane", "count", "count"],
        "bytes": [b64(0), b64(1), b64(2), b64(3)],
    })


def test_mme_realworld_reads_its_layout(tmp_path):
    got = MMERealWorld().read(mme_file(tmp_path / "mme.parquet"), shuffle=False, seed=0)
    assert got.skipped == [(2, ["its multi-choice options are not lines '(A) text'"]),
                           (3, ["its answer 'E' is not among its options A, B, C, D"])]
    first, second = got.items
    assert first.question == ("What colour is the car? The choices are listed below:\n" + "\n".join(MME_OPTIONS)
                              + "\n" + MME_INSTRUCTION)
    assert (first.answers, first.category) == (["C"], "Autonomous_Driving")
    assert first.fields == {"index": 0, "category": "Perception/Autonomous_Driving", "task": "Perception",
                            "l2_category": "attribute/color"}
    assert second.fields["task"] == "Reasoning"
    assert second.load().size == (32, 24)


def test_mme_realworld_shuffled_options_are_relettered(tmp_path):
    item = MMERealWorld().read(mme_file(tmp_path / "mme.parquet"), shuffle=True, seed=2).items[0]
    lines = item.question.split("\n")[1:6]
    assert lines == [f"({'ABCDE'[k]}) {t}" for k, t in enumerate(item.options)]
    assert sorted(item.options) == ["black", "blue", "green", "red", "white"]
    assert item.options[ord(item.answer) - ord("A")] == "green"
    assert MMERealWorld().score(f"The best answer is {item.answer}", item) == {"accuracy": 1.0,
                                                                               "extracted": item.answer}
    wrong = "A" if item.answer != "A" else "B"
    assert MMERealWorld().score(wrong.lower(), item) == {"accuracy": 0.0, "extracted": wrong}


def test_mme_realworld_lite_reads_the_same_layout(tmp_path):
    bench = get_benchmark("mme_realworld_lite")
    assert isinstance(bench, MMERealWorldLite) and bench.name == "mme_realworld_lite"
    assert len(bench.read(mme_file(tmp_path / "lite.parquet"), shuffle=False, seed=0).items) == 2


# --- TextVQA, DocVQA, ChartQA

IMAGE = {"image": datasets.Image()}


def test_textvqa(tmp_path):
    answers = ["nikon"] * 3 + ["canon"] * 7
    path = write(tmp_path / "textvqa.parquet", {
        "question": ["what does the NIKON sign say?", "what is it?"], "answers": [answers, []],
        "question_id": [34602, 34603], "image": [picture(0), picture(1)]}, None)
    got = TextVQA().read(path, shuffle=True, seed=0)
    assert got.skipped == [(1, ["no answers"])]
    item = got.items[0]
    # str.capitalize lower-cases the rest, as lmms-eval's prompt does
    assert item.question == "What does the nikon sign say?\nAnswer the question using a single word or phrase."
    assert (item.answers, item.options, item.fields) == (answers, None, {"question_id": 34602})
    assert TextVQA().score(" Nikon.", item) == {"vqa_accuracy": pytest.approx(0.9), "extracted": "nikon"}
    assert TextVQA().score("canon", item)["vqa_accuracy"] == 1.0
    assert TextVQA().score("", item) == {"vqa_accuracy": 0.0, "extracted": None}


def test_docvqa(tmp_path):
    path = write(tmp_path / "docvqa.parquet", {
        "question": ["What is the date?"], "answers": [["1/2/2003", "January 2, 2003"]],
        "questionId": [49153], "image": [picture(0)]},
        {**IMAGE, "question": datasets.Value("string"), "answers": datasets.List(datasets.Value("string")),
         "questionId": datasets.Value("int64")})
    item = DocVQA().read(path, shuffle=True, seed=0).items[0]
    assert item.question == "What is the date?\nAnswer the question using a single word or phrase."
    assert item.fields == {"questionId": 49153}
    assert DocVQA().score("January 2, 2003", item) == {"anls": 1.0, "extracted": "january 2, 2003"}
    assert DocVQA().score("1/2/2008", item)["anls"] == pytest.approx(1 - 1 / 8)
    assert DocVQA().score("unknown", item)["anls"] == 0.0


def test_chartqa(tmp_path):
    path = write(tmp_path / "chartqa.parquet", {
        "question": ["How many sold?", "Which is largest?"], "answer": ["100", "Asia"],
        "type": ["human_test", "augmented_test"], "image": [picture(0), picture(1)]},
        {**IMAGE, "question": datasets.Value("string"), "answer": datasets.Value("string"),
         "type": datasets.Value("string")})
    human, augmented = ChartQA().read(path, shuffle=True, seed=0).items
    assert human.question == "How many sold?\nAnswer the question with a single word."
    assert (human.category, augmented.category) == ("human", "augmented")
    assert human.fields == {"type": "human_test", "category": "human"}
    assert ChartQA().score("105", human) == {"relaxed_accuracy": 1.0, "extracted": "105"}
    assert ChartQA().score("105.01", human)["relaxed_accuracy"] == 0.0
    assert ChartQA().score("asia", augmented)["relaxed_accuracy"] == 1.0


# --- By name


def test_benchmarks_by_name_and_alias():
    assert BENCHMARKS["vstar_bench"] is VStar and BENCHMARKS["hrbench_8k"] is HRBench
    assert isinstance(get_benchmark("hrbench_4k"), HRBench)
    for name, cls in BENCHMARKS.items():
        assert cls.metrics and cls.description and (cls.extraction or name == "paper"), name
    with pytest.raises(ConfigError, match=r"unknown benchmark 'vstarbench' \(did you mean 'vstar_bench'\?\): "
                                          "known are chartqa, docvqa"):
        get_benchmark("vstarbench")
