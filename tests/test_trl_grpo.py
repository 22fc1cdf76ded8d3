"""The TRL path for stock models: perceive's crop actions as tools of TRL's ``GRPOTrainer``
(``perceive.rl.trl_tools``), on a tiny random Qwen2.5-VL built here (no hub, no network).

As TRL's own tests do (``test_train_with_tools_multimodal_response``), the model's ``generate`` is
scripted, so the first turn surely calls the tool; everything else is TRL's: the tool loop, the
tool turn with the crop as an image, the forward of the loss, the optimizer step."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

trl = pytest.importorskip("trl")

from perceive.dispatch import FailureStage  # noqa: E402
from perceive.errors import ConfigError, UnknownActionError  # noqa: E402
from perceive.geometry import Box  # noqa: E402
from perceive.model.tiny import (  # noqa: E402
    CHAT_TEMPLATE,
    QWEN25_VL_TOOL_TEMPLATE,
    build_plain_tokenizer,
    tiny_base,
    tiny_image_processor,
)
from perceive.protocols.calls import ParseErrorKind  # noqa: E402
from perceive.rl.trl_tools import (  # noqa: E402
    Coordinates,
    CropTool,
    ToolCallError,
    enable_tool_calls,
    perception_environment,
    seen_size_of,
)

W, H = 224, 160
BOX = [40, 20, 100, 140]  # the scripted call's box: pixels of the original (DeepEyes' convention), portrait


def photo(seed: int) -> Image.Image:
    """Random pixels: a crop taken anywhere else cannot equal the right one by chance."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


@pytest.fixture
def env():
    tools = [CropTool(), CropTool(name="zoom_in", action="zoom", coordinates=Coordinates.RELATIVE_1000,
                                  action_options={"size": 64})]
    e = perception_environment(tools)()
    e.reset(image=photo(0), prompt=[{"role": "user", "content": "q"}])
    return e


# -- the tools on their own -----------------------------------------------------------------------

def test_the_crop_is_the_original_s_pixels_in_the_box(env):
    (block,) = env.image_zoom_in_tool(BOX, "card")
    assert block["type"] == "image"
    assert np.array_equal(pixels(block["image"]), pixels(photo(0).crop(tuple(BOX))))
    (hop,) = env.hops
    assert hop.ok and hop.action == "region_select" and hop.target == "root"
    assert hop.boxes == [Box(*BOX)]


def test_a_crop_of_a_crop_maps_exactly_to_the_original(env):
    env.image_zoom_in_tool(BOX)
    # zoom (relative 0-1000) on view 1: its right half, resampled to 64 px on the long side
    (block,) = env.zoom_in([500, 0, 1000, 1000], "card", img_idx=1)
    assert block["image"].size == (16, 64)
    assert env.hops[-1].boxes == [Box(70, 20, 100, 140)]
    expected = photo(0).crop((70, 20, 100, 140)).resize((16, 64), Image.Resampling.BICUBIC)
    assert np.array_equal(pixels(block["image"]), pixels(expected))


@pytest.mark.parametrize(("box", "img_idx", "kind", "words"), [
    ([10, 10, 5, 20], 0, ParseErrorKind.BAD_BOX, "degenerate box"),
    ([1, 2, 3], 0, ParseErrorKind.INVALID_ARGS, "list of 4 numbers"),
    ("40, 30, 140, 110", 0, ParseErrorKind.INVALID_ARGS, "list of 4 numbers"),
    ([0, 0, 20, 20], 0, ParseErrorKind.BAD_BOX, "short side must be over 30 px"),
    ([300, 300, 400, 400], 0, ParseErrorKind.BAD_BOX, "outside"),
    (BOX, 3, ParseErrorKind.UNKNOWN_VIEW, "img_idx 3 names no image"),
])
def test_a_malformed_call_is_a_typed_error_for_the_model(env, box, img_idx, kind, words):
    with pytest.raises(ToolCallError) as info:
        env.image_zoom_in_tool(box, img_idx=img_idx)
    assert info.value.kind is kind and words in str(info.value)
    assert str(info.value).startswith("image_zoom_in_tool: ") and "\n" not in str(info.value)
    (hop,) = env.hops
    assert not hop.ok and hop.views == () and words in hop.error


