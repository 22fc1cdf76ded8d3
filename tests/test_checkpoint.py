"""Checkpoints: the project's format round-trips, the paper's loads strictly, nothing partial."""

import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from perceive.errors import ModelLoadError
from perceive.model import load_model, save_model
from perceive.model.checkpoint import WEIGHTS_FILE
from perceive.testing.tiny import tiny_vpt_model
from tests.test_parity import FIXTURES, _require_fixtures


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny_vpt_model()
    path = save_model(model, tmp_path_factory.mktemp("ckpt") / "tiny")
    return model, path


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_round_trip(saved):
    model, path = saved
    again = load_model(path)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    assert torch.equal(logits(model, ids), logits(again, ids))
    assert again.config == model.config
    assert again.tokenizer is not None and len(again.tokenizer) == len(model.tokenizer)
    for a, b in zip(model.branches.state_dict().values(), again.branches.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_base_loads_with_plain_transformers(saved):
    from transformers import Qwen2VLForConditionalGeneration

    model, path = saved
    base = Qwen2VLForConditionalGeneration.from_pretrained(str(path), local_files_only=True)
    for (k, a), b in zip(model.base.state_dict().items(), base.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_missing_branch_key_is_an_error(saved, tmp_path):
    _, path = saved
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    state = load_file(str(broken / WEIGHTS_FILE))
    del state["dino.projector.linear_condition.weight"]
    state["dino.projector.surprise"] = torch.zeros(1)
    save_file(state, str(broken / WEIGHTS_FILE))
    with pytest.raises(ModelLoadError) as e:
        load_model(broken)
    assert "1 missing keys [dino.projector.linear_condition.weight]" in str(e.value)
    assert "1 unexpected keys [dino.projector.surprise]" in str(e.value)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)


def test_paper_checkpoint_with_a_missing_key_is_an_error(tmp_path):
    _require_fixtures()
    dst = tmp_path / "dino"
    shutil.copytree(FIXTURES / "dino", dst)
    state = torch.load(dst / "pytorch_model.bin", weights_only=True)
    del state["detection_projector.linear_feature.weight"]
    state["vision_tower.extra"] = torch.zeros(1)
    torch.save(state, dst / "pytorch_model.bin")
    with pytest.raises(ModelLoadError) as e:
        load_model(dst)
    msg = str(e.value)
    assert "branches.dino.projector.linear_feature.weight" in msg and "vision_tower.extra" in msg


def test_convert_cli(tmp_path):
    _require_fixtures()
    out = subprocess.run([sys.executable, "-m", "perceive", "convert", str(FIXTURES / "sam"), str(tmp_path / "sam")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    paper, ours = load_model(FIXTURES / "sam"), load_model(tmp_path / "sam")
    inputs = torch.load(FIXTURES / "sam" / "inputs.pt", weights_only=True)
    kw = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids", "pixel_values", "image_grid_thw",
                                 "seg_images")}
    with torch.no_grad():
        assert torch.equal(paper(**kw).logits, ours(**kw).logits)


def test_official_sam_weights_load_into_the_branch(tmp_path):
    model = tiny_vpt_model(branches=("sam",))
    enc = model.branches["sam"].encoder
    state = {f"image_encoder.{k}": v + 1 for k, v in enc.state_dict().items()}
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.zeros(2, 64)
    torch.save(state, tmp_path / "sam.pth")
    model.load_branch_encoder("sam", tmp_path / "sam.pth")
    assert torch.equal(enc.state_dict()["neck.0.weight"], state["image_encoder.neck.0.weight"])


def test_ask_cli_without_a_model_uses_the_shipped_one(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from perceive import defaults
    from perceive.cli import app
    from perceive.data.cards import QUESTION

    if defaults.default_model_path() is None:
        pytest.skip("models/default is not in this checkout")
    image, number = defaults.default_examples()[0]
    out = subprocess.run([sys.executable, "-m", "perceive", "ask", str(image), QUESTION, "--device", "cpu"],
                         capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": ""})
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[0] == number and "region_select" in out.stdout
    # without the shipped folder, the error says what to pass
    monkeypatch.setattr(defaults, "DEFAULT_MODEL_DIR", tmp_path / "none")
    res = CliRunner().invoke(app, ["ask", str(image), QUESTION])
    assert res.exit_code == 2 and "no model given" in res.output


def test_ask_cli_with_a_model(saved, tmp_path):
    import json

    from PIL import Image

    _, path = saved
    img = tmp_path / "a.png"
    Image.new("RGB", (64, 48), "navy").save(img)
    out = subprocess.run([sys.executable, "-m", "perceive", "ask", str(img), "What?", "--model", str(path), "--json",
                          "--max-new-tokens", "5", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["trace"]["generated_tokens"] == 5 and data["trace"]["finish_reason"] == "max_new_tokens"


def test_view_processor_round_trips_and_shows_views(tmp_path):
    from perceive.loop import LoopOptions, PerceptionLoop
    from perceive.testing.images import real_photos
    from perceive.testing.scripted import ScriptedPolicy, span_tokens
    from perceive.testing.tiny import tiny_image_processor

    model = tiny_vpt_model(branches=())
    model.view_image_processor = tiny_image_processor(min_pixels=224 * 224, max_pixels=224 * 224)
    again = load_model(save_model(model, tmp_path / "m"))
    assert again.view_image_processor.size["shortest_edge"] == 224 * 224  # transformers 5: min_pixels
    assert again.image_processor.size == model.image_processor.size
    tok = again.tokenizer
    span = span_tokens(tok, "<|region_token_start|><|x_1|><|y_1|><|region_token_end|>")
    ans = PerceptionLoop(again, options=LoopOptions(max_new_tokens=8), policy=ScriptedPolicy(tok, {0: span})).ask(
        real_photos()["coffee"], "What?")
    # a 225x150 crop shown at ~224x224 px: 8x8 merged tokens, plus the turn's other tokens
    assert ans.trace.hops[0].prefilled_tokens > 64


def test_view_scale_and_action_defaults_reach_training_and_the_loop(tmp_path):
    """A model trained to see crops at 3x with margin-0 regions keeps both through save/load, and
    the collator and the loop show a view the same way."""
    from perceive.data.collate import Collator
    from perceive.data.dataset import Example
    from perceive.loop import LoopOptions, PerceptionLoop
    from perceive.testing.images import real_photos
    from perceive.testing.scripted import ScriptedPolicy, span_tokens
    from perceive.testing.tiny import tiny_image_processor

    model = tiny_vpt_model(branches=())
    model.view_image_processor = tiny_image_processor(min_pixels=28 * 28, max_pixels=1000 * 1000)
    model.config.view_scale = 3.0
    model.config.action_defaults = {"region_select": {"margin": 0}}
    again = load_model(save_model(model, tmp_path / "m"))
    assert again.config.view_scale == 3.0 and again.config.action_defaults == {"region_select": {"margin": 0}}

    photo = real_photos()["coffee"].resize((448, 448))
    crop = photo.crop((56, 56, 168, 112))  # cells x 1-2, y 1: 112x56 px
    _, grid = again.view_pixels(crop)
    assert grid.tolist() == [1, 12, 24]  # 336x168 px in 14-px patches
    enc = Collator(again).encode(Example(0, [{"role": "user", "content": "<image>Q"},
                                             {"role": "assistant", "content": "1"},
                                             {"role": "user", "content": "<image>"},
                                             {"role": "assistant", "content": "2"}],
                                         {"images": [photo, crop]}))
    assert enc.image_grid_thw[1].tolist() == [1, 12, 24]  # the collator shows it the same way

    tok = again.tokenizer
    span = span_tokens(tok, "<|region_token_start|><|x_1|><|y_1|><|x_2|><|y_1|><|region_token_end|>")
    loop = PerceptionLoop(again, options=LoopOptions(max_new_tokens=8), policy=ScriptedPolicy(tok, {0: span}))
    assert loop.options.action_options["region_select"] == {"margin": 0}
    hop = loop.ask(photo, "What?").trace.hops[0]
    assert [hop.box[k] for k in ("x0", "y0", "x1", "y1")] == [56, 56, 168, 112]  # touched cells, no +-1 margin
    # 12x24 patches -> 6x12 = 72 merged tokens in the observation turn
    assert hop.prefilled_tokens >= 72
    # a run's own options override the model's
    loop = PerceptionLoop(again, options=LoopOptions(action_options={"region_select": {"margin": 1}}))
    assert loop.options.action_options["region_select"] == {"margin": 1}
