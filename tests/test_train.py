"""Data layout checks, the card generator, and the trainer (including exact resume)."""

import json

import pytest
import torch
from PIL import Image

from perceive.data.cards import CANVAS, generate
from perceive.data.collate import Collator
from perceive.data.dataset import DatasetError, VPTDataset, split_crop
from perceive.model.vpt import IGNORE_INDEX
from perceive.testing.tiny import tiny_vpt_model
from perceive.train import TrainConfig, Trainer
from perceive.train.eval_log import read_evals


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("cards"), 12, seed=7)


def test_cards_follow_the_spec(cards):
    meta = json.loads((cards / "cards.json").read_text())
    for i, c in enumerate(meta["cards"]):
        img = Image.open(cards / f"images/{i:06d}.png")
        assert img.size == (CANVAS, CANVAS) and img.mode == "RGB"
        x0, y0, x1, y1 = c["box"]
        w, h = x1 - x0, y1 - y0
        assert 40 <= w <= 64 and h == round(0.6 * w) and 0 <= x0 and x1 <= CANVAS and y1 <= CANVAS
        assert len(c["number"]) == 3 and c["number"].isdigit()
        assert img.getpixel((x0, y0)) == (0, 0, 0) and img.getpixel((x0 + 3, y0 + 3)) == (255, 255, 255)
        cx0, cy0, cx1, cy1 = c["crop"]  # the selected region holds the whole card
        assert cx0 <= x0 and cy0 <= y0 and x1 <= cx1 and y1 <= cy1
    assert meta["meta"]["backgrounds"][0] in ("astronaut", "brick", "camera")  # training photos only
    region = json.loads((cards / "region.json").read_text())
    assert region[0]["messages"][1]["content"].startswith("<|region_token_start|><|x_")
    locate = json.loads((cards / "locate.json").read_text())[0]  # localisation alone: the span, no crop
    assert locate["messages"] == region[0]["messages"][:2] and locate["images"] == region[0]["images"][:1]
    assert split_crop(region[0]["images"][1]) == ("images/000000.png", tuple(meta["cards"][0]["crop"]))
    read = json.loads((cards / "read.json").read_text())  # the reading curriculum: the crop alone
    assert read[0]["images"] == [region[0]["images"][1]] and read[0]["messages"][-1]["content"] == c0(meta)
    card = json.loads((cards / "read_card.json").read_text())[0]
    assert split_crop(card["images"][0])[1] == tuple(meta["cards"][0]["box"])


def c0(meta):
    return meta["cards"][0]["number"]


def test_eval_backgrounds_are_held_out(tmp_path):
    from perceive.data.cards import EVAL_PHOTOS, TRAIN_PHOTOS

    assert not set(EVAL_PHOTOS) & set(TRAIN_PHOTOS)
    generate(tmp_path, 3, seed=1, split="eval")
    meta = json.loads((tmp_path / "cards.json").read_text())
    assert {c["background"] for c in meta["cards"]} <= set(EVAL_PHOTOS)


def test_wide_jittered_backgrounds_are_training_only_and_keep_the_card_exact(tmp_path):
    from perceive.data.cards import EVAL_PHOTOS, WIDE_PHOTOS

    assert not set(EVAL_PHOTOS) & set(WIDE_PHOTOS)
    generate(tmp_path, 6, seed=2, split="train_wide", augment=True, distractors=True)
    meta = json.loads((tmp_path / "cards.json").read_text())
    assert meta["meta"]["augment"] is meta["meta"]["distractors"] is True
    assert set(meta["meta"]["backgrounds"]) == set(WIDE_PHOTOS)
    for i, c in enumerate(meta["cards"]):  # jitter and distractors touch the background, never the card
        img = Image.open(tmp_path / f"images/{i:06d}.png")
        x0, y0, x1, y1 = c["box"]
        assert img.getpixel((x0, y0)) == (0, 0, 0) and img.getpixel((x0 + 3, y0 + 3)) == (255, 255, 255)
    for option in ("augment", "distractors"):
        with pytest.raises(ValueError, match="held-out"):
            generate(tmp_path / "e", 1, split="eval", **{option: True})
    with pytest.raises(ValueError, match="train_wide"):
        generate(tmp_path / "u", 1, split="wide")


def test_card_widths_narrow_the_range_for_training_only(tmp_path):
    generate(tmp_path, 8, seed=3, widths=(40, 42))
    meta = json.loads((tmp_path / "cards.json").read_text())
    assert meta["meta"]["widths"] == [40, 42]
    assert {x1 - x0 for x0, _, x1, _ in (c["box"] for c in meta["cards"])} <= {40, 41, 42}
    with pytest.raises(ValueError, match="held-out"):
        generate(tmp_path / "e", 1, split="eval", widths=(40, 50))
    for bad in ((30, 50), (50, 40), (40, 70)):
        with pytest.raises(ValueError, match="inside 40-64"):
            generate(tmp_path / "b", 1, widths=bad)


def test_background_jitter_is_seeded_and_changes_the_photo():
    import random

    from perceive.data.cards import jitter_background, skimage_photos

    photo = skimage_photos(["astronaut"])["astronaut"].resize((64, 64))
    a, b = (jitter_background(random.Random(5), photo) for _ in range(2))
    assert a.tobytes() == b.tobytes() and a.size == photo.size and a.mode == "RGB"
    outs = {jitter_background(random.Random(s), photo).tobytes() for s in range(6)}
    assert photo.tobytes() not in outs and len(outs) == 6


def test_distractors_are_light_blobs_painted_on_the_background():
    import random

    from perceive.data.cards import CANVAS, paste_distractors

    grey = Image.new("RGB", (CANVAS, CANVAS), (100, 100, 100))
    for seed in range(4):
        out = paste_distractors(random.Random(seed), grey)
        assert out.size == grey.size and grey.getpixel((0, 0)) == (100, 100, 100)  # the input is left alone
        light = sum(1 for v in out.convert("L").tobytes() if v >= 140)  # brightened grey: 160
        assert 24 * 24 * 0.5 <= light <= 6 * 80 * 80  # at least one blob, at most six of the largest


