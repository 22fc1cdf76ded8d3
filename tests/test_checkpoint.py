"""Checkpoints: the project's format round-trips, the paper's loads strictly, nothing partial."""

import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from perceive.errors import ConfigError, ModelLoadError
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def _copy(path, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(path, dst)
    return dst


def test_truncated_weights_are_named_before_anything_loads(saved, tmp_path):
    _, path = saved
    for name in ("model.safetensors", WEIGHTS_FILE):
        broken = _copy(path, tmp_path, name)
        f = broken / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        with pytest.raises(ModelLoadError, match=f"{name} is truncated: it has") as e:
            load_model(broken)
        assert "copy it again" in e.value.hint
    empty = _copy(path, tmp_path, "empty")
    (empty / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="model.safetensors is truncated: 0 bytes"):
        load_model(empty)


def test_config_json_that_does_not_match_the_weights(saved, tmp_path):
    import json

    _, path = saved
    broken = _copy(path, tmp_path, "sizes")
    cfg = json.loads((broken / "config.json").read_text())
    cfg["text_config"]["hidden_size"] = 32
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError) as e:
        load_model(broken)
    msg = str(e.value)
    assert f"{broken / 'config.json'} does not match the weights in {broken / 'model.safetensors'}" in msg
    assert "lm_head.weight: weights (" in msg and "hidden_size" in e.value.hint
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config.json is not valid JSON"):
        load_model(broken)


