"""`perceive data cards --large-cards SHARE --large-card-widths LO HI`: a mixed set of small cards
(unreadable in a 112x112 first view) and large ones (readable there), each item naming its size."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from perceive.data.cards import (
    CANVAS,
    GRID,
    LARGE_WIDTHS,
    WIDTHS,
    CardSize,
    card_width,
    generate,
    make_card,
    photos_for,
)
from perceive.data.dataset import DatasetError, VPTDataset

FIRST_VIEW = 112  # models/default sees the 448 canvas at 112x112 (docs/models/default.md)
PATCH = 14  # its vision tower's patch, in px of the view
TASK_FILES = ("plain", "region", "locate", "read_card", "read", "reencode")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """40 held-out cards, half of them large by a seeded coin."""
    return generate(tmp_path_factory.mktemp("mixed"), 40, seed=5, split="eval", large_share=0.5)


def _cards(folder):
    return json.loads((folder / "cards.json").read_text())


def test_the_share_of_large_cards_is_as_asked_and_each_is_in_its_range(mixed):
    cards = _cards(mixed)["cards"]
    large = [c for c in cards if c["card_size"] == "large"]
    # binomial(40, 0.5): mean 20, sd 3.2; 10..30 is beyond 3 sd either side
    assert 10 <= len(large) <= 30
    for c in cards:
        x0, y0, x1, y1 = c["box"]
        lo, hi = LARGE_WIDTHS if c["card_size"] == "large" else WIDTHS
        assert lo <= x1 - x0 <= hi and y1 - y0 == round(0.6 * (x1 - x0))
        assert 0 <= x0 and x1 <= CANVAS and 0 <= y0 and y1 <= CANVAS


def test_every_item_and_the_metadata_record_the_card_size(mixed):
    data = _cards(mixed)
    assert data["meta"]["large_share"] == 0.5 and data["meta"]["large_widths"] == list(LARGE_WIDTHS)
    sizes = [c["card_size"] for c in data["cards"]]
    assert set(sizes) == {"small", "large"}
    for name in TASK_FILES:
        items = json.loads((mixed / f"{name}.json").read_text())
        assert [it["card_size"] for it in items] == sizes, name
    ds = VPTDataset(mixed / "region.json")  # the reader keeps the extra key and flags nothing
    assert not ds.issues and len(ds) == 40
    assert ds[0].raw["card_size"] == sizes[0]


def test_a_large_cards_region_span_names_every_cell_it_touches(mixed):
    data = _cards(mixed)
    region = json.loads((mixed / "region.json").read_text())
    cell = CANVAS // GRID
    for c, item in zip(data["cards"], region, strict=True):
        if c["card_size"] != "large":
            continue
        x0, y0, x1, y1 = c["box"]
        assert c["xs"] == list(range(x0 // cell, (x1 - 1) // cell + 1))
        assert c["ys"] == list(range(y0 // cell, (y1 - 1) // cell + 1))
        assert len(c["xs"]) >= LARGE_WIDTHS[0] // cell  # a large card spans several cells
        span = item["messages"][1]["content"]
        assert (f"<|x_{min(c['xs'])}|><|y_{min(c['ys'])}|><|x_{max(c['xs'])}|><|y_{max(c['ys'])}|>" in span)


def test_the_same_seed_writes_the_same_files(tmp_path):
    a = generate(tmp_path / "a", 6, seed=9, split="eval", large_share=0.5)
    b = generate(tmp_path / "b", 6, seed=9, split="eval", large_share=0.5)
    c = generate(tmp_path / "c", 6, seed=10, split="eval", large_share=0.5)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "cards.json").read_bytes() != (c / "cards.json").read_bytes()


def test_without_large_cards_the_draws_are_those_of_the_specification():
    """No size coin is drawn at share 0: a set made without the option is the set it always was."""
    for seed in range(20):
        assert card_width(random.Random(seed)) == (random.Random(seed).randint(*WIDTHS), CardSize.SMALL)
    assert card_width(random.Random(0), large_share=1.0)[1] is CardSize.LARGE


def _digit_rows_in_first_view(img: Image.Image, box) -> int:
    """How many rows of the card's inside hold ink (grey below 128) once the canvas is shown at
    112x112 as the processor shows it (bicubic): the digits' height in px of the first view."""
    view = np.asarray(img.resize((FIRST_VIEW, FIRST_VIEW), Image.Resampling.BICUBIC).convert("L"))
    s = FIRST_VIEW / CANVAS
    x0, y0, x1, y1 = (round(v * s) for v in box)
    inside = view[y0 + 2:y1 - 2, x0 + 2:x1 - 2]  # clear of the outline
    rows = np.flatnonzero((inside < 128).any(axis=1))
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


def test_a_large_cards_digits_are_readable_in_the_first_view_and_a_small_cards_are_not():
    photos = photos_for("eval")
    # the narrowest large card by default: font round(0.55 * 144) = 79 px, ink ~0.73 of it = 58 px
    # on the canvas, 14.4 px at a quarter scale: one patch of the vision tower or more
    img, card = make_card(random.Random(1), photos, large_share=1.0, large_widths=(LARGE_WIDTHS[0],) * 2)
    assert card.card_size is CardSize.LARGE
    expected = 0.73 * round(0.55 * round(0.6 * LARGE_WIDTHS[0])) * FIRST_VIEW / CANVAS
    assert _digit_rows_in_first_view(img, card.box) >= min(PATCH, int(expected))
    # the widest card of the specification: 0.73 * 21 px / 4 = 3.8 px; bicubic leaves at most that
    img, card = make_card(random.Random(1), photos, widths=(WIDTHS[1],) * 2)
    assert card.card_size is CardSize.SMALL
    assert _digit_rows_in_first_view(img, card.box) <= 4


