"""Tiny offline models, for training from scratch (``model.tiny`` in a training config) and for
tests: a char-level tokenizer carrying the Qwen2-VL and VPT special
tokens, and random-weight VPT models (Qwen2-VL / Qwen2.5-VL bases) with any of the installed
re-encode branches, at the small sizes each branch's plugin gives
(:meth:`perceive.BranchSpec.tiny_config`). Nothing is downloaded.
"""

from __future__ import annotations

import string

import torch

from perceive.vocabulary import Vocabulary

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# The Qwen2-VL chat layout (vpt-paper.md §1.7), written for the tiny tokenizer.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# A Qwen-family chat template with a tool section, written for the tiny tokenizers after each
# family's documented format (docs/reference/peers.md): tools passed to apply_chat_template are
# declared in the system turn in a ``# Tools ... <tools></tools>`` block, assistant calls render
# as ``<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>``, and consecutive tool
# messages become one user turn, each ``\n<tool_response>\n...\n</tool_response>``. Qwen2.5-VL's
# (verl's merged tool template) adds the default system prompt, Qwen3-VL's adds none.
_TOOL_TEMPLATE = r"""
{%- macro body(c) -%}
{%- if c is string -%}{{- c -}}{%- else -%}{%- for p in c -%}
{%- if p['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
{%- elif p['type'] == 'text' -%}{{- p['text'] -}}{%- endif -%}{%- endfor -%}{%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(system=none) -%}
{%- if messages and messages[0]['role'] == 'system' -%}{%- set ns.system = body(messages[0]['content']) -%}{%- endif -%}
{%- if tools -%}
{{- '<|im_start|>system\n' -}}
{%- if ns.system is not none -%}{{- ns.system + '\n\n' -}}{%- else -%}{{- '@TOOLS_DEFAULT@' -}}{%- endif -%}
{{- '@HEADER@' -}}
{%- for t in tools -%}{{- '\n' + (t | tojson) -}}{%- endfor -%}
{{- '@FOOTER@' -}}
{%- elif ns.system is not none -%}
{{- '<|im_start|>system\n' + ns.system + '<|im_end|>\n' -}}
{%- else -%}
{{- '@DEFAULT@' -}}
{%- endif -%}
{%- for m in messages -%}
{%- if m['role'] == 'system' and loop.first -%}
{%- elif m['role'] == 'tool' -%}
{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}
{{- '\n<tool_response>\n' + body(m['content']) + '\n</tool_response>' -}}
{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}{{- '<|im_end|>\n' -}}{%- endif -%}
{%- else -%}
{{- '<|im_start|>' + m['role'] + '\n' + body(m['content']) -}}
{%- if m['role'] == 'assistant' and m.tool_calls -%}
{%- for tc in m.tool_calls -%}
{%- set f = tc.function if tc.function is defined else tc -%}
{%- if body(m['content']) or not loop.first -%}{{- '\n' -}}{%- endif -%}
{{- '<tool_call>\n{"name": "' + f.name + '", "arguments": ' -}}
{%- if f.arguments is string -%}{{- f.arguments -}}{%- else -%}{{- f.arguments | tojson -}}{%- endif -%}
{{- '}\n</tool_call>' -}}
{%- endfor -%}
{%- endif -%}
{{- '<|im_end|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
"""

_HEADER = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
           "function signatures within <tools></tools> XML tags:\n<tools>")
_FOOTER = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
           "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
           "<args-json-object>}\n</tool_call><|im_end|>\n")
_TOOL_TEMPLATE = _TOOL_TEMPLATE.replace("@HEADER@", _HEADER.replace("\n", "\\n")).replace(
    "@FOOTER@", _FOOTER.replace("\n", "\\n"))

#: Qwen2.5-VL with verl's tool template: the default system prompt, tools declared when given
QWEN25_VL_TOOL_TEMPLATE = _TOOL_TEMPLATE.strip().replace(
    "@TOOLS_DEFAULT@", "You are a helpful assistant.\\n\\n").replace(
    "@DEFAULT@", "<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n")
#: Qwen3-VL: no default system prompt; tools declared in the system turn when given
QWEN3_VL_TEMPLATE = _TOOL_TEMPLATE.strip().replace("@TOOLS_DEFAULT@", "").replace("@DEFAULT@", "")