def test_invalid_perceive_json_is_a_config_error_naming_the_file_and_fields(saved, tmp_path):
    import json

    _, path = saved
    broken = _copy(path, tmp_path, "pj")
    pj = json.loads((broken / "perceive.json").read_text())
    (broken / "perceive.json").write_text(json.dumps({**pj, "grid": 0, "view_scale": "three"}))
    with pytest.raises(ConfigError) as e:
        load_model(broken)
    msg = str(e.value)
    assert msg.startswith(f"{broken / 'perceive.json'}: 2 invalid field(s)")
    assert "view_scale: Input should be a valid number" in msg and "grid: Extra inputs are not permitted" in msg
    (broken / "perceive.json").write_text(json.dumps({**pj, "hidden_size": 7}))
    with pytest.raises(ConfigError, match="hidden_size is 7 but the model in config.json has 64"):
        load_model(broken)
    region = {**pj["region"], "start_id": 10**6}
    (broken / "perceive.json").write_text(json.dumps({**pj, "region": region}))
    with pytest.raises(ConfigError, match=r"token id\(s\) outside the model's vocabulary of \d+: region.start_id="):
        load_model(broken)
    (broken / "perceive.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="perceive.json must hold a JSON object"):
        load_model(broken)


def test_bad_device_and_dtype_are_config_errors(saved):
    _, path = saved
    with pytest.raises(ConfigError, match="unknown device 'gpu9'"):
        load_model(path, device="gpu9")
    with pytest.raises(ConfigError, match="unknown dtype 'float64'"):
        load_model(path, dtype="float64")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            load_model(path, device="cuda")


def test_perception_tokens_without_perceive_json_is_an_error(saved, tmp_path):
    _, path = saved
    broken = _copy(path, tmp_path, "nopj")
    (broken / "perceive.json").unlink()
    with pytest.raises(ModelLoadError) as e:
        load_model(broken)
    assert str(e.value).startswith(f"{broken} has no perceive.json, but its tokenizer carries perception tokens (")
    assert "<|region_token_start|>" in str(e.value)
    assert "perceive convert SRC DST" in e.value.hint and "restore perceive.json" in e.value.hint


def _plain_tokenizer():
    """A char-level tokenizer with Qwen2-VL's special tokens and none of perceive's."""
    from perceive.testing.tiny import build_plain_tokenizer

    return build_plain_tokenizer()


def test_a_plain_qwen2_vl_loads_with_a_notice(tmp_path, caplog):
    from perceive.model.checkpoint import perception_tokens
    from perceive.testing.tiny import tiny_base

    tok = _plain_tokenizer()
    folder = tmp_path / "plain"
    tiny_base(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    assert perception_tokens(folder) == []
    with caplog.at_level("WARNING", logger="perceive"):
        model = load_model(folder)
    assert model.config.region is None and not model.config.branches and model.tokenizer is not None
    notices = [r.getMessage() for r in caplog.records if r.name == "perceive"]
    assert notices == [f"{folder} has no perceive.json and no perception tokens: loaded as a plain qwen2_vl model, "
                       "without perception branches (it calls perception actions only through a tool-call protocol "
                       "its chat template declares or the run config names, `protocol:`; re-encode actions need a VPT "
                       "model)"]


def test_paper_checkpoints_have_no_perceive_json_and_still_load():
    _require_fixtures()
    for variant in ("dino", "sam", "clip"):
        assert not (FIXTURES / variant / "perceive.json").exists()
        model = load_model(FIXTURES / variant)
        assert model.config.region is not None and model.config.branches


def test_loading_prints_no_progress_bar(capfd):
    from perceive.defaults import default_model_path
    from perceive.model import load_model

    load_model(default_model_path(), device="cpu", dtype="float32")
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err


def _plain_folder(tmp_path, name="plain"):
    from perceive.testing.tiny import tiny_base

    tok = _plain_tokenizer()
    folder = tmp_path / name
    tiny_base(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_corrupt_tokenizer_file_is_a_model_load_error_naming_it(saved, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from perceive.cli import app

    plain = _plain_folder(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        broken = _copy(plain, tmp_path, f"bad-{name}")
        (broken / name).write_text("{not json")
        with pytest.raises(ModelLoadError, match=f"{broken / name} is not valid JSON") as e:
            load_model(broken)
        assert "restore it from where the model came from" in e.value.hint
    (broken / "tokenizer_config.json").write_text("{}")
    (broken / "tokenizer.json").write_text('{"added_tokens": [{"content": "<|im_start|>"}]}')
    with pytest.raises(ModelLoadError, match=r"tokenizer.json is damaged: its added_tokens are not a table"):
        load_model(broken)
    own = _copy(saved[1], tmp_path, "own")  # perceive's format: transformers reads it, the error is ours
    (own / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read the tokenizer or image processor files"):
        load_model(own)
    # on the command line: `error: ...`, not an internal error
    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    bad = tmp_path / "bad-tokenizer.json"
    res = CliRunner().invoke(app, ["ask", str(img), "What?", "--model", str(bad), "--device", "cpu"])
    assert res.exit_code == 1, res.output
    assert "internal error" not in res.output and "tokenizer.json is not valid JSON" in " ".join(res.output.split())


def test_each_json_file_of_a_folder_is_read_once(tmp_path, monkeypatch):
    from collections import Counter
    from pathlib import Path

    plain = _plain_folder(tmp_path)
    reads, read_text = Counter(), Path.read_text

    def counted(self, *a, **kw):
        reads[self.name] += 1
        return read_text(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", counted)
    load_model(plain)
    assert reads["config.json"] == 1 and reads["tokenizer.json"] == 1, reads
    if FIXTURES.exists():  # a paper checkpoint: config.json once too
        reads.clear()
        load_model(FIXTURES / "dino")
        assert reads["config.json"] == 1, reads


def test_a_safetensors_header_length_over_the_format_limit_is_refused_unread(tmp_path):
    import struct

    from perceive.model.checkpoint import check_safetensors

    f = tmp_path / "model.safetensors"
    with f.open("wb") as out:  # claims a 150 MB header, and (sparsely) has the bytes
        out.write(struct.pack("<Q", 150_000_000))
        out.truncate(8 + 150_000_000 + 100)
    with pytest.raises(ModelLoadError, match=r"its header claims 150,000,000 bytes, over safetensors' limit of "
                                             r"100,000,000") as e:
        check_safetensors(f)
    assert "copy it again" in e.value.hint


def test_checkpoint_names_stay_importable_after_the_split():
    from perceive.model import checkpoint, checks

    for name in ("CONFIG_FILE", "WEIGHTS_FILE", "check_safetensors", "perception_tokens", "read_json",
                 "read_vpt_config", "strict_load", "base_classes", "image_processor"):
        assert hasattr(checkpoint, name), name
    assert checkpoint.read_json is checks.read_json
    from pathlib import Path

    assert len(Path(checkpoint.__file__).read_text().splitlines()) <= 400
