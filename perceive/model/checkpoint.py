"""Saving and loading VPT models. Local paths only: nothing is fetched from a hub.

The project's format, a folder with

* the base MLLM in standard transformers layout (``config.json``, ``model.safetensors``,
  tokenizer and processor files): plain ``Qwen2VLForConditionalGeneration.from_pretrained``
  loads it;
* ``perception.safetensors``: the branches (encoders and projectors), keys ``<action>.*``;
* ``perceive.json``: :class:`~perceive.model.config.VPTConfig`.

:func:`load_model` also reads the paper's released checkpoints directly, and a plain Qwen2-VL
folder (a model without perception branches, for graphs that need none).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from perceive.errors import ModelLoadError
from perceive.model import paper
from perceive.model.config import VPTConfig
from perceive.model.vpt import VPTModel

CONFIG_FILE = "perceive.json"
VIEW_PROCESSOR_DIR = "view_processor"  # how crops and other views are shown, when it differs
WEIGHTS_FILE = "perception.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def base_classes(base: str):
    if base == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    return Qwen2VLConfig, Qwen2VLForConditionalGeneration


def image_processor(min_pixels: int = 28 * 28, max_pixels: int = 112 * 112, merge: int = 2):
    """A Qwen2-VL image processor (PIL backend: no torchvision needed) with these pixel bounds;
    ``merge`` must equal the vision tower's ``spatial_merge_size``."""
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, merge_size=merge)


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def strict_load(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                allow_missing: set[str] = frozenset()) -> None:
    """Load ``state``; any missing or unexpected key is a :class:`ModelLoadError` listing them
    (the reference silently kept random weights instead)."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in allow_missing]
    if missing or result.unexpected_keys:
        def show(keys):
            return ", ".join(keys[:12]) + (f" ... (+{len(keys) - 12})" if len(keys) > 12 else "")

        raise ModelLoadError(
            f"{source} does not match the model: {len(missing)} missing keys [{show(missing)}], "
            f"{len(result.unexpected_keys)} unexpected keys [{show(result.unexpected_keys)}]",
            hint="check that the checkpoint and its config belong together; nothing was loaded partially",
        )


def save_model(model: VPTModel, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.base.save_pretrained(path)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(path)
    if model.image_processor is not None:
        model.image_processor.save_pretrained(path)
    if getattr(model, "view_image_processor", None) is not None:
        model.view_image_processor.save_pretrained(path / VIEW_PROCESSOR_DIR)
    (path / CONFIG_FILE).write_text(model.config.model_dump_json(indent=2))
    state = {k: v.detach().contiguous() for k, v in model.branches.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE), metadata={"format": "perceive-vpt"})
    return path


def _load_side_files(model: VPTModel, path: Path) -> None:
    if (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        model.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    from transformers import Qwen2VLImageProcessorPil

    if (path / "preprocessor_config.json").exists():
        model.image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(path), local_files_only=True)
    else:
        model.image_processor = Qwen2VLImageProcessorPil()
    view = path / VIEW_PROCESSOR_DIR
    if (view / "preprocessor_config.json").exists():
        model.view_image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(view), local_files_only=True)


def load_model(path: str | Path, *, device: str | None = "cpu", dtype: str | None = None) -> VPTModel:
    """Load a VPT model from a local folder: the project's format, the paper's released
    format, or a plain Qwen2-VL / Qwen2.5-VL folder (no perception branches)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} is not a model folder (no config.json)",
                             hint="pass a local folder; perceive never downloads models")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if (path / CONFIG_FILE).exists():
        model = _load_own(path, dt)
    elif paper.is_paper_checkpoint(path):
        model = load_paper(path)
    else:
        model = _load_plain(path, dt)
    _load_side_files(model, path)
    return model.to(dev, dt).eval()


def _load_own(path: Path, dtype: torch.dtype) -> VPTModel:
    cfg = VPTConfig.model_validate_json((path / CONFIG_FILE).read_text())
    _, base_cls = base_classes(cfg.base)
    base = base_cls.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    model = VPTModel(base, cfg)
    if cfg.branches:
        wf = path / WEIGHTS_FILE
        if not wf.exists():
            raise ModelLoadError(f"{wf} is missing but {CONFIG_FILE} names branches {sorted(cfg.branches)}")
        strict_load(model.branches, load_file(str(wf)), str(wf))
    return model


def load_paper(path: str | Path) -> VPTModel:
    """Build from the paper's config and load its ``.bin`` shards strictly."""
    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    cfg = paper.vpt_config(path, raw)
    config_cls, base_cls = base_classes("qwen2_vl")
    base = base_cls(config_cls(**paper.base_config_dict(raw)))
    model = VPTModel(base, cfg)
    tied = {"base.lm_head.weight"} if base.config.tie_word_embeddings else set()
    strict_load(model, paper.convert_state(paper.read_state(path), model), str(path), allow_missing=tied)
    if tied:
        base.tie_weights()
    return model


def _load_plain(path: Path, dtype: torch.dtype) -> VPTModel:
    from perceive.model.config import SpecialIds

    raw = json.loads((path / "config.json").read_text())
    kind = raw.get("model_type")
    if kind not in ("qwen2_vl", "qwen2_5_vl"):
        raise ModelLoadError(f"{path}: model_type {kind!r} is not supported",
                             hint="perceive loads Qwen2-VL, Qwen2.5-VL and VPT checkpoints")
    _, base_cls = base_classes(kind)
    base = base_cls.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    c = base.config
    table = paper.token_table(path)
    special = SpecialIds(im_start=table.get("<|im_start|>", 151644), im_end=table.get("<|im_end|>", 151645),
                         image_pad=c.image_token_id, vision_start=c.vision_start_token_id,
                         vision_end=c.vision_end_token_id)
    cfg = VPTConfig(base=kind, hidden_size=c.text_config.hidden_size, special=special)
    return VPTModel(base, cfg)


def convert(src: str | Path, dst: str | Path) -> Path:
    """Convert a paper checkpoint folder into the project's format."""
    model = load_model(src, device="cpu", dtype="float32")
    return save_model(model, dst)