def test_flat_backgrounds_leave_only_the_card(tmp_path):
    generate(tmp_path, 2, seed=1, split="flat")
    meta = json.loads((tmp_path / "cards.json").read_text())
    for i, c in enumerate(meta["cards"]):
        img = Image.open(tmp_path / f"images/{i:06d}.png")
        x0, y0, x1, y1 = c["box"]
        corners = ((0, 0), (447, 447), (0, 447), (447, 0))
        outside = [img.getpixel(p) for p in corners if not (x0 <= p[0] < x1 and y0 <= p[1] < y1)]
        assert len(set(outside)) == 1 and max(outside[0]) <= 160 and c["background"].startswith("flat")


def test_margin_zero_crops_exactly_the_touched_cells(tmp_path):
    from perceive.geometry import grid_cells_to_box

    generate(tmp_path, 4, seed=3, margin=0, fmt="jpg")
    meta = json.loads((tmp_path / "cards.json").read_text())
    assert meta["meta"]["margin"] == 0
    for c in meta["cards"]:
        cells = grid_cells_to_box(set(c["xs"]), set(c["ys"]), CANVAS, CANVAS, margin=0)
        assert tuple(c["crop"]) == cells.as_int_tuple()
        x0, y0, x1, y1 = c["box"]  # the card lies inside, within one cell of each side
        assert c["crop"][0] <= x0 < c["crop"][0] + 56 and c["crop"][2] - 56 < x1 <= c["crop"][2]
    assert (tmp_path / "images/000000.jpg").exists()


def test_reading_sets_crop_around_the_card_at_a_fixed_scale(tmp_path):
    from perceive.data.cards import reading_set
    from perceive.data.mix import mix

    tight = reading_set(tmp_path / "tight", 3, seed=4, context=0, scale=2.0)
    cells = reading_set(tmp_path / "cells", 3, seed=4, context=None, scale=2.0)
    ref = generate(tmp_path / "ref", 3, seed=4, margin=0)  # the same cards, drawn the same way
    cards = json.loads((ref / "cards.json").read_text())["cards"]
    for i, c in enumerate(cards):
        cx0, cy0, cx1, cy1 = c["crop"]
        assert Image.open(cells / f"images/{i:06d}.jpg").size == (2 * (cx1 - cx0), 2 * (cy1 - cy0))
    items = json.loads((cells / "read.json").read_text())
    assert [it["messages"][1]["content"] for it in items] == [c["number"] for c in cards]
    x0, y0, x1, y1 = cards[0]["box"]  # the context draws come after the first card
    assert Image.open(tight / "images/000000.jpg").size == (2 * (x1 - x0), 2 * (y1 - y0))

    out = mix(tmp_path / "mixes/m.json", [(tight / "read.json", None), (cells / "read.json", 2)], seed=1)
    mixed = json.loads(out.read_text())
    assert len(mixed) == 5
    ds = VPTDataset(out)  # paths were rewritten relative to the mixed file: every item loads
    assert len(ds) == 5 and not ds.issues and ds[0].images["images"][0].size[0] > 0


def test_generation_is_reproducible(tmp_path):
    a, b = generate(tmp_path / "a", 3, seed=5), generate(tmp_path / "b", 3, seed=5)
    assert (a / "region.json").read_text() == (b / "region.json").read_text()
    assert (a / "images/000002.png").read_bytes() == (b / "images/000002.png").read_bytes()


def test_bad_items_are_reported_with_their_index(cards, tmp_path):
    items = json.loads((cards / "region.json").read_text())[:3]
    items[0]["messages"][1]["content"] = "<|region_token_start|><|x_0|><|y_0|><|x_8|><|y_6|><|region_token_end|>"
    items[1]["images"] = items[1]["images"][:1]  # a placeholder without its image
    items[2]["images"][0] = "images/nope.png"
    for it in items:
        it["images"] = [str(cards / p) if not p.startswith("/") else p for p in it["images"]]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(items + json.loads((cards / "plain.json").read_text())[:2]))
    ds = VPTDataset(path, root=cards)
    msgs = [str(i) for i in ds.issues]
    assert any(m.startswith("item 0:") and "<|x_8|>" in m for m in msgs)
    assert any(m.startswith("item 1:") and "2 <image> placeholder(s) but 1 entries" in m for m in msgs)
    assert any(m.startswith("item 2:") and "missing file" in m for m in msgs)
    assert len(ds) == 2
    with pytest.raises(DatasetError, match="3 problem"):
        VPTDataset(path, root=cards, policy="reject")


def test_labels_supervise_assistant_turns_and_mask_the_action_token(cards):
    model = tiny_vpt_model(branches=("dino",))
    col = Collator(model)
    tok = model.tokenizer
    region = VPTDataset(cards / "region.json")[0]
    e = col.encode(region)
    supervised = tok.decode([i for i, lab in zip(e.input_ids, e.labels, strict=True) if lab != IGNORE_INDEX])
    assert supervised == region_span_text(region) + "<|im_end|>" + region.answer + "<|im_end|>"
    assert e.image_grid_thw.shape[0] == 2  # the image and the crop
    re = col.encode(VPTDataset(cards / "reencode.json")[0])
    sup = tok.decode([i for i, lab in zip(re.input_ids, re.labels, strict=True) if lab != IGNORE_INDEX])
    assert "<|detection_action|>" not in sup and sup.startswith("<|detection_action_start|><|detection_action_end|>")
    assert re.input_ids.count(model.config.branches["dino"].pad_id) == 256


def region_span_text(ex):
    return ex.messages[1]["content"]


