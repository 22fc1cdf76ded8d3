"""The model a training run starts from (a saved model or a tiny random one, with the config's
changes: new branches, another RoPE base, positions, prompts, views), and LoRA adapters folded
back into it before it is saved."""

from __future__ import annotations

from perceive.train.config import TrainConfig


def build_model(cfg: TrainConfig):
    model = _base_model(cfg)
    src = cfg.model
    if src.view_scale is not None:
        model.config.view_scale = src.view_scale
    if src.action_defaults is not None:
        model.config.action_defaults = src.action_defaults
    for nb in src.add_branches:
        add_branch(model, nb)
    if src.rope_theta is not None:
        set_rope_theta(model, src.rope_theta)
    if cfg.positions is not None:
        model.config.positions = cfg.positions
    if cfg.prompts is not None:
        model.config.prompts = cfg.prompts
    if cfg.views is not None:
        model.config.views = cfg.views
    if cfg.protocol is not None:
        model.config.protocol = cfg.protocol.model_dump()
    return model


def set_rope_theta(model, theta: float) -> None:
    """Give the language model a new RoPE base (its rotary table is rebuilt; weights are kept)."""
    tc = model.base.config.text_config
    tc.rope_parameters["rope_theta"] = float(theta)
    lm = model.language_model
    lm.rotary_emb = type(lm.rotary_emb)(config=tc).to(lm.rotary_emb.inv_freq.device)


def add_branch(model, nb) -> None:
    """Give ``model`` a new re-encode branch (random encoder and projector) for ``nb.action``,
    built by the plugin that registers that branch (:meth:`perceive.VPTModel.add_branch`)."""
    from perceive.errors import ConfigError

    if nb.action in model.config.branches:
        raise ConfigError(f"model.add_branches: the model already has a {nb.action} branch",
                          hint="remove it from add_branches, or start from a model without it")
    model.add_branch(nb.action, encoder=nb.encoder, encoder_config=nb.encoder_config, image_size=nb.image_size)


def _base_model(cfg: TrainConfig):
    from perceive.model import load_model
    from perceive.model.checkpoint import image_processor

    if cfg.model.path is not None:
        model = load_model(cfg.model.path, device="cpu", dtype="float32")
        if cfg.model.image_pixels:
            model.image_processor = image_processor(*cfg.model.image_pixels, merge=model.spatial_merge_size)
        if cfg.model.view_pixels:
            model.view_image_processor = image_processor(*cfg.model.view_pixels, merge=model.spatial_merge_size)
        return model
    from perceive.model.tiny import build_tokenizer, tiny_base, tiny_vpt_config
    from perceive.model.vpt import VPTModel
    from perceive.train.config import TinyModel

    t = cfg.model.tiny or TinyModel()
    tok = build_tokenizer()
    base = tiny_base(tok, hidden=t.hidden, layers=t.layers, seed=t.seed, heads=t.heads, kv_heads=t.kv_heads,
                     vision_depth=t.vision_depth, vision_dim=t.vision_dim, vision_heads=t.vision_heads,
                     rope_theta=t.rope_theta, merge=t.merge).train()
    vcfg = tiny_vpt_config(tok, branches=tuple(t.branches), hidden=t.hidden)
    model = VPTModel(base, vcfg)
    model.tokenizer = tok
    model.image_processor = image_processor(t.image_min_pixels, t.image_max_pixels, merge=t.merge)
    model.view_image_processor = image_processor(t.view_min_pixels, t.view_max_pixels, merge=t.merge)
    return model


def merge_lora(model) -> None:
    """Fold LoRA adapters into their base layers and put the plain layers back, so the saved base
    model is a standard transformers checkpoint."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, module.get_base_layer())