def _specs(branches, registry=None) -> list:
    """The registered branch specs named by ``branches`` (None: every installed branch)."""
    from perceive.plugins import get_registry

    registry = registry or get_registry()
    if branches is None:
        return list(registry.branch_specs().values())
    return [registry.branch(b) for b in branches]


def build_tokenizer(grid: int = 8, branches=None, extra_tokens=(), registry=None):
    """A char-level ``PreTrainedTokenizerFast``: one token per printable ASCII character, then the
    Qwen2-VL special tokens, then the VPT tokens of the named re-encode ``branches`` (None: every
    installed one; feature pads as special tokens, the rest as ordinary added tokens, as the paper
    adds them)."""
    specs = _specs(branches, registry)
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["<unk>"] + list(string.printable[:-2])  # drop \x0b \x0c
    vocab = {c: i for i, c in enumerate(dict.fromkeys(chars))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>")
    fast.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS + [s.tokens.pad for s in specs]})
    vocab_ = Vocabulary(grid)
    ordinary = list(vocab_.region_tokens) + ["<|zoom_start|>", "<|zoom_end|>"]
    for s in specs:
        ordinary += list(s.tokens.span)
    fast.add_tokens(ordinary + list(extra_tokens))
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_plain_tokenizer(chat_template: str = CHAT_TEMPLATE):
    """A char-level tokenizer with the Qwen2-VL special tokens and none of perceive's (a stock
    model's vocabulary), with ``chat_template``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(dict.fromkeys(["<unk>", *string.printable[:-2]]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>")
    fast.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    fast.chat_template = chat_template
    return fast


def tiny_qwen3_vl(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0):
    """A random-weight stock Qwen3-VL (transformers' ``Qwen3VLForConditionalGeneration``, its
    vision tower with one deepstack merger) whose vocabulary fits ``tokenizer``."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    head_dim = hidden // heads
    half = head_dim // 2
    text = dict(vocab_size=(len(tokenizer) + 63) // 64 * 64, hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=2, head_dim=head_dim,
                max_position_embeddings=4096, bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                pad_token_id=ids("<|endoftext|>"),
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_interleaved": True,
                                 "mrope_section": [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                  num_position_embeddings=64, deepstack_visual_indexes=[0])
    cfg = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                        video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                        vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=False)
    torch.manual_seed(seed)
    return Qwen3VLForConditionalGeneration(cfg).eval()


def save_tiny_stock_model(path, family: str = "qwen2_5_vl", seed: int = 0, chat_template: str | None = None):
    """A tiny random-weight stock checkpoint folder as a user would have it (no ``perceive.json``):
    transformers' own weights and config, a tokenizer with the family's chat template (tools
    section included), the image processor. ``family``: ``qwen2_5_vl`` or ``qwen3_vl``."""
    from pathlib import Path

    path = Path(path)
    if family == "qwen3_vl":
        tok = build_plain_tokenizer(QWEN3_VL_TEMPLATE if chat_template is None else chat_template)
        base = tiny_qwen3_vl(tok, seed=seed)
        processor = image_processor_for(32 * 32, 128 * 128, patch=16)
    else:
        tok = build_plain_tokenizer(QWEN25_VL_TOOL_TEMPLATE if chat_template is None else chat_template)
        base = tiny_base(tok, family, seed=seed)
        processor = tiny_image_processor()
    path.mkdir(parents=True, exist_ok=True)
    base.save_pretrained(path)
    tok.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def image_processor_for(min_pixels: int, max_pixels: int, patch: int = 14, merge: int = 2):
    """A Qwen2-VL image processor (PIL backend) with another patch size (Qwen3-VL's is 16)."""
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch, merge_size=merge)


def tiny_image_processor(min_pixels: int = 28 * 28, max_pixels: int = 112 * 112):
    """A Qwen2-VL image processor (PIL backend) with the given pixel bounds."""
    from perceive.model.checkpoint import image_processor

    return image_processor(min_pixels, max_pixels)