def config(cards, tmp_path, steps, **kw):
    return TrainConfig.model_validate({
        "model": {"tiny": {"hidden": 32, "layers": 1, "heads": 2, "kv_heads": 1, "vision_depth": 1,
                           "vision_dim": 16, "branches": []}},
        "data": {"train": str(cards / "region.json"), "eval": str(cards / "region.json"), "max_eval_samples": 4},
        "optim": {"steps": steps, "batch_size": 2, "lr": 3e-3, "seed": 11},
        "output": str(tmp_path), **kw})


@pytest.mark.slow
def test_resume_is_exact(cards, tmp_path):
    full = Trainer(config(cards, tmp_path / "full", 6), progress=False)
    full.train()
    part = Trainer(config(cards, tmp_path / "part", 6, save_every=3), progress=False)
    part.train(until=3)  # interrupted after step 3
    resumed = Trainer(config(cards, tmp_path / "part", 6), progress=False)
    resumed.train(resume=tmp_path / "part" / "checkpoint-3")
    a = [h["loss"] for h in full.history if "loss" in h]
    b = [h["loss"] for h in resumed.history if "loss" in h]
    assert len(a) == len(b) == 6
    assert a == b  # bit for bit
    for (n, p), q in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), n


def test_alignment_trains_only_the_projector(cards, tmp_path):
    cfg = config(cards, tmp_path, 1, stage="alignment")
    cfg.model.tiny.branches = ["dino"]
    cfg.data.train = cards / "reencode.json"
    cfg.data.eval = None
    t = Trainer(cfg, progress=False)
    trainable = {n for n, p in t.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("branches.dino.projector") for n in trainable)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.train()
    changed = {n for n, p in t.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable


@pytest.mark.parametrize("reference_no_grad", [False, True])
def test_vision_tower_and_embeddings_train_unless_the_reference_quirk_is_asked(cards, tmp_path, reference_no_grad):
    cfg = config(cards, tmp_path, 1, reference_no_grad=reference_no_grad)
    cfg.model.tiny.branches = ["dino"]
    cfg.data.train = cards / "reencode.json"
    cfg.data.eval = None
    t = Trainer(cfg, progress=False)
    inputs = ("base.model.visual.", "base.model.language_model.embed_tokens.", "branches.dino.encoder.")
    before = {n: p.detach().clone() for n, p in t.model.named_parameters() if n.startswith(inputs)}
    assert {n.split(".")[2] for n in before} >= {"visual", "language_model"}
    assert any("dino.encoder" in n for n in before)
    t.train()
    params = dict(t.model.named_parameters())
    moved = {prefix: any(not torch.equal(params[n], before[n]) for n in before if n.startswith(prefix))
             for prefix in inputs}
    # the reference computes these under no_grad (vpt-paper.md §2.6 step 0): with it they never move
    assert moved == dict.fromkeys(inputs, not reference_no_grad)


def test_lora_option_and_plain_save(cards, tmp_path):
    from perceive.model import load_model

    cfg = config(cards, tmp_path, 2, lora={"r": 4, "alpha": 8})
    t = Trainer(cfg, progress=False)
    names = [n for n, p in t.model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in names) and not any(
        n.startswith("base.model.language_model") and "lora_" not in n for n in names)
    t.train()
    out = t.save_model(tmp_path / "merged")
    again = load_model(out)  # a plain checkpoint again: no adapter keys
    assert not any("lora" in k for k in again.state_dict())


@pytest.mark.slow
def test_train_cli(cards, tmp_path):
    import subprocess
    import sys

    (tmp_path / "c.yaml").write_text(f"""
model: {{tiny: {{hidden: 32, layers: 1, heads: 2, kv_heads: 1, vision_depth: 1, vision_dim: 16}}}}
data: {{train: {cards / 'plain.json'}, eval: {cards / 'plain.json'}, max_eval_samples: 2}}
optim: {{steps: 2, batch_size: 2}}
output: {tmp_path / 'run'}
""")
    out = subprocess.run([sys.executable, "-m", "perceive", "train", str(tmp_path / "c.yaml")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "run/model/perceive.json").exists() and "eval step 2  loss " in out.stdout
    assert f"evaluations (the full records): {tmp_path / 'run/evals.jsonl'}" in out.stdout


def test_a_checkpoint_gains_a_branch_and_keeps_its_zoom(cards, tmp_path):
    """Later stages start from a checkpoint: a new DINOv2 branch trains with it, and the view zoom
    and action options the config names are stored in the saved model."""
    from perceive.loop import LoopOptions, PerceptionLoop
    from perceive.model import load_model

    first = Trainer(config(cards, tmp_path / "a", 1), progress=False)
    first.train()
    start = first.save_model(tmp_path / "start")
    cfg = config(cards, tmp_path / "b", 2)
    cfg.model = type(cfg.model).model_validate({
        "path": str(start), "view_scale": 2.0, "action_defaults": {"region_select": {"margin": 0}},
        "add_branches": [{"action": "dino", "image_size": 112,
                          "encoder_config": {"hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
                                             "patch_size": 14, "image_size": 112}}]})
    cfg.data.train = cards / "reencode.json"
    cfg.data.eval = None
    t = Trainer(cfg, progress=False)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters() if n.startswith("branches.dino")}
    t.train()
    assert any(not torch.equal(p, before[n]) for n, p in t.model.named_parameters() if n in before)
    again = load_model(t.save_model(tmp_path / "out"))
    assert again.config.view_scale == 2.0 and again.config.action_defaults["region_select"] == {"margin": 0}
    b = again.config.branches["dino"]
    assert b.feature_dim == 24 and b.image_size == 112
    ans = PerceptionLoop(again, options=LoopOptions(max_new_tokens=4)).ask(cards / "images/000000.png", "Q?")
    assert ans.error is None

    cfg.model.add_branches = cfg.model.add_branches * 1
    cfg.model.path = tmp_path / "out"
    with pytest.raises(Exception, match="already has a dino branch"):
        Trainer(cfg, progress=False)


def test_rope_base_can_change_between_stages(cards, tmp_path):
    from perceive.model import load_model
    from perceive.train.trainer import set_rope_theta

    model = tiny_vpt_model(branches=())
    before = model.language_model.rotary_emb.inv_freq.clone()
    set_rope_theta(model, 10.0)
    after = model.language_model.rotary_emb.inv_freq
    assert after[-1] > 100 * before[-1]  # the columns' (lowest) frequencies rise most
    from perceive.model import save_model

    again = load_model(save_model(model, tmp_path / "m"))
    assert torch.allclose(again.language_model.rotary_emb.inv_freq, after)


def test_one_patch_per_token_model(cards, tmp_path):
    """``merge: 1``: at 112x112 the first image is 8x8 tokens, one per region cell; the processors
    that training overrides and the saved checkpoint keep the same merge size, and the loop runs."""
    from perceive.loop import LoopOptions, PerceptionLoop
    from perceive.model import load_model

    cfg = config(cards, tmp_path / "a", 1)
    cfg.model.tiny.merge = 1
    cfg.model.tiny.image_min_pixels = cfg.model.tiny.image_max_pixels = 112 * 112
    t = Trainer(cfg, progress=False)
    t.train()
    grid = t.model.image_processor(images=[Image.open(cards / "images/000000.png")])["image_grid_thw"][0]
    assert grid.tolist() == [1, 8, 8]
    assert t.model.spatial_merge_size == 1
    start = t.save_model(tmp_path / "m")
    cfg.model = type(cfg.model).model_validate({"path": str(start), "image_pixels": [12544, 12544]})
    again = Trainer(cfg, progress=False).model  # a later stage overriding the processors
    assert again.image_processor.merge_size == again.view_image_processor.merge_size == 1
    loaded = load_model(start)
    assert loaded.image_processor.merge_size == 1 and loaded.spatial_merge_size == 1
    ans = PerceptionLoop(loaded, options=LoopOptions(max_new_tokens=4)).ask(cards / "images/000000.png", "Q?")
    assert ans.error is None


def test_token_accuracy_separates_the_first_region_cell():
    """A model that gets every later cell right but the first one wrong localises nothing: the
    first-cell count says so where the per-token counts cannot."""
    from perceive.train.trainer import token_accuracy

    ids = {10: "region_start", 11: "region_end", 20: "x_0", 21: "x_1", 30: "y_0", 31: "y_1"}
    labels = torch.tensor([[IGNORE_INDEX, 10, 20, 30, 21, 31, 11, 5]])
    wrong_first = [10, 21, 31, 21, 31, 11, 5]  # what each position predicts for the next one
    logits = torch.nn.functional.one_hot(torch.tensor([wrong_first + [0]]), 40).float()
    acc = token_accuracy(logits, labels, ids)
    assert acc["region_first_cell"] == [0, 2] and acc["region_later_cells"] == [2, 2]
    assert acc["x_1"] == [1, 1] and acc["perception"] == [4, 6]


# -- runs that must not succeed on nothing ------------------------------------------------------


def cli(*args):
    """``perceive ARGS`` in this process: (exit code, output with whitespace runs collapsed, so
    the console's line wrapping does not matter)."""
    from typer.testing import CliRunner

    from perceive.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, " ".join(res.output.split())


def tiny_yaml(path, data, output, steps=1, **extra):
    """A tiny training config file (``data``: the training set, also its eval set)."""
    lines = [f"{k}: {v}" for k, v in extra.items()]
    path.write_text("\n".join([
        "model: {tiny: {hidden: 32, layers: 1, heads: 2, kv_heads: 1, vision_depth: 1, vision_dim: 16}}",
        f"data: {{train: {data}, max_eval_samples: 2}}",
        f"optim: {{steps: {steps}, batch_size: 2, seed: 3}}", f"output: {output}", *lines]) + "\n")
    return path


def moved_away(cards, tmp_path, name="region.json"):
    """The data file copied away from its images: no image path it holds resolves any more."""
    dst = tmp_path / "elsewhere" / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text((cards / name).read_text())
    return dst


def with_missing_images(cards, tmp_path, k, name="region.json"):
    """``name`` with absolute image paths, and the first ``k`` items' image (and crop) gone."""
    items = json.loads((cards / name).read_text())
    for j, it in enumerate(items):
        it["images"] = [str(cards / (p.replace(".png", "-gone.png") if j < k else p)) for p in it["images"]]
    path = tmp_path / f"missing{k}.json"
    path.write_text(json.dumps(items))
    return path


def test_training_refuses_a_set_with_no_usable_item(cards, tmp_path):
    from perceive.errors import DataUnusableError

    data = moved_away(cards, tmp_path)
    cfg = config(cards, tmp_path / "run", 2)
    cfg.data.train = data
    with pytest.raises(DataUnusableError, match="no usable item") as exc:
        Trainer(cfg, progress=False)
    assert "moved away from its images" in exc.value.hint and "missing image file: 12 item(s)" in str(exc.value)
    cfg.data.train, cfg.data.eval = cards / "region.json", data  # the eval set counts as much
    with pytest.raises(DataUnusableError, match="no usable item"):
        Trainer(cfg, progress=False)
    code, out = cli("train", tiny_yaml(tmp_path / "c.yaml", data, tmp_path / "cli"))
    assert code == 1 and out.startswith("error: no usable item in") and "Traceback" not in out
    assert "all 12 skipped missing image file: 12 item(s), e.g. item 0: missing file images/000000.png;" in out
    assert "loss" not in out and not (tmp_path / "cli").exists()  # nothing trained, nothing written


def test_training_refuses_a_half_broken_set_and_reports_what_it_skipped(cards, tmp_path):
    from perceive.errors import DataUnusableError

    data = with_missing_images(cards, tmp_path, 2)  # 2 of 12: 16.7%
    cfg = config(cards, tmp_path / "run", 1)
    cfg.data.train, cfg.data.eval = data, None
    with pytest.raises(DataUnusableError, match=r"2 of 12 item\(s\) in .* skipped \(16.7%\)") as exc:
        Trainer(cfg, progress=False)
    assert "more than the 5.0% that data.max_skipped_fraction allows" in str(exc.value)
    assert "--max-skipped-fraction 0.17" in exc.value.hint
    cfg.data.max_skipped_fraction = 0.2
    t = Trainer(cfg, progress=False)
    assert t.skips["train"].count == 2 and len(t.train_ds) == 10
    assert t.skipped[0].startswith("item 0: missing file") and len(t.skipped) == 2  # image and crop: one item

    yaml = tiny_yaml(tmp_path / "c.yaml", data, tmp_path / "cli")
    code, out = cli("train", yaml)
    assert code == 1 and "error: 2 of 12 item(s)" in out and "--max-skipped-fraction 0.17" in out
    code, out = cli("train", yaml, "--max-skipped-fraction", "0.2")
    assert code == 0, out
    assert f"warning: 2 of 12 item(s) in {data} skipped (16.7%): missing image file: 2 item(s), e.g. item 0: " \
           f"missing file {cards}/images/000000-gone.png; item 1: missing file" in out
    assert "model written to" in out


def test_an_output_folder_holding_a_run_is_refused_unless_overwritten_or_resumed(cards, tmp_path):
    from perceive.errors import ConfigError

    run = tmp_path / "run"
    first = Trainer(config(cards, run, 2, save_every=1), progress=False)
    first.train()
    first.save_model()
    (run / "notes.txt").write_text("mine")  # not the trainer's: never deleted
    with pytest.raises(ConfigError, match="already holds a run") as exc:
        Trainer(config(cards, run, 1), progress=False).train()
    assert "checkpoint-1, checkpoint-2, evals.jsonl, history.json, model" in str(exc.value)
    assert "--overwrite" in exc.value.hint and f"--resume {run / 'checkpoint-2'}" in exc.value.hint
    again = Trainer(config(cards, run, 1), progress=False)
    again.train(overwrite=True)  # clears the earlier run: no stale checkpoint beside the new one
    assert sorted(p.name for p in run.iterdir()) == ["evals.jsonl", "history.json", "notes.txt"]
    assert len(json.loads((run / "history.json").read_text())) == 2  # one step, and its eval
    assert [r["step"] for r in read_evals(run)] == [1]  # the earlier run's two are gone with it

    yaml = tiny_yaml(tmp_path / "c.yaml", cards / "plain.json", run)
    code, out = cli("train", yaml)
    assert code == 1 and f"error: the output folder {run} already holds a run (evals.jsonl, history.json)" in out
    code, out = cli("train", yaml, "--overwrite")
    assert code == 0 and f"--overwrite: clearing the earlier run in {run} (evals.jsonl, history.json)" in out
    assert (run / "model/perceive.json").exists() and (run / "notes.txt").exists()


def test_resume_refuses_a_missing_or_truncated_checkpoint(cards, tmp_path):
    import shutil

    from perceive.errors import CheckpointError

    run = tmp_path / "run"
    Trainer(config(cards, run, 2, save_every=1), progress=False).train()
    resumed = Trainer(config(cards, run, 2), progress=False)
    with pytest.raises(CheckpointError, match="there is no checkpoint") as exc:
        resumed.train(resume=run / "checkpoint-7")
    assert f"the latest checkpoint in {run} is {run / 'checkpoint-2'}" in exc.value.hint
    with pytest.raises(CheckpointError, match="it is a run folder, not a checkpoint"):
        resumed.train(resume=run)
    cut = run / "cut"
    shutil.copytree(run / "checkpoint-2", cut)
    (cut / "optimizer.bin").unlink()
    with pytest.raises(CheckpointError, match=r"is incomplete \(optimizer.bin missing\)") as exc:
        resumed.train(resume=cut)
    assert "checkpoint-1" in exc.value.hint
    shutil.copy(run / "checkpoint-2/optimizer.bin", cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy that did not finish
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        resumed.train(resume=cut)
    (cut / "trainer_state.json").write_text('{"step": 2, "hist')
    with pytest.raises(CheckpointError, match="is damaged"):
        resumed.train(resume=cut)
    code, out = cli("train", tiny_yaml(tmp_path / "c.yaml", cards / "plain.json", run), "--resume", run / "nope")
    assert code == 1 and f"error: cannot resume: there is no checkpoint {run / 'nope'}" in out
    assert "Traceback" not in out


def test_freeze_and_trainable_patterns_must_match_and_leave_something_to_train(cards, tmp_path):
    from perceive.errors import ConfigError

    for key, pattern in (("trainable", "nothing.matches"), ("freeze", "totally.bogus")):
        with pytest.raises(ConfigError, match=f"{key}: '{pattern}' matches no parameter") as exc:
            Trainer(config(cards, tmp_path, 1, **{key: [pattern]}), progress=False)
        assert "parameter names start with: base.model.visual, base.model.language_model" in exc.value.hint
    with pytest.raises(ConfigError) as exc:
        Trainer(config(cards, tmp_path, 1, freeze=["base.model.visul"]), progress=False)
    assert "did you mean 'base.model.visual'" in exc.value.hint
    with pytest.raises(ConfigError, match="nothing to train: trainable: .'base.lm_head'., freeze: .'base.lm_head'."):
        Trainer(config(cards, tmp_path, 1, trainable=["base.lm_head"], freeze=["base.lm_head"]), progress=False)
    with pytest.raises(ConfigError, match="stage alignment trains only the re-encode branches' projectors"):
        Trainer(config(cards, tmp_path, 1, stage="alignment"), progress=False)  # a model without branches
    (tmp_path / "c.yaml").write_text(tiny_yaml(tmp_path / "c.yaml", cards / "plain.json", tmp_path / "o").read_text()
                                     + "freeze: [totally.bogus]\n")
    code, out = cli("train", tmp_path / "c.yaml")
    assert code == 1 and f"error: {tmp_path / 'c.yaml'}: freeze: 'totally.bogus' matches no parameter" in out


@pytest.mark.slow
def test_an_interrupted_run_saves_a_checkpoint_that_resumes_exactly(cards, tmp_path):
    from perceive.train.trainer import TrainingInterrupted

    full = Trainer(config(cards, tmp_path / "full", 5), progress=False)
    full.train()

    def interrupt_at(k):
        def hook(step):
            if step == k:
                raise KeyboardInterrupt
        return hook

    part = Trainer(config(cards, tmp_path / "part", 5), progress=False)
    with pytest.raises(TrainingInterrupted, match="interrupted after step 2 of 5: saved a checkpoint") as exc:
        part.train(on_step=interrupt_at(2))
    assert exc.value.saved and exc.value.checkpoint == tmp_path / "part/checkpoint-2"
    assert not list((tmp_path / "part").glob("*.tmp"))
    resumed = Trainer(config(cards, tmp_path / "part", 5), progress=False)
    resumed.train(resume=exc.value.checkpoint)
    assert [h["loss"] for h in resumed.history if "loss" in h] == [h["loss"] for h in full.history if "loss" in h]
    for (n, p), q in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), n

    # an interruption in the middle of a step (a second Ctrl-C) saves nothing half-updated
    mid = Trainer(config(cards, tmp_path / "mid", 5, save_every=2), progress=False)
    forward, calls = mid.forward, []

    def failing_forward(batch):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return forward(batch)

    mid.forward = failing_forward
    with pytest.raises(TrainingInterrupted, match="interrupted during step 4 of 5") as exc:
        mid.train()
    assert not exc.value.saved and exc.value.checkpoint == tmp_path / "mid/checkpoint-2"
    assert not (tmp_path / "mid/checkpoint-3").exists()


def ctrl_c(times=1):
    """Press Ctrl-C in this process: the handler runs before this returns (and may raise)."""
    import signal

    for _ in range(times):
        signal.raise_signal(signal.SIGINT)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_wherever_it_lands(cards, tmp_path):
    """The first Ctrl-C stops after the current step and saves a checkpoint there; a second stops
    at once and saves nothing, whether it lands in a step, an evaluation or that very save (whose
    .tmp is removed, never left as a truncated checkpoint)."""
    from perceive.train import TrainingInterrupted
    from perceive.train.checkpoints import checkpoint_step

    # once during the evaluation after step 2: the evaluation finishes, checkpoint-2 is saved
    once = Trainer(config(cards, tmp_path / "once", 5, eval_every=2), progress=False)
    evaluate = once.evaluate
    once.evaluate = lambda: ctrl_c() or evaluate()
    with pytest.raises(TrainingInterrupted, match="interrupted after step 2 of 5: saved a checkpoint") as exc:
        once.train()
    assert exc.value.saved and checkpoint_step(tmp_path / "once/checkpoint-2") == 2
    assert [h["step"] for h in once.history if "eval" in h] == [2]

    # twice during the evaluation after step 2 (the trainer used to save checkpoint-2 all the same)
    twice = Trainer(config(cards, tmp_path / "eval", 5, eval_every=2, save_every=1), progress=False)
    evaluate = twice.evaluate
    twice.evaluate = lambda: ctrl_c(2) or evaluate()
    with pytest.raises(TrainingInterrupted, match="interrupted after step 2 of 5, at once") as exc:
        twice.train()
    assert not exc.value.saved and not exc.value.during_step
    assert exc.value.checkpoint == tmp_path / "eval/checkpoint-1"
    assert sorted(p.name for p in (tmp_path / "eval").glob("checkpoint-*")) == ["checkpoint-1"]

    # the first during step 3, the second while checkpoint-3 is being written: no checkpoint-3
    # (nor checkpoint-3.tmp), and the message names checkpoint-2
    cut = Trainer(config(cards, tmp_path / "save", 5, save_every=2), progress=False)
    save_state = cut.acc.save_state

    def pressed_while_saving(out, *args, **kw):
        result = save_state(out, *args, **kw)
        if out.endswith("checkpoint-3.tmp"):
            ctrl_c()
        return result

    cut.acc.save_state = pressed_while_saving
    with pytest.raises(TrainingInterrupted, match="interrupted after step 3 of 5, at once") as exc:
        cut.train(on_step=lambda step: step == 3 and ctrl_c())
    assert not exc.value.saved and exc.value.checkpoint == tmp_path / "save/checkpoint-2"
    assert sorted(p.name for p in (tmp_path / "save").glob("checkpoint-*")) == ["checkpoint-2"]
    assert checkpoint_step(tmp_path / "save/checkpoint-2") == 2


class FakeAccelerator:
    """What :func:`save_checkpoint` asks of accelerate, writing ``model.safetensors`` = ``text``."""

    is_main_process = True

    def __init__(self, text, fail=False):
        self.text, self.fail = text, fail

    def wait_for_everyone(self):
        pass

    def save_state(self, out):
        from pathlib import Path

        Path(out).mkdir(parents=True)
        (Path(out) / "model.safetensors").write_text(self.text)
        if self.fail:
            ctrl_c()


@pytest.fixture
def default_sigint():
    """Ctrl-C raises KeyboardInterrupt, whatever this process inherited: a process started in the
    background of a non-interactive shell (a CI step's `make test &`) starts with SIGINT ignored."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_checkpoint_save_is_whole_or_not_there(tmp_path, monkeypatch, default_sigint):
    """A save replaces an earlier checkpoint-N only once it is complete; one interrupted while
    writing leaves the earlier one and no .tmp; Ctrl-C while it is renamed into place waits until
    the renaming is done."""
    import os

    from perceive.train.checkpoints import checkpoint_step, save_checkpoint, sigint_deferred

    path = tmp_path / "checkpoint-3"
    save_checkpoint(FakeAccelerator("first"), path, {"step": 3, "history": []})
    assert checkpoint_step(path) == 3 and (path / "model.safetensors").read_text() == "first"
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(FakeAccelerator("second", fail=True), path, {"step": 3, "history": []})
    assert (path / "model.safetensors").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3"]

    replace, renamed = os.replace, []

    def pressed_while_renaming(a, b):
        ctrl_c()  # held off: the rename goes ahead
        replace(a, b)
        renamed.append(b)

    monkeypatch.setattr(os, "replace", pressed_while_renaming)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(FakeAccelerator("third"), path, {"step": 3, "history": []})
    monkeypatch.undo()
    assert renamed == [tmp_path / "checkpoint-3.old", path]
    assert (path / "model.safetensors").read_text() == "third" and checkpoint_step(path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3"]

    done = []
    with pytest.raises(KeyboardInterrupt), sigint_deferred():
        ctrl_c()
        done.append(1)
    assert done == [1]


@pytest.mark.slow
def test_sigint_stops_the_train_command_with_a_checkpoint_and_the_command_to_resume(cards, tmp_path):
    import os
    import shlex
    import signal
    import subprocess
    import sys
    import time

    yaml = tiny_yaml(tmp_path / "c.yaml", cards / "plain.json", tmp_path / "run", steps=150, log_every=1)
    env = {**os.environ, "COLUMNS": "300"}
    proc = subprocess.Popen([sys.executable, "-m", "perceive", "train", str(yaml), "--steps", "40"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    history = tmp_path / "run/history.json"
    deadline = time.time() + 240
    while not history.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "model written" not in out
    line = next(s for s in out.splitlines() if s.startswith("resume with: "))
    args = shlex.split(line.removeprefix("resume with: "))
    step = int(args[args.index("--resume") + 1].rsplit("-", 1)[1])
    assert args == ["perceive", "train", str(yaml), "--resume", str(tmp_path / f"run/checkpoint-{step}"),
                    "--steps", "40"]
    assert f"interrupted after step {step} of 40: saved a checkpoint to {tmp_path / 'run'}/checkpoint-{step}" in out
    assert 1 <= step < 40
    again = subprocess.run([sys.executable, "-m", "perceive", *args[1:]], capture_output=True, text=True, timeout=300,
                           env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "model written to" in again.stdout
    losses = [h["step"] for h in json.loads(history.read_text()) if "loss" in h]
    assert losses == list(range(1, 41))  # the resumed run carried on from the checkpoint's step


def test_branch_names_are_checked_against_the_installed_plugins(cards, tmp_path):
    """`model.tiny.branches` and `model.add_branches` name installed branches (no fixed list): a
    typo is refused when the config loads, with the close name and what is installed."""
    from perceive.errors import ConfigError
    from perceive.train import load_train_config

    (tmp_path / "t.yaml").write_text(f"""
model: {{path: {tmp_path}, add_branches: [{{action: dinoo}}]}}
data: {{train: {cards / 'plain.json'}}}
""")
    with pytest.raises(ConfigError) as e:
        load_train_config(tmp_path / "t.yaml")
    msg = str(e.value)
    assert "no installed plugin provides a re-encode branch 'dinoo'" in msg and "did you mean 'dino'" in msg
    assert "installed: dino, native, sam" in msg and "add_branches" in msg
    cfg = config(cards, tmp_path, 1)
    assert type(cfg.model.tiny).model_validate({"branches": ["sam", "native"]}).branches == ["sam", "native"]
    with pytest.raises(ValueError, match="re-encode branch 'clip'"):
        type(cfg.model.tiny).model_validate({"branches": ["clip"]})


def test_the_protocol_the_data_is_written_in_is_stored_in_the_model(cards, tmp_path):
    """``protocol:`` in a train config lands in the model's perceive.json; ``protocol: auto``
    then runs the model with it."""
    from perceive.loop import PerceptionLoop
    from perceive.model import load_model, save_model
    from perceive.train.build import build_model
    from perceive.train.config import load_train_config

    (tmp_path / "c.yaml").write_text(f"""
model: {{tiny: {{hidden: 32, layers: 1, heads: 2, kv_heads: 1, vision_depth: 1, vision_dim: 16}}}}
data: {{train: {cards / 'plain.json'}}}
protocol: {{name: hermes_json, options: {{response: deepeyes, declare: false}}}}
""")
    model = build_model(load_train_config(tmp_path / "c.yaml"))
    again = load_model(save_model(model, tmp_path / "m"))
    assert again.config.protocol == {"name": "hermes_json", "options": {"response": "deepeyes", "declare": False}}
    loop = PerceptionLoop(again)
    assert loop.protocol.name == "hermes_json" and loop.protocol.options.declare is False


def test_each_evaluation_prints_one_line_and_its_full_record_goes_to_evals_jsonl(cards, tmp_path):
    """No JSON on the console: one line per evaluation (loss and the accuracies worth watching),
    every record in OUTPUT/evals.jsonl, as the run's history holds it."""
    from typer.testing import CliRunner

    from perceive.cli import app
    from perceive.train.eval_log import eval_line

    run = tmp_path / "run"
    yaml = tiny_yaml(tmp_path / "c.yaml", cards / "region.json", run, steps=2, eval_every=1)
    yaml.write_text(yaml.read_text().replace("max_eval_samples: 2", f"eval: {cards / 'region.json'}, "
                                                                    "max_eval_samples: 2"))
    res = CliRunner().invoke(app, ["train", str(yaml)])
    assert res.exit_code == 0, res.output
    records = read_evals(run)
    history = json.loads((run / "history.json").read_text())
    assert records == [{"step": h["step"], **h["eval"]} for h in history if "eval" in h]
    assert [r["step"] for r in records] == [1, 2] and "region_first_cell" in records[0]["token_accuracy"]
    lines = [line for line in res.output.splitlines() if line.startswith("eval step")]
    assert lines == [eval_line(r["step"], r) for r in records]
    assert lines[0].startswith("eval step 1  loss ") and "  tokens " in lines[0] and "  first cell " in lines[0]
    assert "token_accuracy" not in res.output and "{" not in res.output
    assert f"evaluations (the full records): {run / 'evals.jsonl'}" in " ".join(res.output.split())


def test_eval_line_leaves_out_what_the_evaluation_lacks():
    from perceive.train.eval_log import eval_line

    line = eval_line(200, {"loss": 0.1234, "token_accuracy": {"all": 0.8123, "digits": 0.65, "x_3": 0.1}})
    assert line == "eval step 200  loss 0.1234  tokens 0.812  digits 0.650"


def test_a_resume_says_what_differs_from_the_checkpoint_and_applies_it(cards, tmp_path):
    """Resuming with changed settings lists each (`optim.steps: 2 -> 3`) and applies it from the
    checkpoint's step, the learning rate and weight decay included (the optimizer's state would
    keep the old ones); the evaluations the stopped run made after its checkpoint are not listed
    twice."""
    import math

    run = tmp_path / "run"
    Trainer(config(cards, run, 2, save_every=1, eval_every=1), progress=False).train()
    assert [r["step"] for r in read_evals(run)] == [1, 2]
    same = Trainer(config(cards, run, 2, save_every=1, eval_every=1), progress=False)
    same.train(resume=run / "checkpoint-1")
    assert same.resume_changes == []
    cfg = config(cards, run, 3, save_every=1, eval_every=1)
    cfg.optim.lr, cfg.optim.weight_decay = 5e-4, 0.1
    t = Trainer(cfg, progress=False)
    t.train(resume=run / "checkpoint-1")
    assert [str(c) for c in t.resume_changes] == ["optim.steps: 2 -> 3", "optim.lr: 0.003 -> 0.0005",
                                                  "optim.weight_decay: 0.0 -> 0.1"]
    lrs = {h["step"]: h["lr"] for h in t.history if "lr" in h}
    assert lrs[1] == pytest.approx(3e-3 * 0.5 * (1 + math.cos(math.pi / 2)))  # the checkpoint's run: lr 3e-3, 2 steps
    for k in (2, 3):  # from here on, cosine over 3 steps from 5e-4
        assert lrs[k] == pytest.approx(5e-4 * 0.5 * (1 + math.cos(math.pi * k / 3)))
    assert {g["weight_decay"] for g in t.opt.param_groups} == {0.1}
    assert [r["step"] for r in read_evals(run)] == [1, 2, 3]
    state = json.loads((run / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["config"]["optim"]["steps"] == 3  # what the next resume compares with


def test_a_resume_refuses_another_model_or_other_data_unless_allowed(cards, tmp_path):
    from perceive.errors import CheckpointError

    run = tmp_path / "run"
    Trainer(config(cards, run, 2, save_every=1), progress=False).train()
    cfg = config(cards, run, 2)
    cfg.model.tiny.hidden, cfg.data.train = 64, cards / "plain.json"
    with pytest.raises(CheckpointError, match="trains another model or on other data") as exc:
        Trainer(cfg, progress=False).train(resume=run / "checkpoint-1")
    assert f"model.tiny.hidden: 32 -> 64; data.train: {cards / 'region.json'} -> {cards / 'plain.json'}" in str(
        exc.value)
    assert "--allow-changes" in exc.value.hint and "set these back" in exc.value.hint
    for key, value in (("trainable", ["base.lm_head"]), ("freeze", ["base.lm_head"]), ("lora", {"r": 4})):
        other = config(cards, run, 2, **{key: value})
        with pytest.raises(CheckpointError, match=f"\\({key}: "):
            Trainer(other, progress=False).load(run / "checkpoint-1")
    moved = config(cards, run, 2)
    moved.data.train = cards / "plain.json"  # say, the same items moved
    t = Trainer(moved, progress=False)
    t.train(resume=run / "checkpoint-1", allow_changes=True)
    assert [(str(c), c.effect.value) for c in t.resume_changes] == [
        (f"data.train: {cards / 'region.json'} -> {cards / 'plain.json'}", "refused"),
        ("save_every: 1 -> 0", "applies")]
    assert t.step == 2


def test_the_train_command_lists_the_changes_of_a_resume(cards, tmp_path):
    run = tmp_path / "run"
    yaml = tiny_yaml(tmp_path / "c.yaml", cards / "plain.json", run, steps=2, save_every=1)
    assert cli("train", yaml)[0] == 0
    code, out = cli("train", yaml, "--resume", run / "checkpoint-1", "--steps", "3", "--set", "optim.lr=0.0005")
    assert code == 0, out
    assert (f"warning: the config differs from the one {run / 'checkpoint-1'} was saved with; these apply from "
            f"step 1 on: optim.steps: 2 -> 3 optim.lr: 0.001 -> 0.0005 ") in out
    code, out = cli("train", yaml, "--resume", run / "checkpoint-2", "--set", "model.tiny.hidden=64")
    assert code == 1 and "Traceback" not in out
    assert out.startswith(f"error: cannot resume from {run / 'checkpoint-2'}: this config trains another model or "
                          f"on other data than the run that saved it (model.tiny.hidden: 32 -> 64)")
    state = run / "checkpoint-2" / "trainer_state.json"
    state.write_text(json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != "config"}))
    code, out = cli("train", yaml, "--resume", run / "checkpoint-2", "--set", "model.tiny.hidden=64")
    assert code == 1 and "does not record the config it was saved with" in out  # nothing to compare: not refused,
    assert "cannot be loaded" in out  # but the weights of a 32-wide model do not fit a 64-wide one