@pytest.mark.parametrize("args, message", [
    (["--large-cards", "1.5"], "error: the share of large cards must be between 0 and 1, got 1.5"),
    (["--large-cards", "-0.1"], "error: the share of large cards must be between 0 and 1, got -0.1"),
    (["--large-cards", "0.5", "--large-card-widths", "300", "250"], "error: large card widths (300, 250) must be"),
    (["--large-cards", "0.5", "--large-card-widths", "50", "100"], "error: large card widths (50, 100) must be"),
    (["--large-cards", "0.5", "--large-card-widths", "300", "500"], "error: large card widths (300, 500) must be"),
    (["--large-card-widths", "250", "300"], "error: --large-card-widths sets the large cards' widths, but"),
])
def test_a_bad_share_or_range_is_a_usage_error_before_anything_is_written(tmp_path, args, message):
    from typer.testing import CliRunner

    from perceive.cli import app

    res = CliRunner().invoke(app, ["data", "cards", "--n", "2", "--out", str(tmp_path / "out"), *args])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].startswith(message) and lines[1].startswith("  -> ")
    assert len(lines) == 2 and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_the_python_api_refuses_the_same_mistakes(tmp_path):
    with pytest.raises(DatasetError, match="between 0 and 1"):
        generate(tmp_path, 1, large_share=2.0)
    with pytest.raises(DatasetError, match="above 64 and at most 448"):
        generate(tmp_path, 1, large_share=0.5, large_widths=(64, 100))
    assert not (tmp_path / "images").exists()


def test_the_cli_writes_a_mixed_held_out_set(tmp_path):
    from typer.testing import CliRunner

    from perceive.cli import app

    res = CliRunner().invoke(app, ["data", "cards", "--n", "4", "--out", str(tmp_path), "--split", "eval",
                                   "--seed", "3", "--large-cards", "1", "--large-card-widths", "200", "210"])
    assert res.exit_code == 0, res.output
    cards = _cards(tmp_path)["cards"]
    assert [c["card_size"] for c in cards] == ["large"] * 4
    assert all(200 <= c["box"][2] - c["box"][0] <= 210 for c in cards)


def test_eval_keeps_the_card_size_and_compare_breaks_the_hop_rate_down_by_it(tmp_path):
    """The when-to-look figure: hop rate per card size, from `perceive eval compare RUN --by card_size`."""
    from typer.testing import CliRunner

    from perceive.cli import app
    from perceive.eval import EvalConfig, evaluate
    from perceive.testing.scripted import ScriptedPolicy, span_tokens
    from perceive.testing.tiny import tiny_vpt_model

    data = generate(tmp_path / "cards", 4, seed=3, split="eval", large_share=0.5)  # 3 large, 1 small
    cards = _cards(data)["cards"]
    assert {c["card_size"] for c in cards} == {"small", "large"}
    items = json.loads((data / "region.json").read_text())
    model = tiny_vpt_model(branches=())
    tok = model.tokenizer
    # a policy that looks at the small cards only, and answers every card right
    scripts = {i: (span_tokens(tok, items[i]["messages"][1]["content"]) if c["card_size"] == "small" else [])
               + span_tokens(tok, c["number"]) + ["<|im_end|>"] for i, c in enumerate(cards)}
    cfg = EvalConfig(model=tmp_path, data=data / "region.json", graph="free_choice", runtime={"max_new_tokens": 16},
                     output=tmp_path / "run")
    result = evaluate(cfg, model=model, policy=ScriptedPolicy(tok, scripts), progress=False)
    assert [r["item"] for r in result["records"]] == [{"card_size": c["card_size"]} for c in cards]
    res = CliRunner().invoke(app, ["eval", "compare", str(tmp_path / "run"), "--by", "card_size",
                                   "--out", str(tmp_path / "t.md")], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    rows = {row.split(" | ")[0].removeprefix("| "): row.split(" | ")
            for row in (tmp_path / "t.md").read_text().splitlines()[2:]}
    assert sorted(rows) == ["run [card_size=large]", "run [card_size=small]"]
    header = (tmp_path / "t.md").read_text().splitlines()[0].split(" | ")
    hop, em, n = header.index("hop rate"), header.index("exact match"), header.index("samples")
    n_large = sum(c["card_size"] == "large" for c in cards)
    assert rows["run [card_size=large]"][hop] == "0.000" and rows["run [card_size=small]"][hop] == "1.000"
    # a figure with its 95% interval over items: all right in both groups
    # a figure with its 95% interval over items (none for a group of one item): all right in both groups
    assert all(rows[g][em].split(" [")[0] == "1.000" for g in ("run [card_size=large]", "run [card_size=small]"))
    assert rows["run [card_size=large]"][n] == str(n_large)
    bad = CliRunner().invoke(app, ["eval", "compare", str(tmp_path / "run"), "--by", "colour"])
    assert bad.exit_code == 1 and bad.output.startswith("error: no record of the run 'run' has the item field 'colour'")
    assert CliRunner().invoke(app, ["eval", "--by", "card_size"]).exit_code == 2