def tiny_base(tokenizer, base: str = "qwen2_vl", hidden: int = 64, layers: int = 2, seed: int = 0, heads: int = 4,
              kv_heads: int = 2, vision_depth: int = 2, vision_dim: int = 32, vision_heads: int = 2,
              rope_theta: float = 10000.0, merge: int = 2):
    """A random-weight Qwen2-VL (or Qwen2.5-VL) of the given sizes whose vocabulary and special
    token ids fit ``tokenizer``."""
    from perceive.model.checkpoint import base_classes

    ids = tokenizer.convert_tokens_to_ids
    specials = dict(bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                    pad_token_id=ids("<|endoftext|>"))
    # M-RoPE sections in Qwen2-VL's proportions (16, 24, 24 of 64): they sum to head_dim / 2
    half = hidden // heads // 2
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    text = dict(vocab_size=(len(tokenizer) + 63) // 64 * 64, hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                max_position_embeddings=4096, rope_scaling={"type": "mrope", "mrope_section": mrope},
                rope_theta=rope_theta, **specials)
    if base == "qwen2_5_vl":
        vision = dict(depth=vision_depth, hidden_size=vision_dim, out_hidden_size=hidden,
                      intermediate_size=2 * vision_dim, num_heads=vision_heads, window_size=56,
                      fullatt_block_indexes=[vision_depth - 1], spatial_merge_size=merge)
    else:
        vision = dict(depth=vision_depth, embed_dim=vision_dim, hidden_size=hidden, num_heads=vision_heads,
                      spatial_merge_size=merge)
    config_cls, model_cls = base_classes(base)
    cfg = config_cls(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                     video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                     vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=False, **specials)
    torch.manual_seed(seed)
    return model_cls(cfg).eval()


def tiny_vpt_config(tokenizer, base: str = "qwen2_vl", branches=None, hidden: int = 64, grid: int = 8,
                    registry=None):
    """The ``perceive.json`` of a tiny model: ``tokenizer``'s ids, and the named re-encode
    ``branches`` (None: every installed one) at their plugins' tiny sizes."""
    from perceive.model.config import BranchConfig, RegionConfig, SpecialIds, VPTConfig
    from perceive.plugins import get_registry

    registry = registry or get_registry()
    ids = tokenizer.convert_tokens_to_ids
    v = Vocabulary(grid)
    bcfg = {}
    for spec in _specs(branches, registry):
        tok = dict(zip(("start_id", "action_id", "end_id", "pad_id"), (ids(t) for t in spec.tokens.all), strict=True))
        if any(i is None or i == tokenizer.unk_token_id for i in tok.values()):
            raise ValueError(f"the tokenizer lacks the {spec.name} branch's tokens {list(spec.tokens.all)}")
        bcfg[spec.name] = BranchConfig(action=spec.name, **tok, **spec.tiny_config(hidden),
                                       plugin=registry.branches[spec.name].dist)
    return VPTConfig(
        base=base, hidden_size=hidden,
        special=SpecialIds(im_start=ids("<|im_start|>"), im_end=ids("<|im_end|>"), image_pad=ids("<|image_pad|>"),
                           vision_start=ids("<|vision_start|>"), vision_end=ids("<|vision_end|>"),
                           newline=ids("\n"), eos=[ids("<|im_end|>")]),
        region=RegionConfig(start_id=ids(v.region_tokens[0]), end_id=ids(v.region_tokens[1]),
                            x_ids=[ids(t) for t in v.x_tokens], y_ids=[ids(t) for t in v.y_tokens]),
        branches=bcfg,
    )


def tiny_vpt_model(base: str = "qwen2_vl", branches=None, seed: int = 0, tokenizer=None, registry=None):
    """A random-weight VPT model with its tokenizer and image processor attached; ``branches``:
    the re-encode branches it carries (None: every installed one)."""
    from perceive.model.vpt import VPTModel

    tokenizer = tokenizer or build_tokenizer(registry=registry)
    cfg = tiny_vpt_config(tokenizer, base, branches, registry=registry)
    torch.manual_seed(seed)
    model = VPTModel(tiny_base(tokenizer, base, seed=seed), cfg, registry=registry).eval()
    model.tokenizer = tokenizer
    model.image_processor = tiny_image_processor()
    return model


__all__ = ["CHAT_TEMPLATE", "QWEN25_VL_TOOL_TEMPLATE", "QWEN3_VL_TEMPLATE", "QWEN_SPECIALS", "build_plain_tokenizer",
           "build_tokenizer", "image_processor_for", "save_tiny_stock_model", "tiny_base", "tiny_image_processor",
           "tiny_qwen3_vl", "tiny_vpt_config", "tiny_vpt_model"]