def test_an_action_that_fails_is_a_typed_error_too(env, monkeypatch):
    from perceive.plugins import get_registry

    def broken(call, context):
        raise RuntimeError("the plugin broke")

    monkeypatch.setattr(get_registry().action("region_select"), "run", broken)
    with pytest.raises(ToolCallError, match="the region_select action failed: the plugin broke") as info:
        env.image_zoom_in_tool(BOX)
    assert info.value.kind is FailureStage.RUN and env.hops[-1].action == "region_select"


def test_absolute_resized_boxes_are_in_the_pixels_the_model_saw():
    processor = tiny_image_processor()
    e = perception_environment([CropTool(coordinates="absolute_resized")], image_processor=processor)()
    e.reset(image=photo(1))
    sw, sh = seen_size_of(processor)(photo(1))
    assert (sw, sh) != (W, H)  # the processor resized it: the test means something
    e.image_zoom_in_tool([sw / 2, sh / 2, sw, sh])
    assert e.hops[-1].boxes == [Box(W // 2, H // 2, W, H)]


def test_each_rollout_starts_from_its_own_image(env):
    env.image_zoom_in_tool(BOX)
    env.reset(images=[photo(5)])
    assert env.hops == []
    with pytest.raises(ToolCallError, match="img_idx 1 names no image"):  # the last rollout's view is gone
        env.image_zoom_in_tool(BOX, img_idx=1)
    (block,) = env.image_zoom_in_tool(BOX)
    assert np.array_equal(pixels(block["image"]), pixels(photo(5).crop(tuple(BOX))))


@pytest.mark.parametrize(("row", "words"), [
    ({"prompt": "q"}, "has no PIL image"),
    ({"image": "photo.png"}, "has no PIL image"),
    ({"images": [photo(1), photo(2)]}, "holds 2 images"),
])
def test_a_row_without_an_image_is_a_config_error(row, words):
    e = perception_environment()()
    with pytest.raises(ConfigError, match=words) as info:
        e.reset(**row)
    assert "image" in info.value.hint


def test_an_image_with_an_exif_rotation_is_refused():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": a viewer shows it turned, the processor sees it as stored
    out = io.BytesIO()
    photo(2).save(out, "JPEG", exif=exif)
    with pytest.raises(ConfigError, match="EXIF orientation") as info:
        perception_environment()().reset(image=Image.open(out))
    assert "exif_transpose" in info.value.hint


@pytest.mark.parametrize(("tools", "error", "words"), [
    ([CropTool(action="crop")], UnknownActionError, "no perception action named 'crop'"),
    ([CropTool(action="tiles")], ConfigError, "takes no box"),
    ([CropTool(action="native")], ConfigError, "gives features"),
    ([CropTool(action="zoom", action_options={"size": 0})], ConfigError, "size"),
    ([CropTool(name="reset")], ConfigError, "cannot be an environment method"),
    ([CropTool(name="zoom-in")], ConfigError, "cannot be an environment method"),
    ([CropTool(), CropTool(action="zoom")], ConfigError, "tool names repeat"),
    ([CropTool(coordinates="absolute_resized")], ConfigError, "needs the size the model sees"),
    ([], ConfigError, "at least one CropTool"),
])
def test_a_tool_that_cannot_be_built_says_what_to_change(tools, error, words):
    with pytest.raises(error, match=words):
        perception_environment(tools)


def test_the_tool_schema_is_deepeyes_zoom_tool():
    from transformers.utils import get_json_schema

    schema = get_json_schema(perception_environment()().image_zoom_in_tool)["function"]
    assert schema["name"] == "image_zoom_in_tool"
    assert schema["parameters"]["required"] == ["bbox_2d"]
    assert schema["parameters"]["properties"]["bbox_2d"] == {
        "type": "array", "items": {"type": "number"},
        "description": "The region as [x1, y1, x2, y2], top-left then bottom-right corner, in pixels of that image"}


def test_a_template_without_tools_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot render tool calls") as info:
        enable_tool_calls(processor_for(CHAT_TEMPLATE))
    assert "tools section" in info.value.hint


def test_enable_tool_calls_reads_hermes_tool_calls():
    from trl.chat_template_utils import parse_response

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch image fields: nothing to warn about
        processor = enable_tool_calls(processor_for(QWEN25_VL_TOOL_TEMPLATE))
    tok = processor.tokenizer
    prompt = tok.encode("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n")
    call = parse_response(tok, tok.encode(tool_call([1, 2, 3, 4])), prefix=prompt)["tool_calls"][0]["function"]
    assert call == {"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3, 4], "label": "card"}}


def test_numpy_image_fields_are_warned_about():
    with pytest.warns(UserWarning, match="numpy image fields: TRL 1.16's tool loop"):
        enable_tool_calls(processor_for(QWEN25_VL_TOOL_TEMPLATE, tensors=False))


# -- GRPO through TRL -------------------------------------------------------------------------------

def processor_for(chat_template: str, tensors: bool = True):
    """A Qwen2.5-VL processor over the tiny tokenizer and image processor, as a GPU machine has it.
    Built without its video processor, which needs torchvision (not installed here); images are all
    this test sends. Its image fields are torch tensors, as the torchvision image processor gives
    them: the PIL one's numpy arrays break TRL 1.16's tool loop under ``environment_factory``
    (``split_pixel_values_by_grid`` on a list, when no tool call of a batch has returned an image)."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen25VLProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

        def apply_chat_template(self, *args, **kwargs):
            out = super().apply_chat_template(*args, **kwargs)
            for key in ("pixel_values", "image_grid_thw"):
                if tensors and kwargs.get("return_dict") and isinstance(out.get(key), np.ndarray):
                    out[key] = torch.from_numpy(out[key])
            return out

    tok = build_plain_tokenizer(chat_template)
    tok.padding_side = "left"
    return ImageOnlyQwen25VLProcessor(tiny_image_processor(), tok, chat_template=chat_template)


def tool_call(box) -> str:
    body = json.dumps({"name": "image_zoom_in_tool", "arguments": {"bbox_2d": box, "label": "card"}})
    return f"<tool_call>\n{body}\n</tool_call><|im_end|>"


class ScriptedGenerate:
    """``model.generate`` for the test: in each step's first turn rollout 0 calls the tool (step 1
    with a good box, step 2 with a degenerate one) and rollout 1 answers; after a tool turn, the
    model answers. Records what TRL fed it after each tool turn."""

    def __init__(self, tok):
        self.tok, self.step, self.after_tool = tok, 0, []

    def __call__(self, input_ids, **kwargs):
        texts = self.tok.batch_decode(input_ids)
        if any("<tool_response>" in t for t in texts):
            self.after_tool.append({"input_ids": input_ids.clone(), **{k: kwargs[k].clone() for k in
                                                                       ("pixel_values", "image_grid_thw")}})
            scripts = ["42<|im_end|>"] * len(texts)
        else:
            self.step += 1
            scripts = [tool_call(BOX if self.step == 1 else [60, 50, 20, 90]), "7<|im_end|>"]  # the answer is 42
        ids = [self.tok.encode(s) for s in scripts]
        width = max(map(len, ids))
        pad = self.tok.pad_token_id
        out = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=input_ids.device)
        return torch.cat([input_ids, out], dim=-1)


def final_text(completion) -> str:
    """The text of a rollout's last assistant turn (its answer)."""
    return next((str(m["content"]) for m in reversed(completion) if m["role"] == "assistant"), "").strip()


def correct(completions, answer, **kwargs):
    """1 when the last assistant turn is the answer."""
    return [float(final_text(c) == a) for c, a in zip(completions, answer, strict=True)]


def tool_bonus(completions, answer, environments, **kwargs):
    """DeepEyes' bonus: 1 when the answer is right and a crop was shown."""
    return [float(final_text(c) == a and any(h.ok for h in e.hops))
            for c, a, e in zip(completions, answer, environments, strict=True)]


@pytest.mark.slow
def test_grpo_trains_a_stock_qwen25_vl_whose_tool_is_perceive_s_crop(tmp_path, monkeypatch):
    """The code of docs/how-to/train-with-rewards.md's TRL section, on the tiny model, without
    vLLM: only what names the model, the sizes and the device differ."""
    from unittest.mock import patch

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    processor = enable_tool_calls(processor_for(QWEN25_VL_TOOL_TEMPLATE))
    model = tiny_base(processor.tokenizer, "qwen2_5_vl")
    images = [photo(10), photo(11)]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "What number is on the card?"}],
                                  "image": im, "answer": "42"} for im in images])
    seen = []  # per step: (hops, completions) of each rollout

    def spy(completions, environments, **kwargs):
        seen.append(([list(e.hops) for e in environments], completions))
        return [None] * len(completions)  # no reward: TRL leaves it out of the sum

    args = GRPOConfig(output_dir=str(tmp_path), num_generations=2, per_device_train_batch_size=2,
                      max_completion_length=512, max_tool_calling_iterations=4, learning_rate=0.1,
                      reward_weights=[1.0, 0.5, 1.0], mask_truncated_completions=True, bf16=False,
                      use_cpu=True, logging_steps=1, report_to="none",
                      max_steps=2, save_strategy="no", seed=0, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[correct, tool_bonus, spy], args=args, train_dataset=dataset,
                          processing_class=processor, environment_factory=perception_environment([CropTool()]))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    encoded = []  # the image grids the vision tower encoded with gradients on: the loss's forward

    def record(module, args, kwargs, output):
        if torch.is_grad_enabled():
            encoded.append(kwargs["grid_thw"].clone())

    trainer.model.model.visual.register_forward_hook(record, with_kwargs=True)
    generate = ScriptedGenerate(processor.tokenizer)
    with patch.object(trainer.model, "generate", side_effect=generate):
        trainer.train()

    # the optimizer step ran: every parameter moved (the vision tower too: it encoded the crop)
    unchanged = [n for n, p in trainer.model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []
    logs = [e for e in trainer.state.log_history if "tools/call_frequency" in e]
    assert [e["tools/call_frequency"] for e in logs] == [0.5, 0.5]
    assert [e["tools/failure_frequency"] for e in logs] == [0.0, 1.0]
    # the rollout that looked answered right (and was paid the bonus when its crop was shown)
    assert [e["rewards/correct/mean"] for e in logs] == [0.5, 0.5]
    assert [e["rewards/tool_bonus/mean"] for e in logs] == [0.5, 0.0]

    # step 1: the tool ran perceive's region_select on the rollout's own image ...
    (hop,), () = seen[0][0]
    assert hop.ok and hop.boxes == [Box(*BOX)]
    # ... and the model was fed that image and perceive's crop of it, in the tool turn
    fed = generate.after_tool[0]
    want = [processor.image_processor(images=[im, im.crop(tuple(BOX))], return_tensors="pt") for im in images]
    match = [torch.equal(w["pixel_values"], fed["pixel_values"]) and torch.equal(w["image_grid_thw"],
                                                                                  fed["image_grid_thw"])
             for w in want]
    assert sum(match) == 1
    pads = int((fed["input_ids"] == processor.image_token_id).sum())
    assert pads == int(fed["image_grid_thw"].prod(-1).sum()) // 4  # one pad per merged patch: no image dropped
    # the loss's forward encoded the crop too (TRL drops a sample's images when their tokens do not match)
    crop_grid, photo_grid = fed["image_grid_thw"][1], fed["image_grid_thw"][0]
    assert not torch.equal(crop_grid, photo_grid)
    assert any((grids == crop_grid).all(-1).any() for grids in encoded)
    # step 2: a degenerate box came back to the model as perceive's error, and the rollout went on
    (hop,), () = seen[1][0]
    assert not hop.ok and "degenerate box" in hop.error
    tool_turn = next(m for m in seen[1][1][0] if m["role"] == "tool")
    assert "degenerate box [60, 50, 20, 90]" in str(tool_turn["content"])
    assert seen[1][1][0][-1]["content"] == "42"
