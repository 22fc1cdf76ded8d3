"""A third-party features plugin, as a researcher would write it outside perceive: the image's
gradients (Sobel) pooled into a 4x4 grid of 16 tokens, a learned linear map per token, and the
token projector. It registers a features action ``sobel``, its encoder ``sobel_grid`` and its
re-encode branch ``sobel``, and uses nothing but perceive's public API.

tests/test_third_party_branch.py installs it as the distribution ``perceive-sobel`` (module
``perceive_sobel``) and takes it from a tiny model to ``perceive eval``.
"""

from __future__ import annotations

from perceive import BranchInput, BranchSpec, BranchTokens, EncoderSpec, ReencodeAction, hookimpl
from perceive.actions import EncoderOptions
from perceive.reencode import ModelBranchEncoder, model_has_branch

TOKENS = BranchTokens.named("sobel")  # <|sobel_action_start|> <|sobel_action|> <|sobel_action_end|> <|sobel_image_pad|>
CONFIG = {"grid": 4, "dim": 16}  # 4x4 = 16 tokens of 16 features
SIZE = 64  # input side, pixels


def sobel_module(grid: int = 4, dim: int = 16):
    """The encoder: grey -> Sobel gx, gy and magnitude -> mean over a grid x grid of cells ->
    a learned linear map and GELU per cell: ``(N, 3, S, S)`` in [0, 1] -> ``(N, grid*grid, dim)``."""
    import torch
    from torch import nn

    class SobelGrid(nn.Module):
        def __init__(self):
            super().__init__()
            kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
            self.register_buffer("kernels", torch.stack([kx, kx.T]).unsqueeze(1), persistent=False)
            self.pool = nn.AdaptiveAvgPool2d(grid)
            self.proj = nn.Linear(3, dim)

        def forward(self, pixels):
            grey = pixels.mean(1, keepdim=True)
            g = nn.functional.conv2d(grey, self.kernels.to(grey.dtype), padding=1)  # (N, 2, S, S)
            mag = torch.sqrt((g * g).sum(1, keepdim=True) + 1e-6)
            cells = self.pool(torch.cat([g, mag], 1))  # (N, 3, grid, grid)
            return nn.functional.gelu(self.proj(cells.flatten(2).transpose(1, 2)))

    return SobelGrid()


def to_pixels(image, size: int = SIZE):
    """An RGB image -> ``(1, 3, size, size)`` float in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    arr = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return torch.from_numpy(arr / 255.0).permute(2, 0, 1).unsqueeze(0).contiguous()


class SobelBranch(BranchSpec):
    name = "sobel"
    tokens = TOKENS
    encoder = "sobel_grid"
    description = "image gradients pooled into a 4x4 grid"

    def tiny_config(self, hidden_size):
        return {"encoder": "sobel_grid", "encoder_config": dict(CONFIG), "feature_dim": CONFIG["dim"],
                "image_size": SIZE}

    def feature_dim(self, encoder_config, hidden_size):
        return int(encoder_config["dim"])

    def placeholders(self, config):
        return int(config.encoder_config["grid"]) ** 2

    def build_encoder(self, config):
        return sobel_module(**config.encoder_config)

    def build_projector(self, config, hidden_size, scale=1):
        from perceive.reencode.projectors import TokenProjector

        return TokenProjector(config.feature_dim, hidden_size, scale)

    def preprocess(self, image, config, model):
        return BranchInput({"pixel_values": to_pixels(image, config.image_size or SIZE)}, self.placeholders(config))

    def encode(self, encoder, inputs, model):
        w = next(encoder.parameters())
        return encoder(inputs["pixel_values"].to(w.device, w.dtype)), None


class Standalone:
    """The encoder outside a model (random or saved weights): ``encode(image) -> (16, 16)``."""

    def __init__(self, net):
        self.net = net.eval()

    def encode(self, image):
        import torch

        with torch.no_grad():
            return self.net(to_pixels(image))[0]


def build(weights=None, options=None, model=None):
    if weights is None and model_has_branch(model, "sobel"):
        return ModelBranchEncoder(model, "sobel")  # the model's own trained branch
    import torch

    net = sobel_module(**CONFIG)
    if weights is not None:
        net.load_state_dict(torch.load(weights, weights_only=True))
    return Standalone(net)


def build_tiny():
    import torch

    torch.manual_seed(0)
    return Standalone(sobel_module(**CONFIG))


class SobelReencode(ReencodeAction):
    name = "sobel"
    tokens = TOKENS
    description = "Re-encode the view as image gradients; features conditioned on the control token."
    encoders = ("sobel_grid",)
    Options = EncoderOptions


@hookimpl
def perceive_register_actions():
    return [SobelReencode()]


@hookimpl
def perceive_register_encoders():
    # placeholders=None: one pad per row of the (T, C) token features (a model's branch may have another grid)
    return [EncoderSpec(name="sobel_grid", family="sobel", layout="tokens", feature_dim=CONFIG["dim"], build=build,
                        build_tiny=build_tiny, placeholders=None, description="Sobel gradients pooled into a grid")]


@hookimpl
def perceive_register_branches():
    return [SobelBranch()]
