"""The ${name} re-encode action and its branch (a perceive features plugin).

Span: ${start} ${action} ${end}. The action encodes the view the call targets with the
``${encoder}`` encoder; the model's ``${name}`` branch projects those features, conditioned on
the control state (the model's last hidden state at ${start}), and the loop places them at
${pad} tokens, one per patch of a ${size}x${size} px copy of the view (``(${size} // ${patch})**2``).

Three registrations, all needed:

* ``perceive_register_actions``: the features action ``${name}`` (parses the span, runs the encoder);
* ``perceive_register_encoders``: the encoder ``${encoder}`` (standalone, or the model's own branch);
* ``perceive_register_branches``: the model side (tokens, encoder module, projector,
  preprocessing, dataset placeholder ``${placeholder}``).

Replace ``PatchEncoder`` with your own encoder, keeping its input and output shapes in step
with ``preprocess`` and ``CONFIG``. Heavy imports (torch) stay inside functions and
``build_*`` methods: perceive imports this module on every start.
"""

from __future__ import annotations

from perceive import BranchInput, BranchSpec, BranchTokens, EncoderSpec, ModelBranchEncoder, ReencodeAction, hookimpl
from perceive.actions import EncoderOptions
from perceive.reencode import model_has_branch

TOKENS = BranchTokens(start="${start}", action="${action}", end="${end}", pad="${pad}")
#: the encoder's architecture; a model stores it in perceive.json (``encoder_config``)
CONFIG = {"image_size": ${size}, "patch_size": ${patch}, "dim": 32}


def encoder_module(image_size: int = ${size}, patch_size: int = ${patch}, dim: int = 32):
    """A small encoder: non-overlapping patches -> a linear embedding -> LayerNorm.
    ``(N, 3, S, S)`` in [0, 1] -> ``(N, (S // patch_size) ** 2, dim)``."""
    from torch import nn

    class PatchEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
            self.norm = nn.LayerNorm(dim)

        def forward(self, pixels):
            return self.norm(self.embed(pixels).flatten(2).transpose(1, 2))

    return PatchEncoder()


def to_pixels(image, size: int = ${size}):
    """An RGB PIL image -> ``(1, 3, size, size)`` float in [0, 1] (the training preprocessing)."""
    import numpy as np
    import torch
    from PIL import Image

    arr = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return torch.from_numpy(arr / 255.0).permute(2, 0, 1).unsqueeze(0).contiguous()


class ${Name}Branch(BranchSpec):
    """The model side of the ${name} action."""

    name = "${name}"
    tokens = TOKENS
    encoder = "${encoder}"
    description = "patch embeddings of the view, conditioned on the control state"
    # placeholder = "${placeholder}" and dataset_key = "${dataset_key}" are the defaults

    def tiny_config(self, hidden_size):
        return {"encoder": self.encoder, "encoder_config": dict(CONFIG), "feature_dim": CONFIG["dim"],
                "image_size": CONFIG["image_size"]}

    def feature_dim(self, encoder_config, hidden_size):
        return int(encoder_config["dim"])

    def placeholders(self, config):
        cfg = config.encoder_config or CONFIG
        return (cfg["image_size"] // cfg["patch_size"]) ** 2

    def build_encoder(self, config):
        return encoder_module(**(config.encoder_config or CONFIG))

    def build_projector(self, config, hidden_size, scale=1):
        from perceive.reencode.projectors import TokenProjector

        return TokenProjector(config.feature_dim, hidden_size, scale)

    def load_encoder_weights(self, encoder, weights):
        import torch

        from perceive.reencode.weights import strict_load

        strict_load(encoder, torch.load(weights, map_location="cpu", weights_only=True), str(weights))

    def preprocess(self, image, config, model):
        size = (config.encoder_config or CONFIG)["image_size"]
        return BranchInput({"pixel_values": to_pixels(image, size)}, self.placeholders(config))

    def encode(self, encoder, inputs, model):
        w = next(encoder.parameters())
        return encoder(inputs["pixel_values"].to(w.device, w.dtype)), None


class Standalone:
    """The encoder outside a model: ``encode(image) -> ((size // patch) ** 2, dim)`` float32."""

    def __init__(self, net, size: int):
        self.net = net.eval()
        self.size = size

    def encode(self, image):
        import torch

        with torch.no_grad():
            return self.net(to_pixels(image, self.size))[0].float()


def build(weights=None, options=None, model=None):
    """The model's own trained branch when there is one; else a standalone encoder from a local
    state-dict file (``encoders.${encoder}.weights`` in a run config)."""
    if weights is None and model_has_branch(model, "${name}"):
        return ModelBranchEncoder(model, "${name}")
    import torch

    from perceive.encoders import require_weights

    net = encoder_module(**CONFIG)
    net.load_state_dict(torch.load(require_weights("${encoder}", weights), map_location="cpu", weights_only=True))
    return Standalone(net, CONFIG["image_size"])


def build_tiny():
    """Random weights, for the conformance kit."""
    import torch

    torch.manual_seed(0)
    return Standalone(encoder_module(**CONFIG), CONFIG["image_size"])


class ${Name}(ReencodeAction):
    name = "${name}"
    tokens = TOKENS
    description = "Re-encode the view with a small patch encoder; features conditioned on the control token."
    encoders = ("${encoder}",)
    Options = EncoderOptions


@hookimpl
def perceive_register_actions():
    return [${Name}()]


@hookimpl
def perceive_register_encoders():
    # placeholders=None: one pad per feature row (a model's branch may have other sizes than CONFIG's)
    return [EncoderSpec(name="${encoder}", family="${name}", layout="tokens", feature_dim=CONFIG["dim"], build=build,
                        build_tiny=build_tiny, placeholders=None, description="patch embeddings")]


@hookimpl
def perceive_register_branches():
    return [${Name}Branch()]
