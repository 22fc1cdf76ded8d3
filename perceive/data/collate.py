"""From conversations to model inputs.

Each turn is rendered with the model's own chat template; user-turn placeholders become image
blocks (``<image>``: the Qwen2-VL vision pads, one per merged patch; each re-encode branch's own
placeholder, e.g. ``<NAME_image>``: that branch's feature pads, as many as its preprocessing
says, as the paper's data plugin expands them, §1.5). The branch's plugin preprocesses those
images (:meth:`perceive.BranchSpec.preprocess`) and batches them (``batch["extra"][branch]``).
Labels follow the paper (§2.8): every assistant turn is supervised (its content and
``<|im_end|>``), everything else is -100, and the middle action token of each re-encode branch is
never a target.
Positions are computed as at inference, so training and generation agree: the model's
``config.positions`` (M-RoPE, or 1-D ``"sequential"`` as the reference trains, §2.6) unless the
collator is told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perceive.data.dataset import Example
from perceive.model.positions import sequence_positions
from perceive.model.vpt import IGNORE_INDEX


def extra_placeholders(model, registry=None) -> dict[str, tuple[str, str]]:
    """Each re-encode branch's message placeholder -> ``(branch, dataset key)``: the model's own
    branches, then every other installed one (whose placeholder in data is an error for this model)."""
    from perceive.plugins import get_registry

    specs = dict(getattr(model, "specs", {}))
    for name, spec in (registry or get_registry()).branch_specs().items():
        specs.setdefault(name, spec)
    return {s.message_placeholder: (name, s.images_key) for name, s in specs.items()}


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    positions: torch.Tensor  # (3, L)
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    extra: dict[str, list]  # branch -> the tensors of each of its images (BranchInput.tensors)


class Collator:
    """Encode examples for a :class:`~perceive.model.vpt.VPTModel` (its tokenizer, processors and
    config). Every image after the first (crops) goes through ``model.view_pixels``."""

    def __init__(self, model, positions: str | None = None, max_length: int | None = None):
        self.model = model
        self.tok = model.tokenizer
        self.cfg = model.config
        self.proc = model.image_processor
        self.merge = model.spatial_merge_size
        self.positions = positions or model.config.positions
        self.max_length = max_length
        self.image_pad = self.tok.convert_ids_to_tokens(self.cfg.special.image_pad)
        self.vs = self.tok.convert_ids_to_tokens(self.cfg.special.vision_start)
        self.ve = self.tok.convert_ids_to_tokens(self.cfg.special.vision_end)
        self.extra_placeholders = extra_placeholders(model)

    def _render(self, messages) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def encode(self, ex: Example) -> Encoded:
        images = list(ex.images.get("images", []))
        pix, grids = [], []
        extra: dict[str, list] = {}
        counters = {k: 0 for k in ("images", *(v[1] for v in self.extra_placeholders.values()))}

        def expand(text: str) -> str:
            out, i = [], 0
            while i < len(text):
                if text.startswith("<image>", i):
                    img = images[counters["images"]]
                    if counters["images"] == 0:
                        inputs = self.proc(images=[img], return_tensors="pt")
                        px, grid = inputs["pixel_values"], inputs["image_grid_thw"][0]
                    else:  # views: the model's own zoom and processor, as in the loop
                        px, grid = self.model.view_pixels(img)
                    counters["images"] += 1
                    pix.append(px)
                    grids.append(grid)
                    n = int(grid.prod()) // self.merge**2
                    out.append(self.vs + self.image_pad * n + self.ve)
                    i += len("<image>")
                    continue
                for ph, (action, key) in self.extra_placeholders.items():
                    if text.startswith(ph, i):
                        out.append(self._extra_block(action, key, ex, counters, extra))
                        i += len(ph)
                        break
                else:
                    out.append(text[i])
                    i += 1
            return "".join(out)

        msgs = [{"role": m["role"], "content": expand(m["content"]) if m["role"] == "user" else m["content"]}
                for m in ex.messages]
        ids: list[int] = []
        labels: list[int] = []
        prev = ""
        for k in range(len(msgs)):
            text = self._render(msgs[: k + 1])
            piece = text[len(prev):] if text.startswith(prev) else text
            prev = text
            if msgs[k]["role"] != "assistant":
                t = self.tok.encode(piece, add_special_tokens=False)
                ids += t
                labels += [IGNORE_INDEX] * len(t)
                continue
            content = msgs[k]["content"]
            at = piece.index(content) if content else piece.index("<|im_end|>")
            head, body, tail = piece[:at], piece[at:at + len(content)], piece[at + len(content):]
            h = self.tok.encode(head, add_special_tokens=False)
            b = self.tok.encode(body, add_special_tokens=False)
            t = self.tok.encode(tail, add_special_tokens=False)
            ids += h + b + t
            # the content and the <|im_end|> that closes it are targets
            sup_tail = [t[0]] + [IGNORE_INDEX] * (len(t) - 1) if t else []
            labels += [IGNORE_INDEX] * len(h) + b + sup_tail
        for branch in self.cfg.branches.values():
            labels = [IGNORE_INDEX if i == branch.action_id else lab for i, lab in zip(ids, labels, strict=True)]
        pos, _ = sequence_positions(ids, self.cfg.special.image_pad, [g.tolist() for g in grids], self.merge,
                                    positions=self.positions)
        if self.max_length and len(ids) > self.max_length:
            raise ValueError(f"item {ex.index}: {len(ids)} tokens exceed max_length {self.max_length}")
        return Encoded(ids, labels, pos, torch.cat(pix) if pix else None,
                       torch.stack(grids) if grids else None, extra)

    def _extra_block(self, action: str, key: str, ex: Example, counters: dict, extra: dict) -> str:
        branch = self.cfg.branches.get(action)
        if branch is None:
            raise ValueError(f"item {ex.index}: a {key} placeholder but the model has no {action} branch")
        img = ex.images[key][counters[key]]
        counters[key] += 1
        pad = self.tok.convert_ids_to_tokens(branch.pad_id)
        item = self.model.branch_spec(action).preprocess(img, branch, self.model)
        extra.setdefault(action, []).append(item.tensors)
        return self.vs + pad * int(item.placeholders) + self.ve

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        enc = [self.encode(e) for e in examples]
        L = max(len(e.input_ids) for e in enc)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        B = len(enc)
        input_ids = torch.full((B, L), pad, dtype=torch.long)
        labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.long)
        positions = torch.zeros(3, B, L, dtype=torch.long)
        for i, e in enumerate(enc):
            n = len(e.input_ids)
            input_ids[i, :n] = torch.tensor(e.input_ids)
            labels[i, :n] = torch.tensor(e.labels)
            mask[i, :n] = 1
            positions[:, i, :n] = e.positions
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": mask, "position_ids": positions}
        pv = [e.pixel_values for e in enc if e.pixel_values is not None]
        if pv:
            batch["pixel_values"] = torch.cat(pv)
            batch["image_grid_thw"] = torch.cat([e.image_grid_thw for e in enc if e.image_grid_thw is not None])
        extra = {}
        for name in self.cfg.branches:
            items = [t for e in enc for t in e.extra.get(name, [])]
            if items:
                extra[name] = self.model.branch_spec(name).collate(items)
        if extra:
            batch["extra"] = extra
        return batch
