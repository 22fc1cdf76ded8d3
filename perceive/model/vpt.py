"""The VPT model: a stock transformers Qwen2-VL / Qwen2.5-VL (or Qwen3-VL) with perception branches beside it.

Composition, not a fork: ``base`` is an unmodified ``Qwen2VLForConditionalGeneration`` (or
Qwen2.5-VL) and ``branches`` holds one :class:`~perceive.model.branch_modules.Branch` per re-encode
action (its encoder and projector), built by the plugin that registers the branch
(:class:`perceive.BranchSpec`): nothing here knows one branch from another.
:meth:`VPTModel.forward` is the paper's training forward (vpt-paper.md §2.6-2.8); the online loop
(``perceive.loop``) uses the small building blocks (:meth:`embed`, :meth:`image_embeds`,
:meth:`project_features`, :meth:`lm`).

Over 400 lines, for now: the class holds four things that change together (the stock base and its
family differences, Qwen3-VL's deepstack included; the branches; the loop's building blocks; the
paper's training forward). The training forward is the part to move out next.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from perceive.model.branch_modules import Branch, branch_spec
from perceive.model.config import BranchConfig, VPTConfig

IGNORE_INDEX = -100


@dataclass
class VPTOutput:
    """``logits`` (B, L, V) float32; ``hidden`` the last pass's final-norm states (B, L, d);
    ``first_hidden`` the first pass's (two-pass only); ``controls[action]`` the control vectors
    (one row per action token, row-major); ``projected[action]`` the (unconditioned, conditioned)
    projector outputs."""

    logits: torch.Tensor
    hidden: torch.Tensor
    loss: torch.Tensor | None = None
    first_hidden: torch.Tensor | None = None
    controls: dict[str, torch.Tensor] = field(default_factory=dict)
    projected: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)


class VPTModel(nn.Module):
    """``base`` (a stock Qwen2-VL / Qwen2.5-VL / Qwen3-VL) and one branch per entry of ``config.branches``,
    each built by its registered :class:`~perceive.BranchSpec` (from ``registry``, default the
    process-wide one). A branch no installed plugin provides is a
    :class:`~perceive.errors.ModelLoadError` naming it."""

    def __init__(self, base: nn.Module, config: VPTConfig, branches: dict[str, Branch] | None = None,
                 registry=None):
        super().__init__()
        self.base = base
        self.config = config
        #: the spec of each branch, by name
        self.specs = {name: branch_spec(b, registry) for name, b in config.branches.items()}
        if branches is None:
            branches = {name: Branch.build(b, config.hidden_size, config.projector_scale, self.specs[name])
                        for name, b in config.branches.items()}
        self.branches = nn.ModuleDict(branches)
        self.tokenizer = None  # set by the loader when the checkpoint has one
        self.image_processor = None  # the first image
        self.view_image_processor = None  # crops and other views (None: the same as the first image)

    # -- parts of the stock model ---------------------------------------------------------

    @property
    def language_model(self) -> nn.Module:
        return self.base.model.language_model

    @property
    def visual(self) -> nn.Module:
        return self.base.model.visual

    @property
    def lm_head(self) -> nn.Module:
        return self.base.lm_head

    @property
    def spatial_merge_size(self) -> int:
        return int(self.base.config.vision_config.spatial_merge_size)

    @property
    def max_positions(self) -> int:
        """The language model's context: ``max_position_embeddings`` of its text config."""
        cfg = self.base.config
        return int(getattr(getattr(cfg, "text_config", None), "max_position_embeddings", None)
                   or cfg.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def view_pixels(self, image):
        """Pixel patches and ``(t, h, w)`` grid of a view (any image after the first), as the
        model was trained to see it: resized by ``config.view_scale`` (bicubic) when set, then the
        view processor. Training (the collator) and the loop both call this."""
        from perceive.images import rescale

        if self.config.view_scale is not None:
            image = rescale(image, self.config.view_scale)
        inputs = (self.view_image_processor or self.image_processor)(images=[image], return_tensors="pt")
        return inputs["pixel_values"], inputs["image_grid_thw"][0]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings, ``(..., d)``."""
        return self.base.get_input_embeddings()(input_ids)

    def image_embeds(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """The vision tower's merged tokens: ``(sum t*h*w/merge^2, d)`` (for Qwen3-VL without its
        deepstack features: :meth:`image_features` gives both)."""
        return self.image_features(pixel_values, grid_thw)[0]

    @property
    def deepstack_layers(self) -> int:
        """How many deepstack features the vision tower returns (Qwen3-VL: one per
        ``vision_config.deepstack_visual_indexes``, added to the hidden states at the image
        positions after each of the first language-model layers); 0 for Qwen2-VL / Qwen2.5-VL."""
        return len(getattr(self.base.config.vision_config, "deepstack_visual_indexes", None) or ())

    def image_features(self, pixel_values: torch.Tensor,
                       grid_thw: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The vision tower's merged tokens ``(n, d)`` and, for Qwen3-VL, its deepstack features
        (a list of ``(n, d)``, rows in the same order; None for Qwen2-VL / Qwen2.5-VL)."""
        out = self.visual(pixel_values.to(self.visual.dtype), grid_thw=grid_thw)
        embeds = getattr(out, "pooler_output", out).to(self.dtype)
        deep = getattr(out, "deepstack_features", None)
        if not self.deepstack_layers:
            return embeds, None
        if deep is None or len(deep) != self.deepstack_layers:
            raise RuntimeError(f"the vision tower returned {0 if deep is None else len(deep)} deepstack features "
                               f"for {self.deepstack_layers} deepstack layers")
        return embeds, [f.to(self.dtype) for f in deep]

    # -- re-encode branches ----------------------------------------------------------------

    def has_branch(self, name: str) -> bool:
        """Whether the model carries the re-encode branch ``name``."""
        return name in self.config.branches

    def branch_config(self, name: str) -> BranchConfig:
        """``perceive.json``'s entry of the branch ``name`` (tokens, encoder, sizes)."""
        return self.config.branches[self._known(name)]

    def branch_spec(self, name: str):
        """The registered :class:`~perceive.BranchSpec` that built the branch ``name``."""
        return self.specs[self._known(name)]

    def branch_encoder(self, name: str) -> nn.Module | None:
        """The branch's encoder module with its trained weights (None when it has none of its own)."""
        return self.branches[self._known(name)].encoder

    def _known(self, name: str) -> str:
        if name not in self.config.branches:
            raise KeyError(f"the model has no {name!r} branch (it has {sorted(self.config.branches) or 'none'})")
        return name

    def _inputs(self, images, grid_thw=None) -> dict:
        if isinstance(images, dict):
            return images
        return {"pixel_values": images, **({"grid_thw": grid_thw} if grid_thw is not None else {})}

    def encode_extra(self, action: str, images, grid_thw: torch.Tensor | None = None):
        """Raw features of preprocessed extra images, as the branch's spec encodes them:
        ``(features, sizes)``, ``sizes`` the rows of each image when the layout does not say.
        ``images``: the branch's input tensors (a dict, as :meth:`BranchSpec.preprocess` gives
        them), or one ``pixel_values`` tensor (with ``grid_thw`` for branches that take one)."""
        spec = self.branch_spec(action)
        feats, sizes = spec.encode(self.branches[action].encoder, self._inputs(images, grid_thw), self)
        return feats.to(self.dtype), sizes

    def project(self, action: str, features: torch.Tensor, control: torch.Tensor | None = None,
                sizes: list[int] | None = None) -> torch.Tensor:
        """Projector output ``(num_placeholders_total, d)`` of a batch of features as
        :meth:`encode_extra` gives them; ``control`` is ``(N, d*s)`` (one row per image) or None."""
        if control is not None:
            control = control.reshape(-1, self.config.projector_scale * self.config.hidden_size)
        return self.branch_spec(action).project(self.branches[action].projector, features, control, sizes)

    def project_features(self, action: str, features, control: torch.Tensor,
                         num_placeholders: int | None = None) -> torch.Tensor:
        """The rows ``(num_placeholders, d)`` that one image's features become at the branch's pad
        tokens, conditioned on ``control`` (the ``(d * s,)`` control state; ``(1, d * s)`` too).

        ``features``: one image's raw features, as an encoder returns them (a
        :class:`~perceive.Features`' ``tensor``), or the :class:`~perceive.Features` itself; they
        are moved to the model's device and dtype. ``num_placeholders`` (taken from a
        ``Features`` when not given): the rows expected; another count is an
        :class:`~perceive.errors.ObservationError`."""
        from perceive.errors import ObservationError
        from perceive.observations import Features

        encoder = None
        if isinstance(features, Features):
            encoder = features.encoder
            if num_placeholders is None:
                num_placeholders = features.num_placeholders
            features = features.tensor
        spec = self.branch_spec(action)
        f, sizes = spec.one_image(torch.as_tensor(features).to(self.device, self.dtype))
        rows = self.project(action, f, control.reshape(1, -1).to(self.device, self.dtype), sizes)
        if num_placeholders is not None and rows.shape[0] != num_placeholders:
            who = f"encoder {encoder!r}" if encoder else "the features"
            raise ObservationError(f"{who} gave {rows.shape[0]} projected rows for {num_placeholders} placeholders",
                                   hint=f"the encoder's output shape does not fit the model's {action} projector")
        return rows

    @torch.no_grad()
    def branch_features(self, action: str, image) -> torch.Tensor:
        """One image's raw features through the model's own branch: the branch's preprocessing
        (as in training), then its encoder. Shaped as an encoder returns them (what
        :meth:`project_features` takes). ``image``: a PIL image, or anything
        :func:`perceive.images.load_image` reads. :class:`perceive.reencode.ModelBranchEncoder` wraps it."""
        from perceive.images import as_rgb, load_image

        spec, cfg = self.branch_spec(action), self.branch_config(action)
        item = spec.preprocess(as_rgb(load_image(image)), cfg, self)
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in item.tensors.items()}
        feats, sizes = self.encode_extra(action, inputs)
        return spec.first_image(feats, sizes)

    def add_branch(self, name: str, *, encoder: str | None = None, encoder_config: dict | None = None,
                   image_size: int | None = None, registry=None, spec=None) -> BranchConfig:
        """Give the model a new re-encode branch ``name`` (random encoder and projector, the
        registered spec's small sizes unless ``encoder_config``/``encoder`` say otherwise). Its
        tokens are added to the tokenizer when missing (and the embeddings grown to fit).
        ``spec``: a :class:`~perceive.BranchSpec` to use instead of the registered one (a branch
        under development; a saved model loads with the registered one)."""
        from perceive.errors import ConfigError
        from perceive.plugins import get_registry

        registry = registry or get_registry()
        if name in self.config.branches:
            raise ConfigError(f"the model already has a {name} branch")
        if spec is not None:
            dist = registry.branches[name].dist if name in registry.branches else None
        else:
            spec, dist = registry.branch(name), registry.branches[name].dist  # UnknownActionError: did you mean
        fields = dict(spec.tiny_config(self.config.hidden_size))
        if encoder is not None:
            fields["encoder"] = encoder
            official = spec.encoder_config_for(encoder)
            if official is not None and encoder_config is None:
                encoder_config = official
        if encoder_config is not None:
            fields["encoder_config"] = dict(encoder_config)
            fields["feature_dim"] = spec.feature_dim(encoder_config, self.config.hidden_size)
        if image_size is not None:
            fields["image_size"] = image_size
        ids = self._ensure_tokens(spec.tokens)
        cfg = BranchConfig(action=name, **fields, **ids, plugin=dist)
        module = Branch.build(cfg, self.config.hidden_size, self.config.projector_scale, spec)
        module.to(self.device)
        self.config.branches[name] = cfg
        self.specs[name] = spec
        self.branches[name] = module
        return cfg

    def _ensure_tokens(self, tokens) -> dict[str, int]:
        """Ids of a branch's tokens in the tokenizer, adding those it lacks (the pad as a special
        token) and growing the embeddings when the vocabulary no longer fits."""
        from perceive.errors import ConfigError

        tok = self.tokenizer
        if tok is None:
            raise ConfigError("the model has no tokenizer to add the branch's tokens to")

        def known(t):
            i = tok.convert_tokens_to_ids(t)
            return i is not None and i != tok.unk_token_id

        if not known(tokens.pad):
            tok.add_special_tokens({"extra_special_tokens": [tokens.pad]}, replace_extra_special_tokens=False)
        missing = [t for t in tokens.span if not known(t)]
        if missing:
            tok.add_tokens(missing)
        emb = self.base.get_input_embeddings()
        if len(tok) > emb.weight.shape[0]:
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                self.base.resize_token_embeddings(len(tok), pad_to_multiple_of=64)
            finally:
                hf_logging.set_verbosity(verbosity)
        ids = dict(zip(("start_id", "action_id", "end_id", "pad_id"), tok.convert_tokens_to_ids(list(tokens.all)),
                       strict=True))
        return ids

    def paper_inputs(self, **inputs) -> dict[str, dict]:
        """The reference forward's extra-image keywords (each branch's ``PaperLayout.inputs``) ->
        :meth:`forward`'s ``extra`` dict. A keyword no branch of the model takes is a ``TypeError``."""
        extra: dict[str, dict] = {}
        for key, value in inputs.items():
            owner = next((n for n, s in self.specs.items() if s.paper is not None and key in s.paper.inputs), None)
            if owner is None:
                from perceive.plugins import get_registry

                other = next((n for n, r in get_registry().branches.items()
                              if r.obj.paper is not None and key in r.obj.paper.inputs), None)
                if other is None:
                    raise TypeError(f"VPTModel.forward() got an unexpected keyword argument {key!r}")
                if value is not None:
                    raise ValueError(f"{key} given but the model has no {other} branch")
                continue
            if value is not None:
                extra.setdefault(owner, {})[self.specs[owner].paper.inputs[key]] = value
        return extra

    def load_branch_encoder(self, action: str, weights: str) -> None:
        """Load encoder weights into a branch from local files, as the branch's plugin reads them."""
        encoder = self.branch_encoder(action)
        if encoder is None:
            raise ValueError(f"the {action} branch has no separate encoder weights")
        self.branch_spec(action).load_encoder_weights(encoder, str(weights))

    def lm(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor | None = None,
           attention_mask: torch.Tensor | None = None, past_key_values=None, use_cache: bool = False,
           visual_pos_masks: torch.Tensor | None = None, deepstack_visual_embeds: list[torch.Tensor] | None = None):
        """Run the language model; returns its output (``last_hidden_state`` after the final norm).

        Qwen3-VL: ``visual_pos_masks`` (B, T) bool marks the image tokens of ``inputs_embeds`` and
        ``deepstack_visual_embeds`` holds one ``(mask.sum(), d)`` tensor per deepstack layer, rows
        in the mask's row-major order; Qwen3-VL's text model adds them to the hidden states after
        its first layers. None (or no image token) for a step without images."""
        # transformers' keyword is `cache` (`past_key_values` warns, and goes in 5.40)
        kw = {}
        if deepstack_visual_embeds is not None:
            if not self.deepstack_layers:
                raise ValueError("deepstack features given to a model without deepstack layers")
            if visual_pos_masks is None:
                raise ValueError("deepstack features given without visual_pos_masks")
            n = int(visual_pos_masks.sum())
            if len(deepstack_visual_embeds) != self.deepstack_layers or any(
                    f.shape[0] != n for f in deepstack_visual_embeds):
                raise ValueError(f"deepstack features {[tuple(f.shape) for f in deepstack_visual_embeds]} for "
                                 f"{self.deepstack_layers} layers and {n} image tokens")
            if n:
                kw = {"visual_pos_masks": visual_pos_masks.to(inputs_embeds.device).bool(),
                      "deepstack_visual_embeds": deepstack_visual_embeds}
        return self.language_model(inputs_embeds=inputs_embeds, position_ids=position_ids,
                                   attention_mask=attention_mask, cache=past_key_values, use_cache=use_cache, **kw)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def _project_feats(self, action: str, feats, control: torch.Tensor | None) -> torch.Tensor:
        """Projected rows of one branch's features: ``feats`` is ``(features, sizes)`` as
        :meth:`encode_extra` batches them, or a list of one such pair per image (``forward``'s
        ``features``), whose images take the rows of ``control`` ``(N, d*s)`` in order."""
        if not isinstance(feats, list):
            return self.project(action, feats[0], control, feats[1])
        if control is not None and control.shape[0] != len(feats):
            raise ValueError(f"{len(feats)} {action} feature tensors for {control.shape[0]} action tokens")
        return torch.cat([self.project(action, f, None if control is None else control[k:k + 1], sizes)
                          for k, (f, sizes) in enumerate(feats)])

    # -- the paper's training forward -----------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, image_grid_thw: torch.Tensor | None = None,
                extra: dict[str, dict[str, torch.Tensor]] | None = None,
                num_inner_forward_run: int | None = None, para_mask_id: int | None = None,
                para_mask_ratio: float | None = None, generator: torch.Generator | None = None,
                reference_no_grad: bool = False, features: dict[str, list[torch.Tensor]] | None = None,
                fed: torch.Tensor | None = None, shown: dict[str, torch.Tensor] | None = None,
                **paper_inputs: torch.Tensor) -> VPTOutput:
        """vpt-paper.md §2.6. ``input_ids`` (B, L); ``position_ids`` (3, B, L) M-RoPE or None
        (then 0..L-1 on every axis, as the reference's training does). ``extra``: each branch's
        preprocessed extra images, ``{branch: inputs}`` with ``inputs`` as its spec collates them
        (the collator's ``batch["extra"]``). The reference's own keywords for them
        (``paper_inputs``) are read through each branch's
        :class:`~perceive.reencode.PaperLayout` (:meth:`paper_inputs`).

        Gradients reach the token embeddings and the encoders whenever their parameters require
        them. ``reference_no_grad`` computes those under ``no_grad`` as the reference does (§2.6
        step 0): then they never train, whatever is frozen. Outputs are the same either way.

        ``features``: instead of ``extra``, each branch's raw features already encoded, one tensor
        per image in placeholder order (``Features.tensor``, as the loop's observation held them):
        an RL trajectory's teacher-forced forward, which projects them again (with gradients to
        the projector and the control state) but does not run the encoder. ``fed`` ``(B, L)`` bool:
        the tokens the loop placed (prompt, forced and observation tokens); only there is an
        image pad, a branch pad or an action token what it stands for. A sampled policy can write
        those ids itself, and the loop feeds such a token as plain text. None: everywhere.
        ``shown``: per branch, a ``(n,)`` bool over its action tokens in row-major order, True where
        the span's features were shown (``features`` holds those only); a span that went unanswered
        (past the hop budget, malformed) still takes its control state. None: every span."""
        cfg = self.config
        run = num_inner_forward_run or cfg.num_inner_forward_run

        def at(token_id: int) -> torch.Tensor:  # where ``token_id`` stands for what the loop placed
            found = input_ids == token_id
            return found if fed is None else found & fed.to(found.device)

        extras = {**self.paper_inputs(**paper_inputs), **(extra or {})}
        # The reference's quirk: a model trained from scratch under it keeps a random vision tower.
        with torch.no_grad() if reference_no_grad else contextlib.nullcontext():
            embeds = self.embed(input_ids)
            deep: dict = {}  # Qwen3-VL: the deepstack features go to every language-model pass
            if pixel_values is not None:
                img, ds = self.image_features(pixel_values, image_grid_thw)
                embeds = _scatter(embeds, at(cfg.special.image_pad), img)
                if ds is not None:
                    deep = {"visual_pos_masks": at(cfg.special.image_pad), "deepstack_visual_embeds": ds}
            feats = {}
            for action, inputs in extras.items():
                if inputs is None:
                    continue
                if action not in self.branches:
                    raise ValueError(f"extra images given for the {action!r} branch but the model has no such branch")
                feats[action] = self.encode_extra(action, inputs)
        for action, raws in (features or {}).items():
            spec = self.branch_spec(action)  # a KeyError names the model's branches
            feats[action] = [spec.one_image(torch.as_tensor(t).to(self.device, self.dtype)) for t in raws]
        out = VPTOutput(logits=None, hidden=None)  # type: ignore[arg-type]
        first = embeds
        for action, f in feats.items():
            p0 = self._project_feats(action, f, None)
            out.projected[action] = (p0, None)
            first = _scatter(first, at(cfg.branches[action].pad_id), p0)
        has_action = any(bool(at(b.action_id).any()) for b in cfg.branches.values())
        if run >= 2 and not has_action and not feats:
            run = 1  # nothing to condition: the second pass would repeat the first exactly (§6.2 #7)
        hidden = self.lm(first, position_ids, attention_mask, **deep).last_hidden_state
        if run > 1:
            out.first_hidden = hidden
        # each later pass conditions on the one before: two passes are the paper's; k re-encode
        # spans in one sequence need k + 1 for every control state to see the conditioned
        # features of the spans before it, as the loop's did (an RL trajectory's forward)
        for _ in range(run - 1):
            second = self._conditioned(hidden, embeds, input_ids, feats, out, at, para_mask_id, para_mask_ratio,
                                       generator, shown)
            hidden = self.lm(second, position_ids, attention_mask, **deep).last_hidden_state
        out.hidden = hidden
        out.logits = self.logits(hidden)
        if labels is not None:
            out.loss = causal_lm_loss(out.logits, labels)
        return out


    def _conditioned(self, h1: torch.Tensor, embeds: torch.Tensor, input_ids: torch.Tensor, feats: dict,
                     out: VPTOutput, at, para_mask_id, para_mask_ratio, generator, shown=None) -> torch.Tensor:
        """The embeddings of a conditioned pass: each action token's control state (the final-norm
        state of the token before it in ``h1``, the previous pass) at the action token, and the
        branch's features projected on it at its pad tokens (§2.6)."""
        cfg = self.config
        second = embeds
        action_rows = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        action_masks = {}
        for name, b in cfg.branches.items():
            is_action = at(b.action_id)
            if not is_action.any():
                if name in feats:
                    raise ValueError(f"{name} features given but no {name} action token in the batch")
                continue
            before = torch.zeros_like(is_action)
            before[:, :-1] = is_action[:, 1:]
            control = h1[before]
            out.controls[name] = control
            action_masks[name] = (is_action, control)
            action_rows |= is_action.any(-1)
            if name in feats:
                rows = control if shown is None or name not in shown else control[shown[name].to(control.device)]
                p2 = self._project_feats(name, feats[name], rows)
                out.projected[name] = (out.projected[name][0], p2)
                second = _scatter(second, at(b.pad_id), p2)
        mask_id = cfg.para_mask_id if para_mask_id is None else para_mask_id
        ratio = cfg.para_mask_ratio if para_mask_ratio is None else para_mask_ratio
        if mask_id and feats and torch.rand(1, generator=generator).item() < ratio:
            second = paragraph_mask(second, input_ids, action_rows, cfg.special.im_start,
                                    cfg.special.im_end, [1] if mask_id == 1 else [1, 3])
        for is_action, control in action_masks.values():
            second = _scatter(second, is_action, control)
        return second


