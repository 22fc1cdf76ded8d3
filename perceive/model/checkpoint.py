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

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from perceive.errors import ConfigError, ModelLoadError, PerceiveError
from perceive.model import paper
from perceive.model.checks import (  # re-exported: perceive.model.checkpoint.read_json etc. keep working
    CONFIG_FILE,
    WEIGHTS_FILE,
    check_ids,
    check_safetensors,
    first_line,
    perception_tokens,
    read_json,
    read_vpt_config,
    token_table,
)
from perceive.model.config import VPTConfig
from perceive.model.tokenizer_checks import check_tokenizer, check_tokenizer_files
from perceive.model.vpt import VPTModel
from perceive.reencode.weights import strict_load  # noqa: F401 - part of the plugin API, importable here as before

VIEW_PROCESSOR_DIR = "view_processor"  # how crops and other views are shown, when it differs
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def base_classes(base: str):
    if base == "qwen3_vl":
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        return Qwen3VLConfig, Qwen3VLForConditionalGeneration
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


log = logging.getLogger("perceive")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None): CUDA when there is one, else the CPU. A device this machine does not
    have is a :class:`~perceive.errors.ConfigError`, not a failure halfway through loading."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {device!r}", hint="use cpu, cuda, cuda:1, ..., mps or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but CUDA is not available on this machine",
                              hint="use --device cpu (or auto, which picks CUDA only when there is one)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} "
                              "CUDA device(s)", hint="use cuda:0 .. cuda:N-1, or auto")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {device!r} asked for, but MPS is not available on this machine",
                          hint="use --device cpu or auto")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}", hint=f"use {', '.join(DTYPES)} or auto")
    return DTYPES[dtype]


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
    try:
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
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ModelLoadError(f"cannot read the tokenizer or image processor files in {path}: "
                             f"{type(exc).__name__}: {first_line(exc)}",
                             hint="check tokenizer.json, tokenizer_config.json and preprocessor_config.json "
                                  "(restore them from where the model came from)") from exc


def _from_pretrained(kind: str, path: Path, dtype: torch.dtype):
    """The base MLLM from ``path`` (standard transformers layout), strictly: truncated weights, a
    ``config.json`` whose sizes do not match the weights, or weights missing from the checkpoint
    are a :class:`ModelLoadError` naming the files, never a model with random tensors."""
    files = sorted(path.glob("*.safetensors"))
    weights = [f for f in files if f.name != WEIGHTS_FILE]
    if not weights and not any(path.glob("pytorch_model*.bin")):
        raise ModelLoadError(f"{path} has a config.json but no weights (model.safetensors)",
                             hint="copy the weights files into the folder")
    for f in weights:  # before the (slow) transformers import: a truncated file fails at once
        check_safetensors(f)
    shown = weights[0] if len(weights) == 1 else path
    _, base_cls = base_classes(kind)
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # its load report would repeat what the error below says
    hf_logging.disable_progress_bar()  # a "Loading weights" bar on every CLI run says nothing
    try:
        base, info = base_cls.from_pretrained(str(path), local_files_only=True, dtype=dtype,
                                              ignore_mismatched_sizes=True, output_loading_info=True)
    except MemoryError:
        raise
    except Exception as exc:  # transformers raises many kinds; each means the folder is unusable
        raise ModelLoadError(f"cannot load the model in {path}: {type(exc).__name__}: {first_line(exc)}",
                             hint="check that config.json and the weights files belong together and are complete"
                             ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: m[0])
    if mismatched:
        def fmt(m):
            key, ckpt, model = m
            return f"{key}: weights {tuple(ckpt)}, config {tuple(model)}"

        raise ModelLoadError(
            f"{path / 'config.json'} does not match the weights in {shown}: {len(mismatched)} tensor(s) have other "
            f"shapes, e.g. {'; '.join(fmt(m) for m in mismatched[:3])}",
            hint="config.json must be the one saved with these weights (check text_config.hidden_size, "
                 "intermediate_size, num_hidden_layers, vocab_size and vision_config); restore it from where the "
                 "model came from")
    missing = info.get("missing_keys") or []
    if missing:
        keys = sorted(missing)
        raise ModelLoadError(
            f"{shown} lacks {len(keys)} tensor(s) that {path / 'config.json'} asks for: {', '.join(keys[:6])}"
            + (f" ... (+{len(keys) - 6})" if len(keys) > 6 else ""),
            hint="the weights are incomplete or belong to another model; nothing is left randomly initialised")
    return base


def load_model(path: str | Path, *, device: str | None = "cpu", dtype: str | None = None) -> VPTModel:
    """Load a VPT model from a local folder: the project's format, the paper's released
    format, or a plain Qwen2-VL / Qwen2.5-VL / Qwen3-VL folder (no perception branches: a stock or
    tool-calling checkpoint, with its own tokenizer, chat template and image processor).
    Qwen3-VL-MoE folders are refused (:func:`qwen3_vl_refusal` says why).

    Every problem with the folder is a :class:`~perceive.errors.ModelLoadError` or, for a config
    file (``config.json``, ``perceive.json``) that is malformed, a
    :class:`~perceive.errors.ConfigError`, naming the file and what to do."""
    if path is None or not str(path).strip():
        raise ModelLoadError("no model folder given", hint="pass the path of a local model folder")
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model folder not found: {path}",
                             hint="pass a local folder; perceive never downloads models")
    if not path.is_dir():
        raise ModelLoadError(f"{path} is a file, not a model folder",
                             hint="pass the folder that holds config.json and the weights")
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} is not a model folder (no config.json)",
                             hint="pass a local folder; perceive never downloads models")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    raw = read_json(path / "config.json", "config.json")  # read once, here
    own = (path / CONFIG_FILE).exists()
    # the tokenizer's files before the (slow) weights: a folder missing one of them fails at once (a folder
    # without any, such as a paper checkpoint with tokens.json alone or its conversion, loads without a tokenizer)
    check_tokenizer_files(path)
    if own:
        model = _load_own(path, dt)
    elif raw.get("model_type") in paper.MODEL_TYPES:
        model = _load_paper(path, raw)
    else:
        model = _load_plain(path, dt, raw)
    _load_side_files(model, path)
    if model.tokenizer is not None:  # the folder as a whole: tokenizer, ids and chat template agree
        check_tokenizer(model.tokenizer, model.config, model.specs, path, CONFIG_FILE if own else "config.json",
                        rows=model.base.get_input_embeddings().num_embeddings)
    return model.to(dev, dt).eval()


def _load_own(path: Path, dtype: torch.dtype) -> VPTModel:
    cfg = read_vpt_config(path)
    base = _from_pretrained(cfg.base, path, dtype)
    check_ids(cfg, base, path / CONFIG_FILE)
    model = VPTModel(base, cfg)
    if cfg.branches:
        wf = path / WEIGHTS_FILE
        if not wf.exists():
            raise ModelLoadError(f"{wf} is missing but {CONFIG_FILE} names branches {sorted(cfg.branches)}",
                                 hint=f"copy {WEIGHTS_FILE} saved with this model into the folder")
        check_safetensors(wf)
        try:
            state = load_file(str(wf))
        except Exception as exc:  # safetensors' own error type
            raise ModelLoadError(f"cannot read {wf}: {first_line(exc)}",
                                 hint="the file is damaged; copy it again from where the model came from") from exc
        strict_load(model.branches, state, str(wf))
    return model


def load_paper(path: str | Path) -> VPTModel:
    """Build from the paper's config and load its ``.bin`` shards strictly."""
    path = Path(path)
    return _load_paper(path, read_json(path / "config.json", "config.json"))


def _load_paper(path: Path, raw: dict[str, Any]) -> VPTModel:
    try:
        cfg = paper.vpt_config(path, raw)
        config_cls, base_cls = base_classes("qwen2_vl")
        base = base_cls(config_cls(**paper.base_config_dict(raw)))
        model = VPTModel(base, cfg)
        state = paper.read_state(path)
    except (PerceiveError, MemoryError):
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load the paper checkpoint in {path}: {type(exc).__name__}: {first_line(exc)}",
                             hint="check that config.json and the pytorch_model*.bin shards are complete and belong "
                                  "together") from exc
    tied = {"base.lm_head.weight"} if base.config.tie_word_embeddings else set()
    strict_load(model, paper.convert_state(state, model), str(path), allow_missing=tied)
    if tied:
        base.tie_weights()
    return model