def _scatter(embeds: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Place ``values`` (n, d) at the ``mask`` positions (row-major), out of place."""
    n = int(mask.sum())
    if values.shape[0] != n:
        raise ValueError(f"{values.shape[0]} feature rows for {n} placeholder tokens")
    return embeds.masked_scatter(mask.unsqueeze(-1), values.to(embeds.dtype))


def paragraph_mask(embeds: torch.Tensor, input_ids: torch.Tensor, rows: torch.Tensor, start_id: int,
                   end_id: int, pairs: list[int]) -> torch.Tensor:
    """Zero the embeddings strictly between the k-th ``start_id`` and k-th ``end_id`` (k in
    ``pairs``, 0-based) of every selected row (vpt-paper.md §2.7). The attention mask is kept."""
    keep = torch.ones(embeds.shape[:2], dtype=embeds.dtype, device=embeds.device)
    for r in rows.nonzero().flatten().tolist():
        starts = (input_ids[r] == start_id).nonzero().flatten().tolist()
        ends = (input_ids[r] == end_id).nonzero().flatten().tolist()
        for k in pairs:
            if k < len(starts) and k < len(ends):
                keep[r, starts[k] + 1:ends[k]] = 0
    return embeds * keep.unsqueeze(-1)


def mask_action_labels(labels: torch.Tensor, input_ids: torch.Tensor, config: VPTConfig) -> torch.Tensor:
    """vpt-paper.md §2.8: the middle action token of every re-encode family is never a target
    (the start and end tokens stay supervised). Returns a new tensor."""
    labels = labels.clone()
    for b in config.branches.values():
        labels[input_ids == b.action_id] = IGNORE_INDEX
    return labels


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labels != -100."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX)