QWEN3_VL_TYPES = ("qwen3_vl", "qwen3_vl_moe")
UNSUPPORTED_QWEN3 = ("qwen3_vl_moe",)


def qwen3_vl_refusal(path: Path, raw: dict[str, Any]) -> tuple[str, str]:
    """Why a Qwen3-VL-MoE folder is refused (message, hint). Dense Qwen3-VL runs: the engine
    carries its deepstack features (one tensor per entry of ``vision_config.deepstack_visual_indexes``
    that the text model adds to the hidden states at the image positions after each of its first
    layers) with each step's visual mask. The MoE text model is another class that perceive's
    engine and tests do not cover (its routed experts, and its deepstack path, untested here), so
    it is refused rather than run unchecked."""
    vision = raw.get("vision_config") if isinstance(raw.get("vision_config"), dict) else {}
    layers = vision.get("deepstack_visual_indexes", [8, 16, 24])
    return (f"{path}: model_type {raw.get('model_type')!r} (Qwen3-VL-MoE) is not supported yet: perceive runs dense "
            f"Qwen3-VL (qwen3_vl) with its deepstack features (vision_config.deepstack_visual_indexes = "
            f"{list(layers)}) carried through the loop, but its engine is not checked against the MoE text model, "
            "so it could answer wrongly without an error",
            "use a dense Qwen3-VL, a Qwen2-VL or a Qwen2.5-VL checkpoint; see docs/how-to/use-a-tool-calling-model.md")


def _load_plain(path: Path, dtype: torch.dtype, raw: dict[str, Any]) -> VPTModel:
    from perceive.model.config import SpecialIds

    kind = raw.get("model_type")
    if kind in UNSUPPORTED_QWEN3:
        message, hint = qwen3_vl_refusal(path, raw)
        raise ModelLoadError(message, hint=hint)
    if kind not in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        raise ModelLoadError(f"{path}: model_type {kind!r} is not supported",
                             hint="perceive loads Qwen2-VL, Qwen2.5-VL, Qwen3-VL and VPT checkpoints")
    table = token_table(path)  # tokens.json and tokenizer.json, read once
    found = perception_tokens(path, table)
    if found:
        shown = ", ".join(found[:4]) + (f" (+{len(found) - 4} more)" if len(found) > 4 else "")
        raise ModelLoadError(
            f"{path} has no {CONFIG_FILE}, but its tokenizer carries perception tokens ({shown}): perceive cannot "
            "tell which token is which action, nor load the perception branches",
            hint=f"for one of the paper's checkpoints, config.json should say model_type 'qwen2_vl_vpt' or "
                 f"'vrt_qwen2_vl' (then `perceive convert SRC DST` writes perceive's format); for a model saved by "
                 f"perceive, restore {CONFIG_FILE} (and {WEIGHTS_FILE}) from where it came from")
    base = _from_pretrained(kind, path, dtype)
    c = base.config
    special = SpecialIds(im_start=table.get("<|im_start|>", 151644), im_end=table.get("<|im_end|>", 151645),
                         image_pad=c.image_token_id, vision_start=c.vision_start_token_id,
                         vision_end=c.vision_end_token_id)
    cfg = VPTConfig(base=kind, hidden_size=c.text_config.hidden_size, special=special)
    log.warning("%s has no %s and no perception tokens: loaded as a plain %s model, without perception branches "
                "(it calls perception actions only through a tool-call protocol its chat template declares or the run "
                "config names, `protocol:`; re-encode actions need a VPT model)", path, CONFIG_FILE, kind)
    return VPTModel(base, cfg)


def convert(src: str | Path, dst: str | Path) -> Path:
    """Convert a paper checkpoint folder into the project's format."""
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise ModelLoadError(f"the destination {dst} is a file; convert writes a model folder",
                             hint="pass the path of a new folder")
    model = load_model(src, device="cpu", dtype="float32")
    return save_model(model, dst)
